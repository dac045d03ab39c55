"""A message's story for support: "did this user get the SMS?".

The trace in Redis (rule 18: each script step appended an event) is the detailed account,
kept SMSRELAY_TRACE_TTL_SECONDS; `sent_sms` and `failed_sms` in Postgres are the long-term
home, so a message whose trace has expired still answers, from them.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from smsrelay.errors import NotFoundError
from smsrelay.schemas.api import MessageStatus, MessageSummary, MessageTrace, TraceEvent
from smsrelay.schemas.records import FailedSmsRecord, RecordStatus
from smsrelay.store import failed_sms, sent_sms
from smsrelay.store.db import Connection
from smsrelay.store.sent_sms import SentSms
from smsrelay.streams.keys import shard_of
from smsrelay.streams.queue import Queue

# The trace's events, by the status they leave a message in.
WAITING = {"retry_scheduled", "held_for_provider", "deferred", "waiting_for_other_sender"}
SENT = {"sent", "found_at_provider", "already_sent"}
RECEIPTS: dict[str, MessageStatus] = {
    "delivered": "delivered",
    "read": "delivered",
    "undelivered": "undelivered",
    "failed": "failed",
}


async def message_trace(
    queue: Queue, conn: Connection | None, namespace: str, message_id: uuid.UUID
) -> MessageTrace:
    """Raises NotFoundError when neither Redis nor Postgres knows the message. `conn` None:
    Postgres is away (the trace alone answers)."""
    sent = record = None
    if conn is not None:
        sent = await sent_sms.get_sent(conn, namespace, message_id)
        record = await failed_sms.get_record(conn, namespace, message_id)
    phone = sent.phone if sent else record.phone if record else None
    shards = queue.settings.shards
    events: list[tuple[int, str, str]] = []
    if phone is not None:
        events = await queue.trace(shard_of(phone, shards), str(message_id))
    else:
        for shard in range(shards):
            events = await queue.trace(shard, str(message_id))
            if events:
                break
    if not events and sent is None and record is None:
        raise NotFoundError(f"no message with id {message_id} (or its trace has expired)")
    events = _with_verdict(events, sent) if events else _from_postgres(sent, record)
    status = _status(events, record)
    sid = next((d for _, e, d in reversed(events) if e in SENT and d), None)
    return MessageTrace(
        id=message_id,
        phone=phone or "",
        status=status,
        message_sid=sid or (sent.message_sid if sent else record.message_sid if record else None),
        attempts=_attempts(events, sent, record),
        reason=record.reason
        if record is not None and record.status != RecordStatus.RESOLVED
        else None,
        events=[TraceEvent(at=_at(ms), event=event, detail=detail) for ms, event, detail in events],
    )


async def recent_for_phone(
    conn: Connection, namespace: str, phone: str, limit: int
) -> list[MessageSummary]:
    """The phone's recent messages, sent and failed, newest first."""
    found: dict[uuid.UUID, MessageSummary] = {}
    for row in await sent_sms.recent_for_phone(conn, namespace, phone, limit):
        found[row.id] = MessageSummary(
            id=row.id,
            phone=row.phone,
            status=RECEIPTS.get(row.delivery_status or "", "sent"),
            message_sid=row.message_sid,
            at=row.sent_at,
            reason=None,
        )
    page = await failed_sms.list_records(conn, namespace, limit=limit, offset=0, phone=phone)
    for record in page.records:
        if record.status == RecordStatus.RESOLVED and record.id in found:
            continue
        found[record.id] = MessageSummary(
            id=record.id,
            phone=record.phone,
            status=_record_status(record),
            message_sid=record.message_sid,
            at=record.last_attempt_at or record.created_at,
            reason=record.reason,
        )
    return sorted(found.values(), key=lambda m: m.at, reverse=True)[:limit]


def _status(events: list[tuple[int, str, str]], record: FailedSmsRecord | None) -> MessageStatus:
    for _, event, detail in reversed(events):
        if event in RECEIPTS:
            return RECEIPTS[event]
        if event == "dead_lettered":
            return "expired" if detail.startswith("expired") else "failed"
        if event == "expired":
            return "expired"
        if event in SENT:
            return "sent"
        if event in WAITING or event == "rate_limited":
            return "waiting"
    if record is not None and record.status != RecordStatus.RESOLVED:
        return _record_status(record)
    return "queued"


def _record_status(record: FailedSmsRecord) -> MessageStatus:
    if record.status == RecordStatus.RESOLVED:
        return "sent"
    if record.reason == "undelivered":
        return "undelivered"
    return "expired" if record.reason == "expired" else "failed"


def _attempts(
    events: list[tuple[int, str, str]], sent: SentSms | None, record: FailedSmsRecord | None
) -> int:
    counted = sum(1 for _, event, _ in events if event in ("attempt", "admin_retry"))
    known = max(sent.attempts if sent else 0, record.attempts if record else 0)
    return max(counted, known)


def _with_verdict(
    events: list[tuple[int, str, str]], sent: SentSms | None
) -> list[tuple[int, str, str]]:
    """The trace, with the verdict `sent_sms` holds for the message's last send when the trace
    lacks it: the admin applied that receipt to Postgres while Redis was away."""
    if sent is None or sent.delivered_at is None or sent.delivery_status not in RECEIPTS:
        return events
    last_send = max(
        (
            i
            for i, (_, event, sid) in enumerate(events)
            if event in SENT and sid == sent.message_sid
        ),
        default=-1,
    )
    if any(event == sent.delivery_status for _, event, _ in events[last_send + 1 :]):
        return events
    return sorted([*events, _verdict(sent, sent.delivered_at, sent.delivery_status)])


def _verdict(sent: SentSms, at: datetime, status: str) -> tuple[int, str, str]:
    """The receipt event `sent_sms` keeps for the message's last send."""
    return (_ms(at), status, sent.error or sent.message_sid)


def _from_postgres(
    sent: SentSms | None, record: FailedSmsRecord | None
) -> list[tuple[int, str, str]]:
    """The events Postgres still knows once the Redis trace has expired."""
    events: list[tuple[int, str, str]] = []
    if record is not None:
        events.append((_ms(record.created_at), "published", ""))
        if record.reason != "undelivered" and record.last_attempt_at is not None:
            events.append(
                (_ms(record.last_attempt_at), "dead_lettered", f"{record.reason}: {record.error}")
            )
    if sent is not None:
        events.append((_ms(sent.sent_at), "sent", sent.message_sid))
        if sent.delivery_status and sent.delivered_at is not None:
            events.append(_verdict(sent, sent.delivered_at, sent.delivery_status))
    return sorted(events)


def _ms(moment: datetime) -> int:
    return round(moment.timestamp() * 1000)


def _at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)
