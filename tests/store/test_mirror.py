"""The mirror against real Redis and Postgres: upsert, acknowledge, reclaim, survive."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from smsrelay.settings import Settings
from smsrelay.store import failed_sms as fs
from smsrelay.store.db import Database
from smsrelay.store.mirror import Mirror, run_mirror
from smsrelay.streams.keys import MIRROR_GROUP, ShardKeys
from tests.conftest import make_settings
from tests.store.dlq import add_dead_letter, mirror_now, unique_phone
from tests.support.worker import entries


@pytest.fixture
def mirror_settings(redis_url: str, namespace: str, tmp_path: Path, database_url: str) -> Settings:
    return make_settings(
        redis_url,
        namespace,
        tmp_path,
        "http://127.0.0.1:9",
        database_url=database_url,
        claim_idle_seconds=0.2,
    )


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    redis_client = aioredis.Redis.from_url(redis_url)
    yield redis_client
    await redis_client.aclose()


async def record(settings: Settings, message_id: str) -> Any:
    async with Database(settings.database_url).connection() as conn:
        return await fs.get_record(conn, settings.namespace, uuid.UUID(message_id))


async def test_dead_letters_become_rows_and_stay_in_their_stream(
    mirror_settings: Settings, client: aioredis.Redis
) -> None:
    # Given two dead letters
    keys = ShardKeys(mirror_settings.namespace)
    first, first_entry = await add_dead_letter(client, mirror_settings)
    second, _ = await add_dead_letter(
        client, mirror_settings, reason="rate_limited", attempts=0, error="Rate limit exceeded"
    )
    # When the mirror runs
    assert await mirror_now(mirror_settings) == 2
    # Then both are rows, acknowledged, and still in the dead-letter stream
    one, two = await record(mirror_settings, first), await record(mirror_settings, second)
    assert (one.status, one.dead_letter_id, one.shard) == ("failed", first_entry, 0)
    assert (two.reason, two.attempts, two.error) == ("rate_limited", 0, "Rate limit exceeded")
    assert await client.xlen(keys.dead) == 2
    pending = await client.xpending(keys.dead, MIRROR_GROUP)
    assert pending["pending"] == 0
    # and running again finds nothing new
    assert await mirror_now(mirror_settings) == 0


async def test_outcome_resolves_the_row_and_leaves_its_stream(
    mirror_settings: Settings, client: aioredis.Redis
) -> None:
    keys = ShardKeys(mirror_settings.namespace)
    message_id, entry_id = await add_dead_letter(client, mirror_settings)
    await mirror_now(mirror_settings)
    # When the worker reports a replay of it as sent
    await client.xadd(
        keys.outcomes,
        {
            "id": message_id,
            "status": "resolved",
            "message_sid": "SMabc",
            "replay_of": entry_id,
            "resolved_at": "2026-01-02T03:04:05.678Z",
        },
    )
    await mirror_now(mirror_settings)
    # Then the record is resolved and the outcome entry is gone
    row = await record(mirror_settings, message_id)
    assert (row.status, row.message_sid) == ("resolved", "SMabc")
    assert row.resolved_at.isoformat().startswith("2026-01-02T03:04:05.678")
    assert await client.xlen(keys.outcomes) == 0


async def test_a_redead_lettered_replay_replaces_its_older_entry(
    mirror_settings: Settings, client: aioredis.Redis
) -> None:
    keys = ShardKeys(mirror_settings.namespace)
    phone = unique_phone()
    message_id, old_entry = await add_dead_letter(client, mirror_settings, phone=phone)
    await mirror_now(mirror_settings)
    # When the same message is dead-lettered again (its replay failed)
    _, new_entry = await add_dead_letter(
        client, mirror_settings, phone=phone, message_id=message_id, attempts=2
    )
    await mirror_now(mirror_settings)
    # Then the row points at the new entry, attempts add up, the old entry is deleted
    row = await record(mirror_settings, message_id)
    assert (row.dead_letter_id, row.attempts, row.status) == (new_entry, 3, "failed")
    assert [e for e, _ in entries(await client.xrange(keys.dead))] == [new_entry.encode()]
    assert old_entry != new_entry


async def test_entries_of_a_dead_mirror_are_claimed(
    mirror_settings: Settings, client: aioredis.Redis
) -> None:
    # Given a mirror that read an entry and died before writing it
    keys = ShardKeys(mirror_settings.namespace)
    message_id, _ = await add_dead_letter(client, mirror_settings)
    crashed = Mirror(mirror_settings, name="crashed")
    await crashed.group(client).ensure()
    await client.xreadgroup(MIRROR_GROUP, "crashed", {keys.dead: ">"}, count=10)
    assert await record(mirror_settings, message_id) is None
    # When another mirror runs after the claim idle time
    await asyncio.sleep(0.3)
    assert await mirror_now(mirror_settings) == 1
    # Then it took the entry over and mirrored it
    assert (await record(mirror_settings, message_id)).status == "failed"
    assert (await client.xpending(keys.dead, MIRROR_GROUP))["pending"] == 0


async def test_junk_does_not_block_the_entries_behind_it(
    mirror_settings: Settings, client: aioredis.Redis
) -> None:
    keys = ShardKeys(mirror_settings.namespace)
    await client.xadd(keys.dead, {b"\xff": b"\x00\xfe", b"reason": b"invalid_payload"})
    await client.xadd(keys.outcomes, {"status": "resolved", "id": "not-a-uuid"})
    good, _ = await add_dead_letter(client, mirror_settings)
    assert await mirror_now(mirror_settings) == 3
    assert (await record(mirror_settings, good)).status == "failed"
    assert (await client.xpending(keys.dead, MIRROR_GROUP))["pending"] == 0


async def test_run_mirror_waits_out_a_missing_postgres_and_stops_promptly(
    redis_url: str, namespace: str, tmp_path: Path, client: aioredis.Redis
) -> None:
    # Given Postgres nowhere to be found
    settings = make_settings(
        redis_url,
        namespace,
        tmp_path,
        "http://127.0.0.1:9",
        database_url="postgresql://postgres@127.0.0.1:1/postgres",
    )
    await add_dead_letter(client, settings)
    stop = asyncio.Event()
    task = asyncio.create_task(run_mirror(settings, stop))
    # When it has been failing for a while
    await asyncio.sleep(1.0)
    assert not task.done()
    # Then the entry waits, unacknowledged, and a stop request is honoured at once
    pending = await client.xpending(ShardKeys(namespace).dead, MIRROR_GROUP)
    assert pending["pending"] == 1
    started = time.monotonic()
    stop.set()
    await asyncio.wait_for(task, timeout=5)
    assert time.monotonic() - started < 1.5
