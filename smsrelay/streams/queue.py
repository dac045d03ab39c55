"""The request queue: every operation on the request streams and a message's state, in one place.

A message is sent by whoever `begin` lets through: a worker for a stream entry, or a direct
sender (an admin's "retry now") holding a token. Both go through the same scripts and the
same per-message state, so two senders of one message exclude each other (rule 13). An entry
leaves its stream only in the script that records its outcome (rules 2-4, 6): the scripts
XACK first and do nothing more when XACK finds nothing, so a message settled by one worker is
never settled again by another.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import redis.asyncio as aioredis

from smsrelay import clock
from smsrelay.logging import get_logger
from smsrelay.settings import Settings
from smsrelay.streams import wire
from smsrelay.streams.batching import ScriptBatcher
from smsrelay.streams.clients import READ_BLOCK_MS, text, wait_replicas
from smsrelay.streams.group import ClaimPage, ConsumerGroup, Delivery, consumer_name
from smsrelay.streams.keys import WORKER_GROUP, FleetKeys, ShardKeys, all_shards, shard_keys
from smsrelay.streams.lanes import LaneReader
from smsrelay.streams.scripts import Scripts

log = get_logger("smsrelay.redis")
# A script call to pipeline: (registered script, keys, arguments).
ScriptCall = tuple[Any, list[str], list[Any]]
Verdict = Literal["sent", "expired", "busy", "limited", "exhausted", "go"]


@dataclass(frozen=True, slots=True)
class Begin:
    """What begin.lua decided for one sender of a message."""

    verdict: Verdict
    attempt: int = 0
    wait_ms: int = 0
    sid: str = ""
    owner: str = ""
    last_error: str = ""
    first_attempt_at: str = ""
    last_attempt_at: str = ""
    # An earlier attempt's outcome is unknown (a timeout, a sender that died mid-send) since
    # this time: ask the provider before sending again.
    ambiguous_since: str = ""


@dataclass(frozen=True, slots=True)
class Sender:
    """Who asks to send: a stream entry (`token` is its id), or a direct sender whose claim on
    the message lapses after `lease_ms` if it never settles (a crashed admin process)."""

    token: str
    lease_ms: int = 0

    @classmethod
    def of(cls, delivery: Delivery) -> Sender:
        return cls(delivery.entry_id)


@dataclass(frozen=True, slots=True)
class BeginCall:
    shard: int
    sender: Sender
    message_id: str
    phone: str
    check_rate: bool = True
    max_attempts: int | None = None  # None: SMSRELAY_MAX_ATTEMPTS; 0: no cap
    expires_at_ms: int = 0  # epoch ms after which it is never sent (0: never expires)
    label: str = "attempt"  # the trace's word for this sender's attempt
    published_ms: int = 0  # when the message was published (its trace's first event)
    resend_of: str = ""  # a SID the provider reported undelivered: send a new SMS anyway


# Outcome entries the mirror has not read yet, at most (about): a pipeline whose mirror never
# runs (no Postgres) must not grow Redis without bound. The sent markers stay the truth.
OUTCOME_CAP = 1_000_000


class Queue:
    def __init__(
        self,
        settings: Settings,
        client: aioredis.Redis,
        reader: aioredis.Redis | None = None,
        *,
        consumer: str | None = None,
    ) -> None:
        self.settings = settings
        self.redis = client
        self.scripts = Scripts(client)
        # SMSRELAY_REDIS_WAIT_REPLICAS: outcomes wait for the replicas (rule 19); 0 adds nothing.
        self._wait = settings.redis_wait_replicas
        self._wait_ms = max(1, int(settings.publish_timeout_seconds * 1000))
        self.batcher = ScriptBatcher(client, replicated=self.replicated if self._wait else None)
        self.shards = all_shards(settings.namespace, settings.shards)
        self.fleet = FleetKeys(settings.namespace)
        self.group = ConsumerGroup(
            client,
            reader or client,
            WORKER_GROUP,
            {stream: k.shard for k in self.shards for stream in k.lanes},
            consumer or consumer_name(),
        )
        self._lanes = LaneReader(self)
        # Set when this process delays a message, so the mover looks at once instead of
        # sleeping through a short backoff.
        self.delay_scheduled = asyncio.Event()
        self._trace_ttl_ms = settings.trace_ttl_seconds * 1000
        self._state_ttl_s = str(
            max(
                int(settings.rate_limit_window_seconds),
                int(settings.backoff_max_seconds) * settings.max_attempts,
                86_400,
            )
            * 2
        )

    @property
    def consumer(self) -> str:
        return self.group.consumer

    def keys(self, shard: int) -> ShardKeys:
        return shard_keys(self.settings.namespace, shard)

    # -- reading -------------------------------------------------------------------------
    async def read(self, count: int, block_ms: int | None = READ_BLOCK_MS) -> list[Delivery]:
        """New entries for `count` free send slots, high lane first (rule 17). With none
        waiting anywhere, block up to `block_ms` for the first to arrive."""
        deliveries = self.group.arrived() or await self._lanes.read(count)
        if deliveries or block_ms is None:
            return deliveries
        return await self.group.wait_for_entries(block_ms)

    async def claim(
        self, stream: str, min_idle_ms: int, count: int, cursor: str = "0-0"
    ) -> ClaimPage:
        """A page of `stream`'s entries idle longer than `min_idle_ms`, now this consumer's."""
        return await self.group.claim(stream, min_idle_ms, count, cursor)

    async def refresh(self, deliveries: Sequence[Delivery]) -> None:
        by_stream: dict[str, list[str]] = {}
        for delivery in deliveries:
            by_stream.setdefault(delivery.stream, []).append(delivery.entry_id)
        for stream, ids in by_stream.items():
            await self.group.refresh(stream, ids)

    # -- deciding ------------------------------------------------------------------------
    async def begin(self, call: BeginCall) -> Begin:
        keys, args = self._begin_call(call)
        return _decode_begin(await self.batcher.call(self.scripts.begin, keys, args))

    async def begin_many(
        self, calls: Sequence[BeginCall], first: ScriptCall | None = None
    ) -> tuple[Any, list[Begin | None]]:
        """begin.lua for each call in one round trip, in order. None where Redis gave no
        decision (the caller then asks on its own). `first` rides in the same round trip,
        before them (the fleet's breaker view); its reply (or error) comes back first."""
        batch = [(self.scripts.begin, *self._begin_call(call)) for call in calls]
        replies = await self.batcher.run_together(([first] if first else []) + batch)
        head = replies.pop(0) if first else None
        return head, [
            None if isinstance(reply, Exception) else _decode_begin(reply) for reply in replies
        ]

    def _begin_call(self, call: BeginCall) -> tuple[list[str], list[Any]]:
        keys = self.keys(call.shard)
        s = self.settings
        max_attempts = s.max_attempts if call.max_attempts is None else call.max_attempts
        return (
            [
                keys.sent(call.message_id),
                keys.state(call.message_id),
                keys.rate_limit(call.phone),
                keys.trace(call.message_id),
            ],
            [
                call.message_id,
                call.sender.token,
                s.rate_limit_max if call.check_rate else 0,
                int(s.rate_limit_window_seconds * 1000),
                max_attempts,
                clock.now_iso(),
                self._state_ttl_s,
                call.sender.lease_ms,
                call.expires_at_ms,
                self._trace_ttl_ms,
                call.label,
                call.published_ms,
                call.resend_of,
            ],
        )

    # -- settling ------------------------------------------------------------------------
    async def mark_sent(
        self,
        shard: int,
        delivery: Delivery | None,
        message_id: str,
        sid: str,
        outcome: Mapping[str, str],
        event: str = "sent",
    ) -> bool:
        """The provider accepted the message: write its sent marker, then settle the entry
        (none for a direct sender). `outcome` goes to the outcome stream for the mirror
        (sent_sms, and a failed_sms record to resolve)."""
        keys = self.keys(shard)
        script_keys = [
            delivery.stream if delivery else keys.requests,
            keys.sent(message_id),
            keys.state(message_id),
            keys.outcomes,
            keys.trace(message_id),
        ]
        args: list[Any] = [
            WORKER_GROUP,
            delivery.entry_id if delivery else "",
            sid,
            self.settings.sent_marker_ttl_seconds,
            self._trace_ttl_ms,
            event,
            OUTCOME_CAP,
            *wire.flatten(outcome),
        ]
        return bool(await self.batcher.call(self.scripts.sent, script_keys, args, replicated=True))

    async def dead_letter(
        self,
        delivery: Delivery,
        *,
        message_id: str,
        phone: str | None,
        reason: str,
        error: str,
        attempts: int,
        first_attempt_at: str = "",
        last_attempt_at: str = "",
        release_slot: bool = False,
    ) -> bool:
        keys = self.keys(delivery.shard)
        extra = {
            "reason": reason,
            "error": error,
            "attempts": str(attempts),
            "first_attempt_at": first_attempt_at,
            "last_attempt_at": last_attempt_at,
            "dead_lettered_at": clock.now_iso(),
            "source_entry_id": delivery.entry_id,
        }
        fields = wire.dead_letter_fields(wire.in_lane(delivery.fields, delivery.priority), extra)
        script_keys = [
            delivery.stream,
            keys.dead,
            keys.dead_counts,
            keys.state(message_id),
            keys.trace(message_id),
        ]
        if release_slot and phone:
            script_keys.append(keys.rate_limit(phone))
        args = [
            WORKER_GROUP,
            delivery.entry_id,
            message_id,
            reason,
            self._trace_ttl_ms,
            error,
            *wire.flatten(fields),
        ]
        dead_id = await self.scripts.deadletter(keys=script_keys, args=args)
        if self._wait and dead_id is not None:
            await self.replicated(script_keys)
        return dead_id is not None

    async def delay(
        self,
        delivery: Delivery,
        message_id: str,
        fields: Mapping[str, str],
        delay_s: float,
        last_error: str = "",
        *,
        refund: bool = False,
        ambiguous: bool = False,
        event: str = "retry_scheduled",
    ) -> bool:
        """Hold the entry for `delay_s`. `refund` gives its attempt back (the provider's
        outage cost it); `ambiguous` marks the attempt's outcome unknown."""
        keys = self.keys(delivery.shard)
        script_keys = [
            delivery.stream,
            keys.delayed,
            keys.delayed_payload,
            keys.state(message_id),
            keys.trace(message_id),
        ]
        done = await self.scripts.delay(
            keys=script_keys,
            args=[
                WORKER_GROUP,
                delivery.entry_id,
                message_id,
                max(0, round(delay_s * 1000)),
                wire.delay_payload(wire.in_lane(fields, delivery.priority)),
                last_error,
                "1" if refund else "0",
                "1" if ambiguous else "0",
                self._trace_ttl_ms,
                event,
            ],
        )
        if self._wait and done:
            await self.replicated(script_keys)
        self.delay_scheduled.set()
        return bool(done)

    async def refund(self, shard: int, message_id: str) -> int:
        """Give a message back one attempt (a provider outage cost it); -1 if it has no state."""
        return int(await self.scripts.refund(keys=[self.keys(shard).state(message_id)], args=[]))

    async def drop(self, delivery: Delivery) -> None:
        """Acknowledge and delete an entry whose message is settled elsewhere."""
        await self.group.ack([delivery], delete=True)

    async def release(
        self, shard: int, sender: Sender, message_id: str, phone: str | None, error: str = ""
    ) -> bool:
        """A direct sender's attempt failed: give the message (and its rate slot) back."""
        keys = self.keys(shard)
        script_keys = [keys.state(message_id), keys.trace(message_id)]
        script_keys += [keys.rate_limit(phone)] if phone else []
        return bool(
            await self.scripts.release(
                keys=script_keys, args=[sender.token, message_id, self._trace_ttl_ms, error]
            )
        )

    async def trace(self, shard: int, message_id: str) -> list[tuple[int, str, str]]:
        """The message's trace: (epoch ms, event, detail), oldest first ([] when gone)."""
        raw = await self.redis.lrange(self.keys(shard).trace(message_id), 0, -1)
        events: list[tuple[int, str, str]] = []
        for item in raw:
            at, _, rest = text(item).partition("|")
            event, _, detail = rest.partition("|")
            if at.isdigit():
                events.append((int(at), event, detail))
        return events

    async def add_trace(self, shard: int, message_id: str, event: str, detail: str = "") -> None:
        """An event from outside the scripts (a delivery receipt, an admin's action)."""
        await self.add_traces([(shard, message_id, event, detail)])

    async def add_traces(self, events: Sequence[tuple[int, str, str, str]]) -> None:
        """Events (shard, message id, event, detail) from outside the scripts, in two round
        trips whatever their number: the server's time, then one pipeline."""
        if self._trace_ttl_ms <= 0 or not events:
            return
        seconds, micros = await self.redis.time()
        at = int(seconds) * 1000 + int(micros) // 1000
        async with self.redis.pipeline(transaction=False) as pipe:
            for shard, message_id, event, detail in events:
                key = self.keys(shard).trace(message_id)
                pipe.rpush(key, f"{at}|{event}|{detail[:300]}")
                pipe.ltrim(key, -64, -1)
                pipe.pexpire(key, self._trace_ttl_ms)
            await pipe.execute()

    async def sender_of(self, shard: int, message_id: str) -> str | None:
        """Who is sending the message now (a stream entry id or a direct sender), if anyone."""
        owner, lease_until = await self.redis.hmget(
            self.keys(shard).state(message_id), ["owner", "lease_until"]
        )
        if owner is None:
            return None
        if lease_until is not None:
            seconds, micros = await self.redis.time()
            if int(lease_until) <= int(seconds) * 1000 + int(micros) // 1000:
                return None  # a direct sender that never settled: its lease ran out
        return text(owner)

    async def move(self, delivery: Delivery, shard: int) -> None:
        """Put an entry on the shard its phone number belongs to, then drop it here.

        Two steps (the shards may live on different cluster nodes): a crash between them
        leaves a second entry of the message, which begin.lua then finds busy or sent.
        """
        fields = {text(k): text(v) for k, v in delivery.fields.items()}
        stream = self.keys(shard).lane(delivery.priority)
        await self.redis.xadd(stream, fields)  # type: ignore[arg-type]
        if self._wait:
            await self.replicated([stream])
        await self.drop(delivery)

    async def move_due(self, shard: int, limit: int = 500) -> tuple[int, int, int]:
        """(moved, ms until the next is due or -1, unreadable payloads dropped)."""
        keys = self.keys(shard)
        reply = await self.scripts.move_due(
            keys=[keys.delayed, keys.delayed_payload, *keys.lanes], args=[limit]
        )
        return int(reply[0]), int(reply[1]), int(reply[2])

    # -- publishing and budgets ----------------------------------------------------------
    async def publish(
        self, fields: Mapping[str, str], idempotency_key: str | None, shard: int
    ) -> bool:
        """Queue an entry through publish.lua; False when the idempotency key was used."""
        script_keys, args = wire.publish_call(
            self.keys(shard), fields, idempotency_key, self.settings.idempotency_ttl_seconds
        )
        reply = await self.scripts.publish(keys=script_keys, args=args)
        if self._wait:
            await self.replicated(script_keys)
        return bool(int(reply[0]))

    # -- replicas ------------------------------------------------------------------------
    async def replicated(self, keys: Sequence[str]) -> None:
        """Return once SMSRELAY_REDIS_WAIT_REPLICAS replicas hold what was just written on the
        masters of `keys` (rule 19). While they do not (a replica down, or none yet after a
        failover) the outcome is not final: wait and ask again, as through an outage; the
        entry stays in flight meanwhile."""
        delay, short = 0.05, False
        try:
            while (acked := await wait_replicas(self.redis, keys, self._wait, self._wait_ms)) < (
                self._wait
            ):
                if not short:
                    short = True
                    _replicas_short(acked, self._wait)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        finally:
            if short:
                _replicas_back()

    async def take(
        self, budget_key: str, rate_per_s: float, burst: int, wanted: int = 1
    ) -> tuple[int, int]:
        """Take up to `wanted` tokens of a fleet budget: (granted, ms until the next)."""
        granted, wait_ms = await self.scripts.budget(
            keys=[budget_key], args=[json.dumps(1000.0 / rate_per_s), burst, wanted]
        )
        return int(granted), int(wait_ms)


def _decode_begin(reply: Any) -> Begin:
    verdict = text(reply[0])
    if verdict == "go":
        return Begin(
            "go",
            attempt=int(reply[1]),
            first_attempt_at=text(reply[2]),
            ambiguous_since=text(reply[3]),
        )
    if verdict == "sent":
        return Begin("sent", sid=text(reply[1]))
    if verdict == "expired":
        return Begin("expired")
    if verdict == "busy":
        return Begin("busy", owner=text(reply[1]))
    if verdict == "limited":
        return Begin("limited", wait_ms=int(reply[1]), attempt=int(reply[2]))
    if verdict == "exhausted":
        return Begin(
            "exhausted",
            attempt=int(reply[1]),
            last_error=text(reply[2]),
            first_attempt_at=text(reply[3]),
            last_attempt_at=text(reply[4]),
            # the last attempt never settled: its outcome is unknown
            ambiguous_since=text(reply[3]) if text(reply[5]) == "1" else "",
        )
    raise ValueError(f"begin.lua answered {verdict!r}")


class _Shortage:
    """Outcomes waiting for replicas in this process: said when the first starts to wait and
    when the last is done, not once per outcome."""

    waiting = 0
    since = 0.0


def _replicas_short(acked: int, wanted: int) -> None:
    _Shortage.waiting += 1
    if _Shortage.waiting == 1:
        _Shortage.since = clock.monotonic()
        log.warning(
            "redis.replicas_missing",
            acknowledged=acked,
            wanted=wanted,
            effect="outcomes wait until SMSRELAY_REDIS_WAIT_REPLICAS replicas hold them",
        )


def _replicas_back() -> None:
    _Shortage.waiting -= 1
    if _Shortage.waiting == 0:
        log.info(
            "redis.replicas_back", waited_seconds=round(clock.monotonic() - _Shortage.since, 3)
        )
