"""Queries on `public.sent_sms`: every message the provider accepted, and what its delivery
receipts said. Filled by the mirror in batches; updated by receipts; kept
SMSRELAY_SENT_SMS_RETENTION_DAYS. Each function takes a connection; callers own transactions.

A receipt moves a message's status only forward (`STATUS_RANK`): callbacks repeat and come out
of order, and a multi-part message may report a failed part after a delivered one. A failure
outranks a delivery: one undelivered part means the text did not arrive whole.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from psycopg import sql

from smsrelay.store.db import Connection

STATUS_RANK: dict[str, int] = {
    "accepted": 0,
    "scheduled": 0,
    "queued": 1,
    "sending": 2,
    "sent": 3,
    "partially_delivered": 4,
    "delivered": 5,
    "read": 6,
    "canceled": 7,
    "undelivered": 8,
    "failed": 9,
}
FAILED_STATUSES = frozenset({"undelivered", "failed"})


@dataclass(frozen=True)
class SentRow:
    id: uuid.UUID
    phone: str
    message_sid: str
    kind: str | None
    attempts: int
    sent_at: datetime


@dataclass(frozen=True)
class SentSms:
    id: uuid.UUID
    namespace: str
    phone: str
    message_sid: str
    kind: str | None
    attempts: int
    sent_at: datetime
    delivery_status: str | None
    delivered_at: datetime | None
    error: str | None


@dataclass(frozen=True)
class Receipt:
    message_sid: str
    status: str
    error_code: int | None
    received_at: datetime


@dataclass(frozen=True)
class Applied:
    """A receipt that moved a message's status: the message as it is now."""

    message: SentSms
    became_failed: bool  # undelivered/failed now, and not before


_COLUMN_NAMES = (
    "id",
    "namespace",
    "phone",
    "message_sid",
    "kind",
    "attempts",
    "sent_at",
    "delivery_status",
    "delivered_at",
    "error",
)
_COLUMNS = sql.SQL(", ").join(sql.Identifier(c) for c in _COLUMN_NAMES)


def _row(row: dict[str, Any]) -> SentSms:
    return SentSms(**row)


async def upsert_sent(conn: Connection, namespace: str, rows: Sequence[SentRow]) -> list[str]:
    """Record sent messages in one statement (idempotent per id: a re-read outcome changes
    nothing). Returns the SIDs whose receipts arrived before their row (`take_unmatched`).

    A later send of the same message (an undelivered one retried: a new SMS, a new SID)
    takes the row over, adds its attempts, and its delivery starts afresh: the old SMS's
    failure must not outrank the new one's receipts. An older send never takes a newer one's
    row back.
    """
    if not rows:
        return []
    # One row per id: a statement may not update a row twice (two sends of one message in a
    # batch: the mirror was behind while an undelivered message was retried).
    latest: dict[uuid.UUID, SentRow] = {}
    for r in rows:
        if r.id not in latest or r.sent_at >= latest[r.id].sent_at:
            latest[r.id] = r
    rows = list(latest.values())
    await conn.execute(
        """
        INSERT INTO public.sent_sms AS s
            (id, namespace, phone, message_sid, kind, attempts, sent_at)
        SELECT * FROM unnest(%s::uuid[], %s::text[], %s::text[], %s::text[], %s::text[],
                             %s::int[], %s::timestamptz[])
        ON CONFLICT (id) DO UPDATE SET message_sid = EXCLUDED.message_sid,
            attempts = CASE WHEN s.message_sid = EXCLUDED.message_sid
                            THEN greatest(s.attempts, EXCLUDED.attempts)
                            ELSE s.attempts + EXCLUDED.attempts END,
            sent_at = EXCLUDED.sent_at,
            delivery_status = CASE WHEN s.message_sid = EXCLUDED.message_sid
                                   THEN s.delivery_status END,
            delivered_at = CASE WHEN s.message_sid = EXCLUDED.message_sid
                                THEN s.delivered_at END,
            error = CASE WHEN s.message_sid = EXCLUDED.message_sid THEN s.error END
        WHERE EXCLUDED.sent_at >= s.sent_at OR s.message_sid = EXCLUDED.message_sid
        """,
        [
            [r.id for r in rows],
            [namespace] * len(rows),
            [r.phone for r in rows],
            [r.message_sid for r in rows],
            [r.kind for r in rows],
            [r.attempts for r in rows],
            [r.sent_at for r in rows],
        ],
    )
    cur = await conn.execute(
        "SELECT DISTINCT message_sid FROM public.unmatched_receipts WHERE message_sid = ANY(%s)",
        [[r.message_sid for r in rows]],
    )
    return [str(row["message_sid"]) for row in await cur.fetchall()]


async def apply_receipt(conn: Connection, receipt: Receipt, error: str | None) -> Applied | None:
    """One receipt (`apply_receipts` with one)."""
    [applied] = await apply_receipts(conn, [(receipt, error)])
    return applied


