"""What happens to one delivered entry: parse, decide, send, settle. One outcome per call."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

from smsrelay import clock
from smsrelay.consumers.attempt import ProviderAttempt
from smsrelay.consumers.breaker import ProviderBreaker
from smsrelay.consumers.metrics import WorkerMetrics
from smsrelay.consumers.providers.base import Provider
from smsrelay.consumers.retry import RetryPolicy
from smsrelay.consumers.settle import Settler
from smsrelay.logging import get_logger
from smsrelay.outage import Outages
from smsrelay.schemas.dead_letter import DeadLetterReason as Reason
from smsrelay.schemas.entry import InvalidEntry, RequestEntry, parse_entry
from smsrelay.settings import Settings
from smsrelay.streams import wire
from smsrelay.streams.group import Delivery
from smsrelay.streams.keys import shard_of
from smsrelay.streams.queue import Begin, BeginCall, Queue, Sender

log = get_logger("smsrelay.worker")

RATE_LIMIT_ERROR = "Rate limit exceeded"

# A parsed entry and, when already asked for its whole read batch, begin.lua's decision and
# whether the fleet's breaker was open when it was made.
Decided = tuple[RequestEntry, Begin | None, bool]


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
        breaker: ProviderBreaker,
    ) -> None:
        self.queue = queue
        self.settings = settings
        self.metrics = metrics
        self.settler = Settler(queue, metrics, outages)
        self.attempt = ProviderAttempt(
            self.settler, provider, breaker, RetryPolicy.from_settings(settings), metrics
        )
        # A copy of a message that another sender is sending waits this long, then asks again.
        self.busy_wait_s = max(1.0, settings.twilio_timeout_seconds / 2)

    def begin_call(self, delivery: Delivery, entry: RequestEntry) -> BeginCall:
        expiry = entry.expiry(self.settings.message_ttl_seconds)
        return BeginCall(
            delivery.shard,
            Sender.of(delivery),
            entry.message_id,
            entry.to,
            expires_at_ms=round(expiry.timestamp() * 1000) if expiry else 0,
            published_ms=round(entry.created_at.timestamp() * 1000),
            resend_of=wire.field(delivery.fields, "resend_of") or "",
        )

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
        calls = [self.begin_call(d, e) for d, e in zip(deliveries, parsed, strict=True) if e]
        if not calls:
            return [None] * len(parsed)
        breaker = self.attempt.breaker
        # The breaker's view rides in the same round trip as the begins: a batch read just
        # before the breaker opened is held, not sent (rule 16: per batch, not per message).
        view, decisions = await self.queue.begin_many(
            calls, breaker.fleet.view_call() if breaker.enabled else None
        )
        held = False
        if view is not None and not isinstance(view, Exception):
            held = breaker.observe(breaker.fleet.parse_view(view)).open
        begins = iter(decisions)
        return [(entry, next(begins), held) if entry else None for entry in parsed]

    def decide_in_background(self, deliveries: Sequence[Delivery]) -> list[PendingDecision]:
        """Start `decide_batch` for a read batch and return each entry's share of it, so the
        reader can read on while the batch's one round trip is made."""
        task = asyncio.ensure_future(self.decide_batch(deliveries))
        return [PendingDecision(task, index) for index in range(len(deliveries))]

    def _on_its_shard(self, delivery: Delivery, entry: RequestEntry) -> bool:
        return shard_of(entry.to, self.settings.shards) == delivery.shard

    async def handle(
        self,
        delivery: Delivery,
        release: Callable[[], None] = lambda: None,
        pending: PendingDecision | None = None,
        probe: bool = False,
    ) -> None:
        """`release()` is called once the provider answered: the send slot is free again.
        `probe`: the one send the open breaker lets through."""
        decided = await pending.result() if pending is not None else None
        if decided is None:
            try:
                entry = parse_entry(delivery.fields)
            except InvalidEntry as exc:
                await self.settler.dead(
                    delivery,
                    None,
                    Reason.INVALID_PAYLOAD,
                    str(exc),
                    0,
                    message_id=_valid_id(delivery),
                )
                return
            if not self._on_its_shard(delivery, entry):
                await self._move(delivery, entry)
                return
            known: Begin | None = None
            held = False
        else:
            entry, known, held = decided
        decision = (
            known
            if known is not None
            else await self.settler.through_outages(
                partial(self.queue.begin, self.begin_call(delivery, entry)),
                wrote=lambda d: d.verdict == "go",
            )
        )
        if decision.verdict == "go" and held and not probe:
            await self.attempt.hold(delivery, entry)
        elif decision.verdict == "go":
            await self.attempt.run(delivery, entry, decision, release, probe)
        elif decision.verdict == "sent":
            await self._already_sent(delivery, entry, decision.sid)
        elif decision.verdict == "expired":
            expiry = entry.expiry(self.settings.message_ttl_seconds)
            await self.settler.dead(
                delivery,
                entry,
                Reason.EXPIRED,
                f"not sent before its expiry ({expiry.isoformat() if expiry else '?'})",
                0,
            )
        elif decision.verdict == "busy":
            await self._busy(delivery, entry)
        elif decision.verdict == "limited":
            await self._rate_limited(delivery, entry, decision.wait_ms, decision.attempt)
        else:
            await self.attempt.exhausted(delivery, entry, decision)

    async def _already_sent(self, delivery: Delivery, entry: RequestEntry, sid: str) -> None:
        replay_of = wire.field(delivery.fields, "replay_of")
        if replay_of is None:
            await self.settler.drop(delivery)
        else:  # a replay of a message that did go out: its record must still resolve
            outcome = wire.sent_outcome(
                entry.message_id,
                phone=entry.to,
                sid=sid,
                attempts=0,
                kind=entry.kind,
                replay_of=replay_of,
                sent_at=clock.now_iso(),
            )
            await self.settler.through_outages(
                partial(
                    self.queue.mark_sent,
                    delivery.shard,
                    delivery,
                    entry.message_id,
                    sid,
                    outcome,
                    "already_sent",
                )
            )
        log.info("sms.already_sent", message_id=entry.message_id, sid=sid)

    async def _busy(self, delivery: Delivery, entry: RequestEntry) -> None:
        if wire.field(delivery.fields, "replay_of") is None:
            # A copy of a message another entry is sending: that entry settles the message.
            await self.settler.drop(delivery)
            log.info("sms.duplicate_entry", message_id=entry.message_id, entry_id=delivery.entry_id)
            return
        # An admin asked for this replay while another sender (a "retry now") holds the
        # message: ask again later. If that send succeeds this copy finds the sent marker and
        # resolves the record; if it fails, this copy sends.
        await self.settler.delay(
            delivery, entry, self.busy_wait_s, event="waiting_for_other_sender"
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
        await self.settler.through_outages(partial(self.queue.move, delivery, target))
        log.warning(
            "sms.moved_to_its_shard",
            message_id=entry.message_id,
            from_shard=delivery.shard,
            to_shard=target,
            hint="publish to shard crc32(to) % SMSRELAY_SHARDS, unsigned",
        )

    async def _rate_limited(
        self, delivery: Delivery, entry: RequestEntry, wait_ms: int, attempts: int
    ) -> None:
        self.metrics.rate_limited.inc()
        if self.settings.on_rate_limit == "defer":
            await self.settler.delay(delivery, entry, wait_ms / 1000, event="deferred")
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
        await self.settler.dead(delivery, entry, Reason.RATE_LIMITED, RATE_LIMIT_ERROR, attempts)

    async def poison(self, delivery: Delivery) -> None:
        """An entry delivered too often without an outcome: set it aside, keep the rest flowing."""
        try:
            entry: RequestEntry | None = parse_entry(delivery.fields)
        except InvalidEntry:
            entry = None
        await self.settler.dead(
            delivery,
            entry,
            Reason.POISON,
            f"delivered {delivery.deliveries} times without an outcome "
            f"(limit SMSRELAY_MAX_DELIVERIES={self.settings.max_deliveries})",
            0,
            message_id=_valid_id(delivery),
        )


def _valid_id(delivery: Delivery) -> str | None:
    """The message id of an entry that does not parse, when its `id` field is a UUID."""
    value = wire.field(delivery.fields, "id")
    try:
        return str(uuid.UUID(value)) if value else None
    except ValueError:
        return None
