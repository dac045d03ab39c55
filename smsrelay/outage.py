"""Say an outage once when it starts and once when it ends, not once per failed call.

A process holds one `Outages` (the worker process: its worker, mirror and metrics share it;
the admin service has its own), so "logged once" is once per process, whatever number of
loops meet the same outage. Redis that cannot be reached and Redis that refuses writes are
two conditions: reads go on during the second, so they must not end it.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import redis

from smsrelay import clock
from smsrelay.logging import get_logger

log = get_logger("smsrelay.outage")
T = TypeVar("T")
RETRY_MAX_DELAY_S = 2.0  # the longest wait of `until_done` between two tries

# Redis cannot be reached, or is not serving yet: reads and writes both fail.
TRANSIENT_REDIS_ERRORS: tuple[type[BaseException], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.BusyLoadingError,
    redis.exceptions.TryAgainError,
    redis.exceptions.ClusterDownError,
    # A cluster client whose slot map lost a slot (its master died, no replica promoted yet).
    redis.exceptions.SlotNotCoveredError,
    ConnectionError,
    TimeoutError,
    OSError,
)

# Redis answers but refuses to write (rule 9 and FAULTS.md): maxmemory reached with
# `noeviction`, a replica after a failover, a failed RDB save with stop-writes-on-bgsave-error,
# a script running too long. Each passes when an operator or a failover fixes Redis.
_REFUSAL_PREFIXES = {
    "OOM": "OOM, maxmemory reached",
    "READONLY": "READONLY, this server is a replica (a failover in progress?)",
    "MISCONF": "MISCONF, Redis cannot persist to disk (stop-writes-on-bgsave-error)",
    "BUSY": "BUSY, a script or module command is running too long",
    "NOREPLICAS": "NOREPLICAS, not enough replicas to accept writes",
    "MASTERDOWN": "MASTERDOWN, the master link is down",
}
_REFUSAL_RE = re.compile(r"(?:^|[\s:])(" + "|".join(_REFUSAL_PREFIXES) + r")\b")


def write_refusal(exc: BaseException) -> str | None:
    """Why Redis refuses writes, when `exc` says it does; None for any other error."""
    # redis-py strips the prefix of the errors it maps to a class of its own.
    if isinstance(exc, redis.exceptions.OutOfMemoryError):
        return _REFUSAL_PREFIXES["OOM"]
    if isinstance(exc, redis.exceptions.ReadOnlyError):
        return _REFUSAL_PREFIXES["READONLY"]
    if isinstance(exc, redis.ResponseError):
        # At the start of a reply, or inside a script's error ("...: OOM command not allowed")
        found = _REFUSAL_RE.search(str(exc)[:300])
        if found:
            return _REFUSAL_PREFIXES[found.group(1)]
    return None


def is_outage(exc: BaseException) -> bool:
    """Redis is away or refuses writes: wait and try again, never give the entry up."""
    return isinstance(exc, TRANSIENT_REDIS_ERRORS) or write_refusal(exc) is not None


class OutageLog:
    def __init__(self, service: str) -> None:
        self.service = service
        self._since: float | None = None
        self.ended_at: float | None = None  # clock.monotonic() when the last outage ended

    @property
    def down(self) -> bool:
        return self._since is not None

    def failed(self, exc: BaseException) -> None:
        if self._since is None:
            self._since = clock.monotonic()
            log.warning(f"{self.service}.unavailable", error=describe(exc))

    def recovered(self) -> None:
        if self._since is not None:
            log.info(
                f"{self.service}.recovered",
                outage_seconds=round(clock.monotonic() - self._since, 3),
            )
            self._since = None
            self.ended_at = clock.monotonic()


class WriteRefusalLog(OutageLog):
    """Redis refuses writes: said loudly, once, with the cause and what to do."""

    def failed(self, exc: BaseException) -> None:
        if self._since is None:
            self._since = clock.monotonic()
            cause = write_refusal(exc) or describe(exc)
            log.error(
                "redis.writes_refused",
                cause=f"Redis refuses writes: {cause}",
                effect="no message is sent until Redis accepts writes again; "
                "messages already sent are recorded as soon as it does",
            )


@dataclass
class Outages:
    """The outage logs of one process, one per dependency and condition."""

    redis: OutageLog = field(default_factory=lambda: OutageLog("redis"))
    redis_writes: OutageLog = field(default_factory=lambda: WriteRefusalLog("redis.writes"))
    postgres: OutageLog = field(default_factory=lambda: OutageLog("postgres"))

    def redis_failed(self, exc: BaseException) -> None:
        """Note a Redis failure in the log it belongs to."""
        if write_refusal(exc) is not None:
            self.redis_writes.failed(exc)
        else:
            self.redis.failed(exc)

    @property
    def redis_down(self) -> bool:
        return self.redis.down or self.redis_writes.down


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def until_done(
    operation: Callable[[], Awaitable[T]],
    outages: Outages,
    stop: asyncio.Event | None = None,
    max_delay_s: float = RETRY_MAX_DELAY_S,
    wrote: Callable[[T], bool] | None = None,
) -> T:
    """Run a Redis step until it succeeds, backing off while Redis is away or refuses writes.

    Used for the steps that must not be given up on (the sent marker after the provider
    accepted). Raises the last error only when `stop` is set and the operation still fails.
    `wrote(result)` says whether the result proves that Redis took a write (a script that
    answered early wrote nothing): only such a success ends a refusal of writes.
    """
    delay = 0.05
    while True:
        try:
            result = await operation()
        except Exception as exc:
            if not is_outage(exc):
                raise
            outages.redis_failed(exc)
            if stop is not None and stop.is_set() and delay >= max_delay_s:
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_delay_s)
            continue
        outages.redis.recovered()
        if wrote is None or wrote(result):
            outages.redis_writes.recovered()
        return result