async def apply_receipts(
    conn: Connection, receipts: Sequence[tuple[Receipt, str | None]]
) -> list[Applied | None]:
    """Apply receipts in order, each with the error it brings, in three statements whatever
    their number: lock the rows of their SIDs, move each forward in memory, write the rows that
    moved; a receipt for a SID with no row yet is kept (`take_unmatched`). One `Applied` per
    receipt that moved its message, None for one that did not: the same answers, one by one,
    as applying each alone, at a fraction of the round trips (the mirror must keep up with a
    worker's rate, two or three receipts a message)."""
    if not receipts:
        return []
    cur = await conn.execute(
        sql.SQL(
            "SELECT {} FROM public.sent_sms WHERE message_sid = ANY(%s) ORDER BY id FOR UPDATE"
        ).format(_COLUMNS),
        [sorted({r.message_sid for r, _ in receipts})],
    )
    current = {row["message_sid"]: _row(row) for row in await cur.fetchall()}
    answers: list[Applied | None] = []
    unmatched: list[Receipt] = []
    moved: dict[str, SentSms] = {}
    for receipt, error in receipts:
        message = current.get(receipt.message_sid)
        if message is None:
            unmatched.append(receipt)
            answers.append(None)
            continue
        rank = STATUS_RANK.get(receipt.status, -1)
        if rank <= STATUS_RANK.get(message.delivery_status or "", -1):
            answers.append(None)
            continue
        now = replace(
            message,
            delivery_status=receipt.status,
            delivered_at=receipt.received_at,
            error=error if error is not None else message.error,
        )
        current[receipt.message_sid] = moved[receipt.message_sid] = now
        became_failed = (
            receipt.status in FAILED_STATUSES and message.delivery_status not in FAILED_STATUSES
        )
        answers.append(Applied(now, became_failed))
    if moved:
        rows = list(moved.values())
        await conn.execute(
            """
            UPDATE public.sent_sms AS s
            SET delivery_status = m.status, delivered_at = m.at, error = m.error
            FROM unnest(%s::uuid[], %s::text[], %s::timestamptz[], %s::text[])
                AS m(id, status, at, error)
            WHERE s.id = m.id
            """,
            [
                [r.id for r in rows],
                [r.delivery_status for r in rows],
                [r.delivered_at for r in rows],
                [r.error for r in rows],
            ],
        )
    if unmatched:
        await conn.execute(
            """
            INSERT INTO public.unmatched_receipts (message_sid, status, error_code, received_at)
            SELECT * FROM unnest(%s::text[], %s::text[], %s::int[], %s::timestamptz[])
            ON CONFLICT DO NOTHING
            """,
            [
                [r.message_sid for r in unmatched],
                [r.status for r in unmatched],
                [r.error_code for r in unmatched],
                [r.received_at for r in unmatched],
            ],
        )
    return answers


async def take_unmatched(conn: Connection, message_sids: Sequence[str]) -> list[Receipt]:
    """The receipts that waited for these SIDs' rows, removed, in one statement: by SID in the
    order given, each SID's from its least to its most final status."""
    if not message_sids:
        return []
    cur = await conn.execute(
        "DELETE FROM public.unmatched_receipts WHERE message_sid = ANY(%s) "
        "RETURNING message_sid, status, error_code, received_at",
        [list(message_sids)],
    )
    order = {sid: n for n, sid in enumerate(message_sids)}
    return sorted(
        (Receipt(**row) for row in await cur.fetchall()),
        key=lambda r: (order[r.message_sid], STATUS_RANK.get(r.status, -1)),
    )


async def get_sent(conn: Connection, namespace: str, message_id: uuid.UUID) -> SentSms | None:
    cur = await conn.execute(
        sql.SQL("SELECT {} FROM public.sent_sms WHERE id = %s AND namespace = %s").format(_COLUMNS),
        [message_id, namespace],
    )
    row = await cur.fetchone()
    return _row(row) if row else None


async def recent_for_phone(
    conn: Connection, namespace: str, phone: str, limit: int
) -> list[SentSms]:
    cur = await conn.execute(
        sql.SQL(
            "SELECT {} FROM public.sent_sms WHERE namespace = %s AND phone = %s "
            "ORDER BY sent_at DESC LIMIT %s"
        ).format(_COLUMNS),
        [namespace, phone, limit],
    )
    return [_row(row) for row in await cur.fetchall()]


async def delete_older_than(conn: Connection, days: float, batch: int = 10_000) -> int:
    """Forget sent messages (and stray receipts) past the retention, a batch at a time."""
    cur = await conn.execute(
        """
        DELETE FROM public.sent_sms WHERE id IN (
            SELECT id FROM public.sent_sms
            WHERE sent_at < now() - make_interval(secs => %s) LIMIT %s)
        """,
        [days * 86_400, batch],
    )
    removed = cur.rowcount
    await conn.execute(
        "DELETE FROM public.unmatched_receipts "
        "WHERE received_at < now() - make_interval(secs => %s)",
        [days * 86_400],
    )
    return max(removed, 0)
