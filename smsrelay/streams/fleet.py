"""State the whole fleet of a namespace shares: the provider breaker and the send budget.

Both live in Redis on the server's clock (rule 16), under the namespace's own tag. A worker
looks at the breaker a few times a second (`view`, one small read), reports systemic failures
as they happen (rare when all is well) and a success only when it ends a run of failures or
was the probe: a healthy pipeline pays no round trip per message for it. The send budget is
taken for a whole read batch at once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

import redis.asyncio as aioredis

from smsrelay.settings import Settings
from smsrelay.streams.clients import text
from smsrelay.streams.keys import FleetKeys
from smsrelay.streams.scripts import Scripts

MAX_COOLDOWN_MS = 300_000


@dataclass(frozen=True)
class BreakerView:
    state: Literal["closed", "open"] = "closed"
    failures: int = 0  # consecutive systemic failures while closed
    until_probe_ms: int = 0  # while open: how long until one probe may go
    pause_ms: int = 0  # the provider asked the fleet to wait (a 429's Retry-After)
    opened_total: int = 0

    @property
    def open(self) -> bool:
        return self.state == "open"


@dataclass(frozen=True)
class FailureVerdict:
    """What the breaker made of a systemic failure."""

    state: Literal["closed", "opened", "open"]
    failures: int = 0
    run: tuple[str, ...] = ()  # when just opened: refs of the failures that opened it

    @property
    def outage(self) -> bool:
        """The failure is part of a provider outage: it costs the message no attempt."""
        return self.state != "closed"


def failure_ref(shard: int, message_id: str) -> str:
    return f"{shard}|{message_id}"


def parse_ref(ref: str) -> tuple[int, str] | None:
    shard, _, message_id = ref.partition("|")
    return (int(shard), message_id) if shard.isdigit() and message_id else None


class Fleet:
    def __init__(self, settings: Settings, client: aioredis.Redis) -> None:
        self.settings = settings
        self.keys = FleetKeys(settings.namespace)
        self.scripts = Scripts(client)
        self._breaker_keys = [self.keys.breaker, self.keys.breaker_run]
        self.cooldown_ms = int(settings.breaker_cooldown_seconds * 1000)

    @property
    def breaker_enabled(self) -> bool:
        return self.settings.breaker_threshold > 0

    async def view(self) -> BreakerView:
        return self.parse_view(await self.scripts.breaker(keys=self._breaker_keys, args=["view"]))

    def view_call(self) -> tuple[Any, list[str], list[Any]]:
        """The view as a script call, to ride in another pipeline (a read batch's begins)."""
        return self.scripts.breaker, self._breaker_keys, ["view"]

    @staticmethod
    def parse_view(reply: Any) -> BreakerView:
        state: Literal["closed", "open"] = "open" if text(reply[0]) == "open" else "closed"
        return BreakerView(state, int(reply[1]), int(reply[2]), int(reply[3]), int(reply[4]))

    async def try_probe(self, owner: str, lease_ms: int) -> bool:
        """Become the one sender allowed to try the provider while the breaker is open."""
        return bool(
            await self.scripts.breaker(keys=self._breaker_keys, args=["probe", owner, lease_ms])
        )

    async def give_back_probe(self, owner: str) -> None:
        """Nothing was sent with it (the stream was empty): let the next entry probe."""
        await self.scripts.breaker(keys=self._breaker_keys, args=["unprobe", owner])

    async def failure(
        self, owner: str, ref: str, error: str, retry_after_s: float | None
    ) -> FailureVerdict:
        reply = await self.scripts.breaker(
            keys=self._breaker_keys,
            args=[
                "failure",
                owner,
                self.settings.breaker_threshold,
                self.cooldown_ms,
                max(MAX_COOLDOWN_MS, self.cooldown_ms),
                ref,
                error[:500],
                round((retry_after_s or 0) * 1000),
            ],
        )
        state = text(reply[0])
        if state == "opened":
            return FailureVerdict("opened", run=tuple(text(r) for r in reply[1:]))
        if state == "open":
            return FailureVerdict("open")
        return FailureVerdict("closed", failures=int(reply[1]))

    async def success(self, owner: str) -> str:
        """'closed_now' when this success was the probe that closed the breaker."""
        return text(
            await self.scripts.breaker(
                keys=self._breaker_keys, args=["success", owner, self.cooldown_ms]
            )
        )

    async def take_sends(self, wanted: int) -> tuple[int, int]:
        """Up to `wanted` provider requests of SMSRELAY_SEND_RATE: (granted, ms to the next)."""
        granted, wait_ms = await self.scripts.budget(
            keys=[self.keys.send_budget],
            args=[
                json.dumps(1000.0 / self.settings.send_rate),
                self.settings.send_burst_tokens,
                wanted,
            ],
        )
        return int(granted), int(wait_ms)
