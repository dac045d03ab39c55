"""Every way a delivered entry is settled, each one Redis step that waits out outages.

An outage (Redis away, or refusing writes) pauses the entry, which keeps its claim fresh
meanwhile (the heartbeat), instead of leaving it to be claimed and begun again after the
outage. The drain cancels the wait at the end of the grace period.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from typing import TypeVar

from smsrelay import clock
from smsrelay.consumers.metrics import WorkerMetrics
from smsrelay.logging import get_logger
from smsrelay.outage import Outages, until_done
from smsrelay.schemas.dead_letter import DeadLetterReason as Reason
from smsrelay.schemas.entry import RequestEntry
from smsrelay.schemas.segments import segment_count
from smsrelay.streams import wire
from smsrelay.streams.group import Delivery
from smsrelay.streams.queue import Queue

log = get_logger("smsrelay.worker")
T = TypeVar("T")


def _no_write(_: object) -> bool:
    """XACK and XDEL do not grow memory: Redis takes them even when it refuses writes."""
    return False


class Settler:
    def __init__(self, queue: Queue, metrics: WorkerMetrics, outages: Outages) -> None:
        self.queue = queue
        self.metrics = metrics
        self.outages = outages

    async def through_outages(
        self, operation: Callable[[], Awaitable[T]], wrote: Callable[[T], bool] | None = None
    ) -> T:
        """Run a Redis step of an entry until Redis takes it; `wrote(result)`: whether the
        result proves Redis took a write (only that ends a refusal of writes)."""
        return await until_done(operation, self.outages, wrote=wrote)

    async def drop(self, delivery: Delivery) -> None:
        """Acknowledge and delete an entry whose message is settled elsewhere."""
        await self.through_outages(partial(self.queue.drop, delivery), _no_write)

    async def sent(
        self,
        delivery: Delivery,
        entry: RequestEntry,
        sid: str,
        *,
        attempt: int,
        segments: int | None = None,
        event: str = "sms.sent",
    ) -> None:
        """The provider has the message: the marker must be written whatever Redis does now,
        or a redelivery would send it again (rule 4)."""
        outcome = wire.sent_outcome(
            entry.message_id,
            phone=entry.to,
            sid=sid,
            attempts=attempt,
            kind=entry.kind,
            replay_of=wire.field(delivery.fields, "replay_of"),
            sent_at=clock.now_iso(),
        )
        await self.through_outages(
            partial(
                self.queue.mark_sent,
                delivery.shard,
                delivery,
                entry.message_id,
                sid,
                outcome,
                "found_at_provider" if event == "sms.found_at_provider" else "sent",
            )
        )
        self.metrics.messages_sent.inc()
        self.metrics.end_to_end.labels(priority=delivery.priority).observe(
            max(0.0, (clock.now() - entry.created_at).total_seconds())
        )
        log.info(
            event,
            message_id=entry.message_id,
            to=entry.to,
            sid=sid,
            attempt=attempt,
            kind=entry.kind,
            priority=delivery.priority,
            segments=segments or segment_count(entry.body),
        )

    async def delay(
        self,
        delivery: Delivery,
        entry: RequestEntry,
        delay_s: float,
        error: str = "",
        *,
        refund: bool = False,
        ambiguous: bool = False,
        event: str = "retry_scheduled",
    ) -> None:
        """Hold the entry in the delay set; `event` names the wait in the message's trace."""
        fields = entry.to_fields() | wire.carried(delivery.fields)
        await self.through_outages(
            partial(
                self.queue.delay,
                delivery,
                entry.message_id,
                fields,
                delay_s,
                error,
                refund=refund,
                ambiguous=ambiguous,
                event=event,
            ),
            bool,
        )

    async def dead(
        self,
        delivery: Delivery,
        entry: RequestEntry | None,
        reason: Reason,
        error: str,
        attempts: int,
        first_attempt_at: str = "",
        last_attempt_at: str = "",
        *,
        message_id: str | None = None,
        release_slot: bool = False,
    ) -> None:
        message_id = entry.message_id if entry else message_id
        moved = await self.through_outages(
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
