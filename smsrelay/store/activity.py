"""Sends and failures per minute, for the console's overview (read-only).

Sends are `sent_sms` rows by `sent_at` (the provider accepted the message; the mirror writes
them in batches, so the current minute fills in a moment late). Failures are `failed_sms`
records by the moment they last failed: a record counts once, in one minute, however often
it failed before (the table keeps a record's latest state, not each failure).

When a record last failed, from what the row holds:
- its dead-letter entry's id: a Redis stream id is the Redis server's time in ms at the XADD
  (deadletter.lua adds with `*`), the exact moment of the dead letter;
- `last_attempt_at`, when later (an admin's retry that failed), unless that attempt is the one
  that resolved it (`mark_resolved` writes `resolved_at` and `last_attempt_at` together);
- otherwise `last_attempt_at` or `created_at` (an undelivered receipt's record: the send).

Postgres keeps that moment in the generated, indexed column `failed_sms.failed_at`
(migration 5), so a refresh reads the window's records only, however many the table holds.

Minutes are those of the Postgres server's clock, the clock `sent_at` and the stream ids
are compared with; the last one is the current, partial minute.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from smsrelay.store.db import Connection

DEFAULT_MINUTES = 15
MAX_MINUTES = 24 * 60

# `failed_sms.failed_at` is the moment a record last failed (see the module's docstring),
# a column Postgres generates (migration 5) and indexes with the namespace.
PER_MINUTE_QUERY = """
    WITH minutes AS (
        SELECT generate_series(
            date_trunc('minute', now()) - make_interval(mins => %(minutes)s - 1),
            date_trunc('minute', now()),
            interval '1 minute') AS minute
    ), sent AS (
        SELECT date_trunc('minute', s.sent_at) AS minute, count(*) AS n
        FROM public.sent_sms s
        WHERE s.namespace = %(namespace)s
          AND s.sent_at >= date_trunc('minute', now()) - make_interval(mins => %(minutes)s - 1)
        GROUP BY 1
    ), failed AS (
        SELECT date_trunc('minute', f.failed_at) AS minute, count(*) AS n
        FROM public.failed_sms f
        WHERE f.namespace = %(namespace)s
          AND f.failed_at >= date_trunc('minute', now()) - make_interval(mins => %(minutes)s - 1)
        GROUP BY 1
    )
    SELECT m.minute, coalesce(sent.n, 0) AS sent, coalesce(failed.n, 0) AS failed
    FROM minutes m
    LEFT JOIN sent ON sent.minute = m.minute
    LEFT JOIN failed ON failed.minute = m.minute
    ORDER BY m.minute
"""


@dataclass(frozen=True)
class Minute:
    start: datetime  # the minute's first instant (UTC-aware)
    sent: int
    failed: int


async def per_minute(
    conn: Connection, namespace: str, minutes: int = DEFAULT_MINUTES
) -> list[Minute]:
    """The last `minutes` minutes, oldest first, every minute present (zeros included); the
    last one is the current minute so far."""
    if not 1 <= minutes <= MAX_MINUTES:
        raise ValueError(f"minutes: must be 1-{MAX_MINUTES} (got {minutes})")
    cur = await conn.execute(PER_MINUTE_QUERY, {"namespace": namespace, "minutes": minutes})
    return [
        Minute(row["minute"], int(row["sent"]), int(row["failed"])) for row in await cur.fetchall()
    ]
