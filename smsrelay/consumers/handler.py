"""What happens to one delivered entry: parse, decide, send, settle. One outcome per call."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

from smsrelay import clock
from smsrelay.consumers.metrics import WorkerMetrics
from smsrelay.consumers.providers.base import Provider
from smsrelay.consumers.retry import RetryPolicy
from smsrelay.errors import ProviderError
from smsrelay.logging import get_logger
from smsrelay.outage import Outages, until_done
from smsrelay.schemas.dead_letter import DeadLetterReason as Reason
from smsrelay.schemas.entry import InvalidEntry, RequestEntry, parse_entry
from smsrelay.schemas.segments import segment_count
from smsrelay.settings import Settings
from smsrelay.streams import wire
from smsrelay.streams.group import Delivery
from smsrelay.streams.keys import shard_of
from smsrelay.streams.queue import Begin, BeginCall, Queue, Sender

log = get_logger("smsrelay.worker")
T = TypeVar("T")

RATE_LIMIT_ERROR = "Rate limit exceeded"
CRASHED_DURING_ATTEMPT = "the worker stopped during the last attempt (no provider answer recorded)"

# A parsed entry and, when already asked for its whole read batch, begin.lua's decision.
Decided = tuple[RequestEntry, Begin | None]


@dataclass(frozen=True)
class PendingDecision:
    """One entry's share of a read batch's decide_batch task."""

    batch: asyncio.Future[list[Decided | None]]
    index: int

    async def result(self) -> Decided | None:
        # Shielded: one handler cancelled while waiting must not cancel its batch-mates' share.
        return (await asyncio.shield(self.batch))[self.index]


class MessageHandler:
    def __init__(
        self,
        queue: Queue,
        provider: Provider,
        settings: Settings,
        metrics: WorkerMetrics,
        outages: Outages,
    ) -> None:
        self.queue = queue
        self.provider = provider
        self.settings = settings
        self.policy = RetryPolicy.from_settings(settings)
        self.metrics = metrics
        self.outages = outages
        # A copy of a message that another sender is sending waits this long, then asks again.
        self.busy_wait_s = max(1.0, settings.twilio_timeout_seconds / 2)

    async def decide_batch(self, deliveries: Sequence[Delivery]) -> list[Decided | None]:
        """Parse a read batch and run begin.lua for its valid entries in one round trip.

        Each result reaches `handle` through a PendingDecision: None for an entry that does not
        parse or sits on the wrong shard (`handle` deals with it), a None decision where Redis
        gave none (`handle` then asks on its own).
        """
        parsed: list[RequestEntry | None] = []
        for delivery in deliveries:
            try:
                entry: RequestEntry | None = parse_entry(delivery.fields)
            except InvalidEntry:
                entry = None
            parsed.append(entry if entry and self._on_its_shard(delivery, entry) else None)
        calls = [
            BeginCall(d.shard, Sender.of(d), e.message_id, e.to)
            for d, e in zip(deliveries, parsed, strict=True)
            if e
        ]
        begins = iter(await self.queue.begin_many(calls) if calls else [])
        return [(entry, next(begins)) if entry else None for entry in parsed]

    def decide_in_background(self, deliveries: Sequence[Delivery]) -> list[PendingDecision]:
        """Start `decide_batch` for a read batch and return each entry's share of it, so the
        reader can read on while the batch's one round trip is made."""
        task = asyncio.ensure_future(self.decide_batch(deliveries))
        return [PendingDecision(task, index) for index in range(len(deliveries))]

    async def _through_outages(
        self, operation: Callable[[], Awaitable[T]], wrote: Callable[[T], bool] | None = None
    ) -> T:
        """Run a Redis step of this entry until Redis takes it: an outage (Redis away, or
        refusing writes) pauses the entry, which keeps its claim fresh meanwhile (the
        heartbeat), instead of leaving it to be claimed and begun again after the outage.
        The drain cancels the wait at the end of the grace period."""
        return await until_done(operation, self.outages, wrote=wrote)

    def _on_its_shard(self, delivery: Delivery, entry: RequestEntry) -> bool:
        return shard_of(entry.to, self.settings.shards) == delivery.shard

    async def handle(
        self,
        delivery: Delivery,
        release: Callable[[], None] = lambda: None,
        pending: PendingDecision | None = None,
    ) -> None:
        """`release()` is called once the provider answered: the send slot is free again."""
        decided = await pending.result() if pending is not None else None
        if decided is None:
            try:
                entry = parse_entry(delivery.fields)
            except InvalidEntry as exc:
                await self._dead(delivery, None, Reason.INVALID_PAYLOAD, str(exc), 0)
                return
            if not self._on_its_shard(delivery, entry):
                await self._move(delivery, entry)
                return
            known: Begin | None = None
        else:
            entry, known = decided
        begin = partial(
            self.queue.begin,
            BeginCall(delivery.shard, Sender.of(delivery), entry.message_id, entry.to),
        )
        decision = (
            known
            if known is not None
            else await self._through_outages(begin, wrote=lambda d: d.verdict == "go")
        )
        replay_of = wire.field(delivery.fields, "replay_of")
        if decision.verdict == "sent":
            if replay_of is None:
                await self._through_outages(partial(self.queue.drop, delivery), _no_write)
            else:  # a replay of a message that did go out: its record must still resolve
                await self._through_outages(
                    partial(
                        self.queue.mark_sent,
                        delivery.shard,
                        delivery,
                        entry.message_id,
                        decision.sid,
                        _resolved(entry, decision.sid, replay_of),
                    )
                )
            log.info("sms.already_sent", message_id=entry.message_id, sid=decision.sid)
        elif decision.verdict == "busy":
            await self._busy(delivery, entry, decision, replay_of)
        elif decision.verdict == "limited":
            await self._rate_limited(delivery, entry, decision.wait_ms, decision.attempt)
        elif decision.verdict == "exhausted":
            await self._dead(
                delivery,
                entry,
                Reason.RETRIES_EXHAUSTED,
                decision.last_error or CRASHED_DURING_ATTEMPT,
                decision.attempt,
                decision.first_attempt_at,
                decision.last_attempt_at,
                release_slot=True,
            )
        else:
            await self._attempt(
                delivery, entry, decision.attempt, decision.first_attempt_at, release
            )

    async def _busy(
        self, delivery: Delivery, entry: RequestEntry, decision: Begin, replay_of: str | None
    ) -> None:
        if replay_of is None:
            # A copy of a message another entry is sending: that entry settles the message.
            await self._through_outages(partial(self.queue.drop, delivery), _no_write)
            log.info("sms.duplicate_entry", message_id=entry.message_id, entry_id=delivery.entry_id)
            return
        # An admin asked for this replay while another sender (a "retry now") holds the
        # message: ask again later. If that send succeeds this copy finds the sent marker and
        # resolves the record; if it fails, this copy sends.
        await self._through_outages(
            partial(
                self.queue.delay,
                delivery,
                entry.message_id,
                entry.to_fields() | wire.carried(delivery.fields),
                self.busy_wait_s,
            ),
            bool,
        )
        log.info(
            "sms.waiting_for_other_sender",
            message_id=entry.message_id,
            wait_seconds=self.busy_wait_s,
        )

    async def _move(self, delivery: Delivery, entry: RequestEntry) -> None:
        """An entry on a shard its number does not hash to (a publisher in another language
        with another shard count, or a signed CRC): its rate-limit window is elsewhere."""
        target = shard_of(entry.to, self.settings.shards)
        await self._through_outages(partial(self.queue.move, delivery, target))
        log.warning(
            "sms.moved_to_its_shard",
            message_id=entry.message_id,
            from_shard=delivery.shard,
            to_shard=target,
            hint="publish to shard crc32(to) % SMSRELAY_SHARDS, unsigned",
        )

    async def _attempt(
        self,
        delivery: Delivery,
        entry: RequestEntry,
        attempt: int,
        first_attempt_at: str,
        release: Callable[[], None] = lambda: None,
    ) -> None:
        message_id = entry.message_id
        started = time.perf_counter()
        try:
            receipt = await self.provider.send(entry.to, entry.body, message_id=message_id)
        except ProviderError as exc:
            release()
            self.metrics.send_duration.observe(time.perf_counter() - started)
            await self._failed(delivery, entry, attempt, first_attempt_at, exc)
            return
        release()
        self.metrics.send_duration.observe(time.perf_counter() - started)
        # The provider has the message: the marker must be written whatever Redis does now,
        # or a redelivery would send it again (rule 4). A stop does not end the tries: the
        # drain cancels them at the end of the grace period, and Redis may be back by then.
        replay_of = wire.field(delivery.fields, "replay_of")
        outcome = _resolved(entry, receipt.sid, replay_of) if replay_of is not None else None
        await self._through_outages(
            partial(
                self.queue.mark_sent, delivery.shard, delivery, message_id, receipt.sid, outcome
            )
        )
        self.metrics.send_attempts.labels(outcome="success").inc()
        self.metrics.messages_sent.inc()
        self.metrics.end_to_end.observe(max(0.0, (clock.now() - entry.created_at).total_seconds()))
        log.info(
            "sms.sent",
            message_id=message_id,
            to=entry.to,
            sid=receipt.sid,
            attempt=attempt,
            kind=entry.kind,
            segments=receipt.segments or segment_count(entry.body),
        )

    async def _failed(
        self,
        delivery: Delivery,
        entry: RequestEntry,
        attempt: int,
        first_attempt_at: str,
        exc: ProviderError,
    ) -> None:
        error = str(exc)
        if not exc.retryable:
            self.metrics.send_attempts.labels(outcome="permanent_error").inc()
            await self._dead(
                delivery,
                entry,
                Reason.PERMANENT_ERROR,
                error,
                attempt,
                first_attempt_at,
                clock.now_iso(),
                release_slot=True,
            )
            return
        self.metrics.send_attempts.labels(outcome="retryable_error").inc()
        if not self.policy.may_retry(attempt):
            await self._dead(
                delivery,
                entry,
                Reason.RETRIES_EXHAUSTED,
                error,
                attempt,
                first_attempt_at,
                clock.now_iso(),
                release_slot=True,
            )
            return
        wait_s = self.policy.delay_s(attempt)
        await self._through_outages(
            partial(
                self.queue.delay,
                delivery,
                entry.message_id,
                entry.to_fields() | wire.carried(delivery.fields),
                wait_s,
                error,
            ),
            bool,
        )
        log.warning(
            "sms.retry_scheduled",
            message_id=entry.message_id,
            to=entry.to,
            attempt=attempt,
            wait_seconds=round(wait_s, 3),
            error=error,
        )

    async def _rate_limited(
        self, delivery: Delivery, entry: RequestEntry, wait_ms: int, attempts: int
    ) -> None:
        self.metrics.rate_limited.inc()
        if self.settings.on_rate_limit == "defer":
            await self._through_outages(
                partial(
                    self.queue.delay,
                    delivery,
                    entry.message_id,
                    entry.to_fields() | wire.carried(delivery.fields),
                    wait_ms / 1000,
                ),
                bool,
            )
            log.info(
                "sms.deferred",
                message_id=entry.message_id,
                to=entry.to,
                retry_after_seconds=round(wait_ms / 1000, 3),
            )
            return
        log.info(
            "sms.rate_limited",
            message_id=entry.message_id,
            to=entry.to,
            retry_after_seconds=round(wait_ms / 1000, 3),
        )
        await self._dead(delivery, entry, Reason.RATE_LIMITED, RATE_LIMIT_ERROR, attempts)

    async def _dead(
        self,
        delivery: Delivery,
        entry: RequestEntry | None,
        reason: Reason,
        error: str,
        attempts: int,
        first_attempt_at: str = "",
        last_attempt_at: str = "",
        *,
        release_slot: bool = False,
    ) -> None:
        message_id = entry.message_id if entry else _valid_id(delivery)
        moved = await self._through_outages(
            partial(
                self.queue.dead_letter,
                delivery,
                message_id=message_id or "",
                phone=entry.to if entry else None,
                reason=reason.value,
                error=error,
                attempts=attempts,
                first_attempt_at=first_attempt_at,
                last_attempt_at=last_attempt_at,
                release_slot=release_slot,
            ),
            bool,
        )
        if moved:
            self.metrics.dead_lettered.labels(reason=reason.value).inc()
            log.warning(
                "sms.dead_lettered",
                message_id=message_id,
                entry_id=delivery.entry_id,
                to=entry.to if entry else None,
                reason=reason.value,
                error=error,
                attempts=attempts,
            )

    async def poison(self, delivery: Delivery) -> None:
        """An entry delivered too often without an outcome: set it aside, keep the rest flowing."""
        try:
            entry: RequestEntry | None = parse_entry(delivery.fields)
        except InvalidEntry:
            entry = None
        await self._dead(
            delivery,
            entry,
            Reason.POISON,
            f"delivered {delivery.deliveries} times without an outcome "
            f"(limit SMSRELAY_MAX_DELIVERIES={self.settings.max_deliveries})",
            0,
        )


def _no_write(_: object) -> bool:
    """XACK and XDEL do not grow memory: Redis takes them even when it refuses writes."""
    return False


def _resolved(entry: RequestEntry, sid: str, replay_of: str | None) -> dict[str, str]:
    """The outcome entry that tells the mirror a replayed dead letter was sent."""
    return {
        "id": entry.message_id,
        "status": "resolved",
        "message_sid": sid,
        "replay_of": replay_of or "",
        "resolved_at": clock.now_iso(),
    }


def _valid_id(delivery: Delivery) -> str | None:
    """The message id of an entry that does not parse, when its `id` field is a UUID."""
    value = wire.field(delivery.fields, "id")
    try:
        return str(uuid.UUID(value)) if value else None
    except ValueError:
        return None
