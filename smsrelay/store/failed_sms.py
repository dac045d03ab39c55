"""Queries on `public.failed_sms`. Each function takes a connection; callers own transactions.

Rows belong to a namespace, as their Redis keys do: an admin sees and changes only its own.
Message ids are UUIDs, unique across namespaces, so the mirror's writes go by id alone.

A row mirrors one dead-letter stream entry, `dead_letter_id`. When a message is dead-lettered
again (a replay that failed), the newer entry wins and the older one is reported back as
superseded, so the mirror can delete it: one row, one dead-letter entry.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from smsrelay import clock
from smsrelay.schemas.dead_letter import DeadLetter, DeadLetterReason
from smsrelay.schemas.records import FailedSmsRecord, RecordPage, RecordStatus
from smsrelay.store.db import Connection
from smsrelay.store.sent_sms import SentRow

COLUMNS = (
    "id",
    "phone",
    "message",
    "error",
    "attempts",
    "created_at",
    "last_attempt_at",
    "reason",
    "status",
    "message_sid",
    "resolved_at",
    "namespace",
    "shard",
    "dead_letter_id",
)
_SELECT = sql.SQL("SELECT {} FROM public.failed_sms").format(
    sql.SQL(", ").join(sql.Identifier(c) for c in COLUMNS)
)


def _newer(candidate: str, current: str) -> sql.Composed:
    """SQL: stream id `candidate` comes after `current` (ids are `<ms>-<seq>`)."""
    return sql.SQL(
        "string_to_array({}, '-')::numeric[] > string_to_array({}, '-')::numeric[]"
    ).format(sql.SQL(candidate), sql.SQL(current))


@dataclass(frozen=True)
class StreamRef:
    """A dead-letter entry: its shard and stream id."""

    shard: int
    entry_id: str


@dataclass(frozen=True)
class Outcome:
    """A replayed message's fate, from the outcome stream (only `resolved` exists today)."""

    message_id: uuid.UUID
    message_sid: str
    resolved_at: datetime
    replay_of: str | None
    attempts: int = 0  # provider attempts the replay made (the one that sent it included)
    sent: SentRow | None = None  # the message's sent_sms row (every send since sent_sms)
    resolves: bool = True  # a failed_sms record of the message is to be resolved


def _record(row: dict[str, Any]) -> FailedSmsRecord:
    return FailedSmsRecord.model_validate(row)


def _clean(value: str) -> str:
    # Postgres text cannot hold NUL; a junk payload must not block the mirror.
    return value.replace("\x00", "\ufffd")


