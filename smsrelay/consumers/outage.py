"""Say an outage once when it starts and once when it ends, not once per failed call."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis

from smsrelay import clock
from smsrelay.logging import get_logger

log = get_logger("smsrelay.outage")
T = TypeVar("T")
RETRY_MAX_DELAY_S = 2.0  # the longest wait of `until_done` between two tries

TRANSIENT_REDIS_ERRORS: tuple[type[BaseException], ...] = (
    redis.ConnectionError, redis.TimeoutError, redis.exceptions.BusyLoadingError,
    redis.exceptions.TryAgainError, redis.exceptions.ClusterDownError,
    redis.exceptions.ReadOnlyError, ConnectionError, TimeoutError, OSError,
)


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
            log.warning(f"{self.service}.unavailable", error=f"{type(exc).__name__}: {exc}")

    def recovered(self) -> None:
        if self._since is not None:
            log.info(f"{self.service}.recovered",
                     outage_seconds=round(clock.monotonic() - self._since, 3))
            self._since = None
            self.ended_at = clock.monotonic()


async def until_done(operation: Callable[[], Awaitable[T]], outage: OutageLog,
                     stop: asyncio.Event | None = None,
                     max_delay_s: float = RETRY_MAX_DELAY_S) -> T:
    """Run `operation` until it succeeds, backing off on transient Redis errors.

    Used for the writes that must not be given up on (the sent marker after the provider
    accepted). Raises the last error only when `stop` is set and the operation still fails.
    """
    delay = 0.05
    while True:
        try:
            result = await operation()
        except TRANSIENT_REDIS_ERRORS as exc:
            outage.failed(exc)
            if stop is not None and stop.is_set() and delay >= max_delay_s:
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_delay_s)
            continue
        outage.recovered()
        return result
