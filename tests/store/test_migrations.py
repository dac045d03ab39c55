"""Migrations: versioned, idempotent, safe when several processes run them at once."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from smsrelay.store.db import Database
from smsrelay.store.migrations import LATEST_VERSION, MIGRATIONS, current_version, migrate


@pytest.fixture
def fresh_url(postgres_url: str) -> Iterator[str]:
    """An empty database of its own (the session's one is migrated by other tests)."""
    name = f"smsrelay_mig_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield postgres_url.rpartition("/")[0] + f"/{name}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _columns(url: str) -> dict[str, str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT column_name, is_nullable FROM information_schema.columns "
            "WHERE table_schema = 'public' AND table_name = 'failed_sms'"
        )
        return {name: nullable for name, nullable in rows}


def _indexes(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'failed_sms'")
        return {name for (name,) in rows}


async def test_migrate_applies_each_version_once(fresh_url: str) -> None:
    # Given an empty database
    db = Database(fresh_url, auto_migrate=False)
    async with db.connection() as conn:
        # When migrating twice
        first = await migrate(conn)
        second = await migrate(conn)
        version = await current_version(conn)
    # Then every version is applied by the first run only, and recorded
    assert first == [m.version for m in MIGRATIONS]
    assert second == []
    assert version == LATEST_VERSION
    # and the table has the contract's columns, ours, and the list's indexes
    columns = _columns(fresh_url)
    assert set(columns) == {
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
    }
    assert {c for c, nullable in columns.items() if nullable == "YES"} == {
        "error",
        "last_attempt_at",
        "message_sid",
        "resolved_at",
        "dead_letter_id",
    }
    assert {
        "failed_sms_created_at_idx",
        "failed_sms_status_idx",
        "failed_sms_reason_idx",
        "failed_sms_phone_idx",
    } <= _indexes(fresh_url)


async def test_concurrent_migrations_apply_once_without_errors(fresh_url: str) -> None:
    # Given eight processes' worth of connections starting at the same moment
    async def run() -> list[int]:
        async with Database(fresh_url, auto_migrate=False).connection() as conn:
            return await migrate(conn)

    # When they all migrate at once
    results = await asyncio.gather(*[run() for _ in range(8)])
    # Then exactly one applied the migrations and none failed
    assert sorted(results, key=len) == [[]] * 7 + [[m.version for m in MIGRATIONS]]


async def test_the_seed_table_is_adopted(fresh_url: str) -> None:
    # Given the seed's FailedSMS table with a row in it
    with psycopg.connect(fresh_url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE public.failed_sms (id uuid PRIMARY KEY, phone text NOT NULL, "
            "message text NOT NULL, error text NULL, attempts int NOT NULL DEFAULT 0, "
            "created_at timestamptz NOT NULL DEFAULT now(), "
            "last_attempt_at timestamptz NULL)"
        )
        conn.execute(
            "INSERT INTO public.failed_sms (id, phone, message, error, attempts) "
            "VALUES (%s, '+18761234567', 'hi', 'boom', 3)",
            [uuid.uuid4()],
        )
    # When the database is first used
    await Database(fresh_url).ping()
    # Then the row is kept, with the new columns filled in
    with psycopg.connect(fresh_url) as conn:
        row = conn.execute("SELECT status, reason, attempts FROM public.failed_sms").fetchone()
    assert row == ("failed", "retries_exhausted", 3)


async def test_unreachable_postgres_is_one_clear_line() -> None:
    # Given a port where nothing listens
    db = Database("postgresql://postgres@127.0.0.1:1/postgres")
    # When connecting, then the error names the server and the cause
    with pytest.raises(
        Exception,
        match=r"^Postgres unreachable at 127\.0\.0\.1:1/postgres "
        r"\(connection refused\)$",
    ):
        await db.ping()
