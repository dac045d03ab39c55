"""What happens to one delivered entry: parse, decide, send, settle. One outcome per call."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from smsrelay import clock
from smsrelay.consumers.metrics import WorkerMetrics
from smsrelay.consumers.outage import OutageLog, until_done
from smsrelay.consumers.providers.base import Provider
from smsrelay.consumers.retry import RetryPolicy
from smsrelay.consumers.streams import Begin, RawFields, StreamOps
from smsrelay.errors import ProviderError
from smsrelay.logging import get_logger
from smsrelay.schemas.dead_letter import DeadLetterReason as Reason
from smsrelay.schemas.entry import InvalidEntry, RequestEntry, parse_entry
from smsrelay.schemas.segments import segment_count
from smsrelay.settings import Settings

log = get_logger("smsrelay.worker")

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
    def __init__(self, ops: StreamOps, provider: Provider, settings: Settings,
                 metrics: WorkerMetrics, stop: asyncio.Event) -> None:
        self.ops = ops
        self.provider = provider
        self.settings = settings
        self.policy = RetryPolicy.from_settings(settings)
        self.metrics = metrics
        self.stop = stop
        self.redis_outage = OutageLog("redis")

    async def decide_batch(self, shard: int,
                           entries: Sequence[tuple[str, RawFields]]) -> list[Decided | None]:
        """Parse a read batch and run begin.lua for its valid entries in one round trip.

        Each result reaches `handle` through a PendingDecision: None for an entry that does not
        parse (`handle` dead-letters it with the reason), a None decision where Redis gave none
        (`handle` then asks on its own).
        """
        parsed: list[RequestEntry | None] = []
        for _, raw in entries:
            try:
                parsed.append(parse_entry(raw))
            except InvalidEntry:
                parsed.append(None)
        valid = [(entry_id, entry.message_id, entry.to)
                 for (entry_id, _), entry in zip(entries, parsed, strict=True) if entry]
        begins = iter(await self.ops.begin_many(shard, valid) if valid else [])
        return [(entry, next(begins)) if entry else None for entry in parsed]

    def decide_in_background(self, shard: int,
                             entries: Sequence[tuple[str, RawFields]]) -> list[PendingDecision]:
        """Start `decide_batch` for a read batch and return each entry's share of it, so the
        reader can read on while the batch's one round trip is made."""
        task = asyncio.ensure_future(self.decide_batch(shard, entries))
        return [PendingDecision(task, index) for index in range(len(entries))]

    async def handle(self, shard: int, entry_id: str, raw: RawFields,
                     release: Callable[[], None] = lambda: None,
                     pending: PendingDecision | None = None) -> None:
        """`release()` is called once the provider answered: the send slot is free again."""
        decided = await pending.result() if pending is not None else None
        if decided is None:
            try:
                entry = parse_entry(raw)
            except InvalidEntry as exc:
                await self._dead(shard, entry_id, raw, None, Reason.INVALID_PAYLOAD, str(exc),
                                 0)
                return
            known: Begin | None = None
        else:
            entry, known = decided
        message_id = entry.message_id
        decision = known or await self.ops.begin(shard, entry_id, message_id, entry.to)
        if decision.verdict == "sent":
            replay_of = _field(raw, "replay_of")
            if replay_of is None:
                await self.ops.drop(shard, entry_id)
            else:  # a replay of a message that did go out: its record must still resolve
                await self.ops.mark_sent(shard, entry_id, message_id, decision.sid, replay_of)
            log.info("sms.already_sent", message_id=message_id, sid=decision.sid)
        elif decision.verdict == "busy":
            await self.ops.drop(shard, entry_id)
            log.info("sms.duplicate_entry", message_id=message_id, entry_id=entry_id)
        elif decision.verdict == "limited":
            await self._rate_limited(shard, entry_id, raw, entry, decision.wait_ms,
                                     decision.attempt)
        elif decision.verdict == "exhausted":
            await self._dead(shard, entry_id, raw, entry, Reason.RETRIES_EXHAUSTED,
                             decision.last_error or CRASHED_DURING_ATTEMPT, decision.attempt,
                             decision.first_attempt_at, decision.last_attempt_at,
                             release_slot=True)
        else:
            await self._attempt(shard, entry_id, raw, entry, decision.attempt,
                                decision.first_attempt_at, release)

    async def _attempt(self, shard: int, entry_id: str, raw: RawFields, entry: RequestEntry,
                       attempt: int, first_attempt_at: str,
                       release: Callable[[], None] = lambda: None) -> None:
        message_id = entry.message_id
        started = time.perf_counter()
        try:
            receipt = await self.provider.send(entry.to, entry.body, message_id=message_id)
        except ProviderError as exc:
            release()
            self.metrics.send_duration.observe(time.perf_counter() - started)
            await self._failed(shard, entry_id, raw, entry, attempt, first_attempt_at, exc)
            return
        release()
        self.metrics.send_duration.observe(time.perf_counter() - started)
        # The provider has the message: the marker must be written whatever Redis does now,
        # or a redelivery would send it again (rule 4). A stop does not end the tries: the
        # drain cancels them at the end of the grace period, and Redis may be back by then.
        replay_of = _field(raw, "replay_of")
        await until_done(
            lambda: self.ops.mark_sent(shard, entry_id, message_id, receipt.sid, replay_of),
            self.redis_outage)
        self.metrics.send_attempts.labels(outcome="success").inc()
        self.metrics.messages_sent.inc()
        self.metrics.end_to_end.observe(max(0.0, (clock.now() - entry.created_at).total_seconds()))
        log.info("sms.sent", message_id=message_id, to=entry.to, sid=receipt.sid,
                 attempt=attempt, kind=entry.kind,
                 segments=receipt.segments or segment_count(entry.body))

    async def _failed(self, shard: int, entry_id: str, raw: RawFields, entry: RequestEntry,
                      attempt: int, first_attempt_at: str, exc: ProviderError) -> None:
        error = str(exc)
        if not exc.retryable:
            self.metrics.send_attempts.labels(outcome="permanent_error").inc()
            await self._dead(shard, entry_id, raw, entry, Reason.PERMANENT_ERROR, error, attempt,
                             first_attempt_at, clock.now_iso(), release_slot=True)
            return
        self.metrics.send_attempts.labels(outcome="retryable_error").inc()
        if not self.policy.may_retry(attempt):
            await self._dead(shard, entry_id, raw, entry, Reason.RETRIES_EXHAUSTED, error,
                             attempt, first_attempt_at, clock.now_iso(), release_slot=True)
            return
        wait_s = self.policy.delay_s(attempt)
        await self.ops.delay(shard, entry_id, entry.message_id, entry.to_fields(), wait_s, error)
        log.warning("sms.retry_scheduled", message_id=entry.message_id, to=entry.to,
                    attempt=attempt, wait_seconds=round(wait_s, 3), error=error)

    async def _rate_limited(self, shard: int, entry_id: str, raw: RawFields,
                            entry: RequestEntry, wait_ms: int, attempts: int) -> None:
        self.metrics.rate_limited.inc()
        if self.settings.on_rate_limit == "defer":
            await self.ops.delay(shard, entry_id, entry.message_id, entry.to_fields(),
                                 wait_ms / 1000)
            log.info("sms.deferred", message_id=entry.message_id, to=entry.to,
                     retry_after_seconds=round(wait_ms / 1000, 3))
            return
        log.info("sms.rate_limited", message_id=entry.message_id, to=entry.to,
                 retry_after_seconds=round(wait_ms / 1000, 3))
        await self._dead(shard, entry_id, raw, entry, Reason.RATE_LIMITED, RATE_LIMIT_ERROR,
                         attempts)

    async def _dead(self, shard: int, entry_id: str, raw: RawFields, entry: RequestEntry | None,
                    reason: Reason, error: str, attempts: int, first_attempt_at: str = "",
                    last_attempt_at: str = "", *, release_slot: bool = False) -> None:
        message_id = entry.message_id if entry else ""
        moved = await self.ops.dead_letter(
            shard, entry_id, raw, message_id=message_id, phone=entry.to if entry else None,
            reason=reason.value, error=error, attempts=attempts,
            first_attempt_at=first_attempt_at, last_attempt_at=last_attempt_at,
            release_slot=release_slot)
        if moved:
            self.metrics.dead_lettered.labels(reason=reason.value).inc()
            log.warning("sms.dead_lettered", message_id=message_id or None, entry_id=entry_id,
                        to=entry.to if entry else None, reason=reason.value, error=error,
                        attempts=attempts)

    async def poison(self, shard: int, entry_id: str, raw: RawFields, deliveries: int) -> None:
        """An entry delivered too often without an outcome: set it aside, keep the rest flowing."""
        try:
            entry: RequestEntry | None = parse_entry(raw)
        except InvalidEntry:
            entry = None
        await self._dead(shard, entry_id, raw, entry, Reason.POISON,
                         f"delivered {deliveries} times without an outcome "
                         f"(limit SMSRELAY_MAX_DELIVERIES={self.settings.max_deliveries})", 0)


def _field(raw: RawFields, name: str) -> str | None:
    value = raw.get(name.encode()) if name.encode() in raw else raw.get(name)  # type: ignore[call-overload]
    if value is None:
        return None
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
