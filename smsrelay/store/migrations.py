"""Versioned, idempotent schema migrations, safe when several processes start at once.

Each migration runs once, recorded in `public.schema_migrations`. All of them run in one
transaction under a transaction-level advisory lock: a second process waits for the first,
then finds every version applied and does nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import tuple_row

# "smsrelay" in ASCII: any fixed 64-bit key works, as long as nothing else in the database
# uses the same one.
ADVISORY_LOCK_KEY = 0x736D7372656C6179


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "failed_sms as the seed's FailedSMS model",
        (
            """
        CREATE TABLE IF NOT EXISTS public.failed_sms (
            id              uuid PRIMARY KEY,
            phone           text NOT NULL,
            message         text NOT NULL,
            error           text NULL,
            attempts        integer NOT NULL DEFAULT 0,
            created_at      timestamptz NOT NULL DEFAULT now(),
            last_attempt_at timestamptz NULL
        )
        """,
        ),
    ),
    Migration(
        2,
        "reason, status, provider outcome, dead-letter location; list indexes",
        (
            # Rows the seed wrote failed after its retries (that is the reason to backfill), in
            # the default namespace. `namespace`, `dead_letter_id` and `shard` locate a row's
            # dead-letter entry in Redis; they also keep pipelines that share one database apart.
            """
        ALTER TABLE public.failed_sms
            ADD COLUMN IF NOT EXISTS namespace text NOT NULL DEFAULT 'smsrelay',
            ADD COLUMN IF NOT EXISTS reason text NOT NULL DEFAULT 'retries_exhausted',
            ADD COLUMN IF NOT EXISTS status text NOT NULL DEFAULT 'failed',
            ADD COLUMN IF NOT EXISTS message_sid text NULL,
            ADD COLUMN IF NOT EXISTS resolved_at timestamptz NULL,
            ADD COLUMN IF NOT EXISTS dead_letter_id text NULL,
            ADD COLUMN IF NOT EXISTS shard integer NOT NULL DEFAULT 0
        """,
            """
        ALTER TABLE public.failed_sms ADD CONSTRAINT failed_sms_status_check
            CHECK (status IN ('failed', 'replayed', 'resolved'))
        """,
            # The list is a namespace's records newest first, optionally filtered by status,
            # reason or phone; `id` breaks ties so that paging is stable.
            """
        CREATE INDEX IF NOT EXISTS failed_sms_created_at_idx
            ON public.failed_sms (namespace, created_at DESC, id DESC)
        """,
            """
        CREATE INDEX IF NOT EXISTS failed_sms_status_idx
            ON public.failed_sms (namespace, status, created_at DESC)
        """,
            """
        CREATE INDEX IF NOT EXISTS failed_sms_reason_idx
            ON public.failed_sms (namespace, reason, created_at DESC)
        """,
            """
        CREATE INDEX IF NOT EXISTS failed_sms_phone_idx
            ON public.failed_sms (namespace, phone, created_at DESC)
        """,
        ),
    ),
    Migration(
        3,
        "admin_audit: who changed what through the API, the CLI or the console",
        (
            # `at` is the moment of the write (clock_timestamp, not the transaction's start: a
            # retry holds its transaction through the provider call). `id` orders entries
            # written within one clock tick; `namespace` keeps pipelines that share one
            # database apart, as in failed_sms.
            """
        CREATE TABLE IF NOT EXISTS public.admin_audit (
            id        bigserial PRIMARY KEY,
            at        timestamptz NOT NULL DEFAULT clock_timestamp(),
            namespace text NOT NULL,
            actor     text NOT NULL,
            action    text NOT NULL,
            target    text NOT NULL,
            outcome   text NOT NULL,
            detail    text NULL
        )
        """,
            """
        CREATE INDEX IF NOT EXISTS admin_audit_at_idx
            ON public.admin_audit (namespace, at DESC, id DESC)
        """,
        ),
    ),
    Migration(
        4,
        "sent_sms: every message the provider accepted, with its delivery receipts",
        (
            # The long-term home of a message's trace (SMSRELAY_SENT_SMS_RETENTION_DAYS).
            # `delivery_status` is the most final status a receipt reported (null until one);
            # no body is kept: an undelivered message's body is fetched from the provider.
            """
        CREATE TABLE IF NOT EXISTS public.sent_sms (
            id              uuid PRIMARY KEY,
            namespace       text NOT NULL,
            phone           text NOT NULL,
            message_sid     text NOT NULL,
            kind            text NULL,
            attempts        integer NOT NULL DEFAULT 1,
            sent_at         timestamptz NOT NULL,
            delivery_status text NULL,
            delivered_at    timestamptz NULL,
            error           text NULL
        )
        """,
            """
        CREATE INDEX IF NOT EXISTS sent_sms_sid_idx ON public.sent_sms (message_sid)
        """,
            """
        CREATE INDEX IF NOT EXISTS sent_sms_phone_idx
            ON public.sent_sms (namespace, phone, sent_at DESC)
        """,
            """
        CREATE INDEX IF NOT EXISTS sent_sms_sent_at_idx ON public.sent_sms (sent_at)
        """,
            # Receipts that arrived before their message's row (two streams, two mirrors):
            # applied when the row comes.
            """
        CREATE TABLE IF NOT EXISTS public.unmatched_receipts (
            message_sid text NOT NULL,
            status      text NOT NULL,
            error_code  integer NULL,
            received_at timestamptz NOT NULL,
            PRIMARY KEY (message_sid, status)
        )
        """,
        ),
    ),
    Migration(
        5,
        "failed_sms.failed_at: when a record last failed, stored and indexed",
        (
            # The moment a record last failed (store/activity.py says why this expression), kept
            # by Postgres itself on every write, so the console's per-minute failures read an
            # index instead of computing it for every record of the namespace. Every function
            # in it is immutable, as a generated column needs. Adding it rewrites the table
            # once, under the migration's lock (CHANGELOG: seconds per million records).
            """
        ALTER TABLE public.failed_sms ADD COLUMN IF NOT EXISTS failed_at timestamptz
            GENERATED ALWAYS AS (
                coalesce(
                    greatest(
                        CASE WHEN dead_letter_id ~ '^[0-9]{1,15}-[0-9]+$'
                             THEN to_timestamp(split_part(dead_letter_id, '-', 1)::bigint / 1000.0)
                        END,
                        CASE WHEN status = 'resolved' AND last_attempt_at = resolved_at THEN NULL
                             ELSE last_attempt_at END),
                    created_at)
            ) STORED
        """,
            """
        CREATE INDEX IF NOT EXISTS failed_sms_failed_at_idx
            ON public.failed_sms (namespace, failed_at)
        """,
        ),
    ),
)

LATEST_VERSION = MIGRATIONS[-1].version


async def migrate(conn: psycopg.AsyncConnection[Any]) -> list[int]:
    """Apply the migrations this database lacks; returns the versions applied now."""
    applied_now: list[int] = []
    async with conn.transaction():
        cur = conn.cursor(row_factory=tuple_row)
        await cur.execute("SELECT pg_advisory_xact_lock(%s)", [ADVISORY_LOCK_KEY])
        await cur.execute("""
            CREATE TABLE IF NOT EXISTS public.schema_migrations (
                version     integer PRIMARY KEY,
                description text NOT NULL,
                applied_at  timestamptz NOT NULL DEFAULT now()
            )""")
        await cur.execute("SELECT version FROM public.schema_migrations")
        done = {int(row[0]) for row in await cur.fetchall()}
        for migration in MIGRATIONS:
            if migration.version in done:
                continue
            for statement in migration.statements:
                await cur.execute(statement)
            await cur.execute(
                "INSERT INTO public.schema_migrations (version, description) VALUES (%s, %s)",
                [migration.version, migration.description],
            )
            applied_now.append(migration.version)
    return applied_now


async def current_version(conn: psycopg.AsyncConnection[Any]) -> int:
    cur = conn.cursor(row_factory=tuple_row)
    await cur.execute("SELECT coalesce(max(version), 0) FROM public.schema_migrations")
    row = await cur.fetchone()
    return int(row[0]) if row else 0
