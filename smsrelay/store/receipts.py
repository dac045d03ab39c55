"""Delivery receipts into Postgres: `sent_sms` learns each message's most final status; an
undelivered or failed one also becomes a `failed_sms` record (reason `undelivered`), which an
admin can retry (a new SMS) or replay.

The mirror applies receipts in its own transaction; what Redis should learn of them (the
message's trace, the delivery counts) comes back as `Effects`, written after the commit.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from smsrelay.logging import get_logger
from smsrelay.schemas.receipts import StatusCallback, describe_delivery
from smsrelay.store import failed_sms, sent_sms
from smsrelay.store.db import Connection
from smsrelay.streams.keys import shard_of

log = get_logger("smsrelay.mirror")

# The body of an undelivered message, from the provider (no body is kept in sent_sms).
BodyFetcher = Callable[[str], Awaitable[str | None]]


# Receipts that only say how far the message got (Twilio's `sent`: handed to the carrier) are
# named apart from the worker's own steps in the trace: "sent" there is the provider's 201.
PROGRESS_STATUSES = frozenset({"accepted", "scheduled", "queued", "sending", "sent"})


def trace_event(status: str) -> str:
    """The trace's word for a receipt: `receipt_sent` for progress, the status for a verdict."""
    return f"receipt_{status}" if status in PROGRESS_STATUSES else status


@dataclass
class Effects:
    """What Redis should learn once the transaction is committed."""

    trace: list[tuple[int, str, str, str]] = field(default_factory=list)  # shard, id, event, detail
    delivery_counts: dict[str, int] = field(default_factory=dict)

    def extend(self, other: Effects) -> None:
        self.trace += other.trace
        for status, n in other.delivery_counts.items():
            self.delivery_counts[status] = self.delivery_counts.get(status, 0) + n


async def apply_receipts(
    conn: Connection,
    namespace: str,
    shards: int,
    receipts: Sequence[StatusCallback],
    fetch_body: BodyFetcher | None,
) -> Effects:
    """Apply a batch of receipts in order (a few statements for the whole batch)."""
    effects = Effects()
    errors = [
        describe_delivery(r.status, r.error_code) if r.status in sent_sms.FAILED_STATUSES else None
        for r in receipts
    ]
    rows = [
        (sent_sms.Receipt(r.message_sid, r.status, r.error_code, r.received_at), error)
        for r, error in zip(receipts, errors, strict=True)
    ]
    answers = await sent_sms.apply_receipts(conn, rows)
    for receipt, error, applied in zip(receipts, errors, answers, strict=True):
        if applied is not None:
            effects.extend(
                await _applied(conn, namespace, shards, receipt, error, applied, fetch_body)
            )
    return effects


async def apply_unmatched(
    conn: Connection,
    namespace: str,
    shards: int,
    sids: Sequence[str],
    fetch_body: BodyFetcher | None,
) -> Effects:
    """Receipts that arrived before their message's row, now that the row is there."""
    waiting = await sent_sms.take_unmatched(conn, sids)
    receipts = [
        StatusCallback(r.message_sid, r.status, r.error_code, r.received_at) for r in waiting
    ]
    return await apply_receipts(conn, namespace, shards, receipts, fetch_body)


async def _applied(
    conn: Connection,
    namespace: str,
    shards: int,
    receipt: StatusCallback,
    error: str | None,
    applied: sent_sms.Applied,
    fetch_body: BodyFetcher | None,
) -> Effects:
    """What a receipt that moved its message brings: trace, counts, an undelivered record."""
    effects = Effects()
    message = applied.message
    if message.namespace != namespace:
        return effects  # (another pipeline's message on the same database: its own mirror)
    shard = shard_of(message.phone, shards)
    effects.delivery_counts[receipt.status] = 1
    effects.trace.append(
        (shard, str(message.id), trace_event(receipt.status), error or message.message_sid)
    )
    if applied.became_failed:
        body = ""
        if fetch_body is not None:
            try:
                body = await fetch_body(message.message_sid) or ""
            except Exception as exc:  # the record is kept without its body: a retry says so
                log.warning("mirror.body_unavailable", sid=message.message_sid, error=str(exc))
        await failed_sms.record_undelivered(
            conn,
            namespace,
            message_id=message.id,
            phone=message.phone,
            body=body,
            message_sid=message.message_sid,
            error=error or f"Twilio reported the message {receipt.status}",
            attempts=message.attempts,
            sent_at=message.sent_at,
            shard=shard,
        )
        log.warning(
            "sms.undelivered",
            message_id=str(message.id),
            to=message.phone,
            sid=message.message_sid,
            error=error,
        )
    return effects