def _when(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return clock.parse_iso(text)
    except ValueError:
        return None


async def list_records(
    conn: Connection,
    namespace: str,
    *,
    limit: int,
    offset: int,
    status: RecordStatus | None = None,
    reason: str | None = None,
    phone: str | None = None,
) -> RecordPage:
    filters = [
        sql.SQL("{} = {}").format(sql.Identifier(name), sql.Literal(value))
        for name, value in (
            ("namespace", namespace),
            ("status", status and status.value),
            ("reason", reason),
            ("phone", phone),
        )
        if value is not None
    ]
    where = sql.SQL(" WHERE ") + sql.SQL(" AND ").join(filters)
    async with conn.transaction():
        cur = await conn.execute(sql.SQL("SELECT count(*) AS n FROM public.failed_sms") + where)
        total_row = await cur.fetchone()
        cur = await conn.execute(
            _SELECT + where + sql.SQL(" ORDER BY created_at DESC, id DESC LIMIT %s OFFSET %s"),
            [limit, offset],
        )
        rows = await cur.fetchall()
    total = int(total_row["n"]) if total_row else 0
    return RecordPage(records=[_record(r) for r in rows], total=total, limit=limit, offset=offset)


async def get_record(
    conn: Connection, namespace: str, message_id: uuid.UUID
) -> FailedSmsRecord | None:
    cur = await conn.execute(
        _SELECT + sql.SQL(" WHERE id = %s AND namespace = %s"), [message_id, namespace]
    )
    row = await cur.fetchone()
    return _record(row) if row else None


class RecordBusy(Exception):
    """Another transaction holds the record's row lock (a retry in progress)."""


async def lock_record(
    conn: Connection, namespace: str, message_id: uuid.UUID
) -> FailedSmsRecord | None:
    """The record under its row lock, for the rest of the caller's transaction.

    Raises RecordBusy at once rather than waiting when another change holds it.
    """
    try:
        cur = await conn.execute(
            _SELECT + sql.SQL(" WHERE id = %s AND namespace = %s FOR UPDATE NOWAIT"),
            [message_id, namespace],
        )
    except psycopg.errors.LockNotAvailable:
        raise RecordBusy(str(message_id)) from None
    row = await cur.fetchone()
    return _record(row) if row else None


async def _superseded(
    conn: Connection, message_id: uuid.UUID, seen: list[StreamRef | None]
) -> list[StreamRef]:
    """The dead-letter entries among `seen` that the row no longer points at."""
    cur = await conn.execute(
        "SELECT dead_letter_id FROM public.failed_sms WHERE id = %s", [message_id]
    )
    row = await cur.fetchone()
    if row is None:
        return []
    current = row["dead_letter_id"]
    return list({ref for ref in seen if ref is not None and ref.entry_id != current})


async def _current_ref(conn: Connection, message_id: uuid.UUID) -> StreamRef | None:
    cur = await conn.execute(
        "SELECT dead_letter_id, shard FROM public.failed_sms WHERE id = %s FOR UPDATE", [message_id]
    )
    row = await cur.fetchone()
    if row is None or row["dead_letter_id"] is None:
        return None
    return StreamRef(int(row["shard"]), str(row["dead_letter_id"]))


_UPSERT = sql.SQL("""
    INSERT INTO public.failed_sms AS f
        (id, phone, message, error, attempts, created_at, last_attempt_at, reason, status,
         namespace, shard, dead_letter_id)
    VALUES (%(id)s, %(phone)s, %(message)s, %(error)s, %(attempts)s,
            coalesce(%(created_at)s, now()), %(last_attempt_at)s, %(reason)s, 'failed',
            %(namespace)s, %(shard)s, %(dead_letter_id)s)
    ON CONFLICT (id) DO UPDATE SET
        error = EXCLUDED.error,
        attempts = f.attempts + EXCLUDED.attempts,
        last_attempt_at = coalesce(EXCLUDED.last_attempt_at, f.last_attempt_at),
        reason = EXCLUDED.reason,
        status = 'failed',
        message_sid = NULL,
        resolved_at = NULL,
        dead_letter_id = EXCLUDED.dead_letter_id,
        shard = EXCLUDED.shard
    WHERE f.dead_letter_id IS NULL OR {newer}
    RETURNING id
""").format(newer=_newer("EXCLUDED.dead_letter_id", "f.dead_letter_id"))


async def upsert_dead_letter(
    conn: Connection, letter: DeadLetter, namespace: str, shard: int
) -> list[StreamRef]:
    """Insert or update the row of a dead letter; idempotent per dead-letter entry.

    Only a newer dead-letter entry of the message updates an existing row (its attempts add
    up: they are provider attempts so far), so mirroring an entry twice, or late, changes
    nothing. Returns the dead-letter entries the row no longer refers to. Run in a transaction.
    """
    message_id = uuid.UUID(letter.message_id)
    prev = await _current_ref(conn, message_id)
    reason = _clean(letter.reason)[:64] or DeadLetterReason.INVALID_PAYLOAD.value
    await conn.execute(
        _UPSERT,
        {
            "id": message_id,
            "phone": _clean(letter.phone)[:64],
            "message": _clean(letter.message),
            "error": _clean("; ".join(filter(None, [letter.error, letter.truncation_note])))
            or None,
            "attempts": letter.attempts,
            "created_at": _when(letter.created_at),
            "last_attempt_at": _when(letter.last_attempt_at),
            "reason": reason,
            "namespace": namespace,
            "shard": shard,
            "dead_letter_id": letter.stream_id,
        },
    )
    return await _superseded(conn, message_id, [prev, StreamRef(shard, letter.stream_id)])


async def apply_outcome(conn: Connection, outcome: Outcome) -> list[StreamRef]:
    """Resolve the record of a replayed message that was sent. Run in a transaction.

    The outcome may be mirrored before the dead letter it replays (two streams); its
    `replay_of` then becomes the row's dead-letter id, so that late dead letter changes nothing.
    """
    prev = await _current_ref(conn, outcome.message_id)
    await conn.execute(
        sql.SQL("""
        UPDATE public.failed_sms SET status = 'resolved', message_sid = %(sid)s,
            resolved_at = %(at)s, attempts = attempts + %(attempts)s,
            dead_letter_id = CASE WHEN %(replay_of)s::text IS NOT NULL
                AND (dead_letter_id IS NULL OR {newer})
                THEN %(replay_of)s::text ELSE dead_letter_id END
        WHERE id = %(id)s AND status <> 'resolved'
    """).format(newer=_newer("%(replay_of)s::text", "dead_letter_id")),
        {
            "id": outcome.message_id,
            "sid": _clean(outcome.message_sid),
            "at": outcome.resolved_at,
            "replay_of": outcome.replay_of,
            "attempts": outcome.attempts,
        },
    )
    return await _superseded(conn, outcome.message_id, [prev])


async def record_undelivered(
    conn: Connection,
    namespace: str,
    *,
    message_id: uuid.UUID,
    phone: str,
    body: str,
    message_sid: str,
    error: str,
    attempts: int,
    sent_at: datetime,
    shard: int,
) -> None:
    """A message the provider accepted and then could not deliver: a `failed` record with
    reason `undelivered` and its SID (a retry sends a new SMS). Run in a transaction."""
    await conn.execute(
        """
        INSERT INTO public.failed_sms AS f
            (id, phone, message, error, attempts, created_at, last_attempt_at, reason, status,
             message_sid, namespace, shard)
        VALUES (%(id)s, %(phone)s, %(message)s, %(error)s, %(attempts)s, %(sent_at)s,
                %(sent_at)s, 'undelivered', 'failed', %(sid)s, %(namespace)s, %(shard)s)
        ON CONFLICT (id) DO UPDATE SET
            error = EXCLUDED.error, reason = 'undelivered', status = 'failed',
            message_sid = EXCLUDED.message_sid, resolved_at = NULL,
            message = CASE WHEN EXCLUDED.message <> '' THEN EXCLUDED.message ELSE f.message END,
            last_attempt_at = EXCLUDED.last_attempt_at
        """,
        {
            "id": message_id,
            "phone": _clean(phone)[:64],
            "message": _clean(body),
            "error": _clean(error),
            "attempts": attempts,
            "sent_at": sent_at,
            "sid": message_sid,
            "namespace": namespace,
            "shard": shard,
        },
    )


async def mark_resolved(
    conn: Connection, message_id: uuid.UUID, message_sid: str, *, sent_now: bool
) -> FailedSmsRecord | None:
    """After a successful "retry now"; `sent_now` counts the attempt (False: sent earlier).

    The last error stays, as it does when a replay resolves: it says why the SMS had failed.
    """
    cur = await conn.execute(
        _returning("""
        UPDATE public.failed_sms SET status = 'resolved', message_sid = %(sid)s,
            resolved_at = now(), attempts = attempts + %(n)s,
            last_attempt_at = CASE WHEN %(n)s > 0 THEN now() ELSE last_attempt_at END
        WHERE id = %(id)s"""),
        {"id": message_id, "sid": message_sid, "n": int(sent_now)},
    )
    row = await cur.fetchone()
    return _record(row) if row else None


async def record_retry_failure(
    conn: Connection, message_id: uuid.UUID, error: str
) -> FailedSmsRecord | None:
    cur = await conn.execute(
        _returning("""
        UPDATE public.failed_sms SET attempts = attempts + 1, error = %(error)s,
            last_attempt_at = now()
        WHERE id = %(id)s AND status <> 'resolved'"""),
        {"id": message_id, "error": error},
    )
    row = await cur.fetchone()
    return _record(row) if row else None


async def mark_replayed(
    conn: Connection,
    namespace: str,
    *,
    ids: list[uuid.UUID] | None = None,
    reason: str | None = None,
    limit: int = 100,
) -> list[FailedSmsRecord]:
    """Claim records for a replay, oldest first; returns those now `replayed`.

    By ids, a record already `replayed` is taken again (its replay may have been cut short by
    a restart; the replay's idempotency key keeps a finished one from being queued twice).
    By reason, only `failed` records. Invalid payloads are never replayed: they cannot parse.
    """
    if ids is not None:
        pick = sql.SQL("id = ANY(%(ids)s) AND status IN ('failed', 'replayed')")
    else:
        pick = sql.SQL("reason = %(reason)s AND status = 'failed'")
    cur = await conn.execute(
        _returning(
            sql.SQL("""
        UPDATE public.failed_sms SET status = 'replayed'
        WHERE id IN (SELECT id FROM public.failed_sms
                     WHERE namespace = %(namespace)s AND {pick}
                         AND reason <> 'invalid_payload'
                     ORDER BY created_at, id LIMIT %(limit)s FOR UPDATE SKIP LOCKED)
    """).format(pick=pick)
        ),
        {"namespace": namespace, "ids": ids, "reason": reason, "limit": limit},
    )
    rows = await cur.fetchall()
    return sorted((_record(r) for r in rows), key=lambda r: (r.created_at, str(r.id)))


async def revert_replayed(conn: Connection, ids: list[uuid.UUID]) -> int:
    """Records whose replay was never queued go back to `failed`."""
    cur = await conn.execute(
        "UPDATE public.failed_sms SET status = 'failed' WHERE id = ANY(%s) AND status = 'replayed'",
        [ids],
    )
    return cur.rowcount


async def delete_record(
    conn: Connection, namespace: str, message_id: uuid.UUID
) -> FailedSmsRecord | None:
    cur = await conn.execute(
        _returning("DELETE FROM public.failed_sms WHERE id = %s AND namespace = %s"),
        [message_id, namespace],
    )
    row = await cur.fetchone()
    return _record(row) if row else None


async def counts_by_status(conn: Connection, namespace: str) -> dict[str, int]:
    """Every status, zero included."""
    cur = await conn.execute(
        "SELECT status, count(*) AS n FROM public.failed_sms WHERE namespace = %s GROUP BY status",
        [namespace],
    )
    counts = {status.value: 0 for status in RecordStatus}
    for row in await cur.fetchall():
        counts[str(row["status"])] = int(row["n"])
    return counts


def _returning(query: str | sql.Composable) -> sql.Composed:
    base = sql.SQL(query) if isinstance(query, str) else query
    return base + sql.SQL(" RETURNING ") + sql.SQL(", ").join(sql.Identifier(c) for c in COLUMNS)
