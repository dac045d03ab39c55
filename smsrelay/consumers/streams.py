"""Every way an entry leaves the request stream, each one atomic Lua step (rules 2-4, 6).

An entry is settled only while it is still pending: the scripts XACK first and do nothing more
when XACK finds nothing, so a message settled by one worker is never settled again by another.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from smsrelay import clock
from smsrelay.consumers.batching import ScriptBatcher
from smsrelay.keys import WORKER_GROUP, ShardKeys, shard_keys
from smsrelay.lua import Scripts
from smsrelay.redis_conn import text
from smsrelay.schemas.dead_letter import merge_dead_letter_fields
from smsrelay.settings import Settings

RawFields = Mapping[bytes, bytes] | Mapping[str, str]


@dataclass(frozen=True)
class Begin:
    """What begin.lua decided for one delivery."""

    verdict: str  # sent | busy | limited | exhausted | go
    attempt: int = 0
    wait_ms: int = 0
    sid: str = ""
    last_error: str = ""
    first_attempt_at: str = ""
    last_attempt_at: str = ""


class StreamOps:
    def __init__(self, client: aioredis.Redis, settings: Settings) -> None:
        self.redis = client
        self.settings = settings
        self.scripts = Scripts(client)
        self.batcher = ScriptBatcher(client)
        self.group = WORKER_GROUP
        # Set when this process delays a message, so the mover looks at once instead of
        # sleeping through a short backoff.
        self.delay_scheduled = asyncio.Event()
        self._state_ttl_s = str(max(int(settings.rate_limit_window_seconds),
                                    int(settings.backoff_max_seconds) * settings.max_attempts,
                                    86_400) * 2)

    def keys(self, shard: int) -> ShardKeys:
        return shard_keys(self.settings.namespace, shard)

    async def ensure_group(self, shard: int) -> None:
        try:
            await self.redis.xgroup_create(self.keys(shard).requests, self.group, id="0",
                                           mkstream=True)
        except aioredis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def begin(self, shard: int, entry_id: str, message_id: str, phone: str, *,
                    check_rate: bool = True) -> Begin:
        keys, args = self._begin_call(shard, entry_id, message_id, phone, check_rate)
        return _decode_begin(await self.batcher.call(self.scripts.begin, keys, args))

    async def begin_many(self, shard: int,
                         deliveries: Sequence[tuple[str, str, str]]) -> list[Begin | None]:
        """begin.lua for each (entry id, message id, phone) of a read batch, in one round
        trip, in order. None where no decision is known (the caller then asks on its own)."""
        calls = [self._begin_call(shard, *delivery, True) for delivery in deliveries]
        replies = await self.batcher.run_together(
            [(self.scripts.begin, keys, args) for keys, args in calls])
        return [None if isinstance(reply, Exception) else _decode_begin(reply)
                for reply in replies]

    def _begin_call(self, shard: int, entry_id: str, message_id: str, phone: str,
                    check_rate: bool) -> tuple[list[str], list[Any]]:
        keys = self.keys(shard)
        s = self.settings
        return ([keys.sent(message_id), keys.state(message_id), keys.rate_limit(phone)],
                [message_id, entry_id, s.rate_limit_max if check_rate else 0,
                 int(s.rate_limit_window_seconds * 1000), s.max_attempts, clock.now_iso(),
                 self._state_ttl_s])

    async def mark_sent(self, shard: int, entry_id: str, message_id: str, sid: str,
                        replay_of: str | None = None) -> None:
        keys = self.keys(shard)
        script_keys = [keys.requests, keys.sent(message_id), keys.state(message_id)]
        args: list[Any] = [self.group, entry_id, sid, self.settings.sent_marker_ttl_seconds]
        if replay_of is not None:
            # A replayed dead letter: its failed_sms record learns the outcome through a
            # stream the mirror reads, never by a direct write an outage could lose.
            script_keys.append(keys.outcomes)
            args += ["id", message_id, "status", "resolved", "message_sid", sid,
                     "replay_of", replay_of, "resolved_at", clock.now_iso()]
        await self.batcher.call(self.scripts.sent, script_keys, args)

    async def dead_letter(self, shard: int, entry_id: str, raw: RawFields, *, message_id: str,
                          phone: str | None, reason: str, error: str, attempts: int,
                          first_attempt_at: str = "", last_attempt_at: str = "",
                          release_slot: bool = False) -> bool:
        keys = self.keys(shard)
        extra = {"reason": reason, "error": error, "attempts": str(attempts),
                 "first_attempt_at": first_attempt_at, "last_attempt_at": last_attempt_at,
                 "dead_lettered_at": clock.now_iso(), "source_entry_id": entry_id}
        fields = merge_dead_letter_fields(dict(raw), extra)
        script_keys = [keys.requests, keys.dead, keys.dead_counts, keys.state(message_id)]
        if release_slot and phone:
            script_keys.append(keys.rate_limit(phone))
        args: list[Any] = [self.group, entry_id, message_id, reason]
        for name, value in fields.items():
            args += [name, value]
        dead_id = await self.scripts.deadletter(keys=script_keys, args=args)
        return dead_id is not None

    async def delay(self, shard: int, entry_id: str, message_id: str, fields: Mapping[str, str],
                    delay_s: float, last_error: str = "") -> bool:
        keys = self.keys(shard)
        payload: list[str] = []
        for name, value in fields.items():
            payload += [name, value]
        done = await self.scripts.delay(
            keys=[keys.requests, keys.delayed, keys.delayed_payload, keys.state(message_id)],
            args=[self.group, entry_id, message_id, max(0, round(delay_s * 1000)),
                  json.dumps(payload), last_error])
        self.delay_scheduled.set()
        return bool(done)

    async def drop(self, shard: int, entry_id: str) -> None:
        """Acknowledge and delete an entry whose message is settled elsewhere."""
        requests = self.keys(shard).requests
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xack(requests, self.group, entry_id)
            pipe.xdel(requests, entry_id)
            await pipe.execute()

    async def move_due(self, shard: int, limit: int = 500) -> tuple[int, int]:
        keys = self.keys(shard)
        moved, next_ms = await self.scripts.move_due(
            keys=[keys.delayed, keys.delayed_payload, keys.requests], args=[limit])
        return int(moved), int(next_ms)


def _decode_begin(reply: Any) -> Begin:
    verdict = text(reply[0])
    if verdict == "go":
        return Begin("go", attempt=int(reply[1]), first_attempt_at=text(reply[2]))
    if verdict == "sent":
        return Begin("sent", sid=text(reply[1]))
    if verdict == "busy":
        return Begin("busy")
    if verdict == "limited":
        return Begin("limited", wait_ms=int(reply[1]), attempt=int(reply[2]))
    return Begin("exhausted", attempt=int(reply[1]), last_error=text(reply[2]),
                 first_attempt_at=text(reply[3]), last_attempt_at=text(reply[4]))
