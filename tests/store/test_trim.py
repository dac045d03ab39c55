"""Dead letters leave Redis after SMSRELAY_DEAD_LETTER_RETENTION_DAYS once mirrored, never
before (issue 10, defect 12); the admin then works from the Postgres record alone."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from smsrelay.settings import Settings
from smsrelay.store.mirror import Mirror
from smsrelay.streams.keys import MIRROR_GROUP, ShardKeys
from tests.admin.conftest import LIST, REPLAY, TOKEN, admin_client, get_record
from tests.conftest import make_settings
from tests.store.dlq import add_dead_letter, mirror_now
from tests.support.wait import wait_until
from tests.support.worker import entries, running_worker


@pytest.fixture
def settings(
    redis_url: str, namespace: str, tmp_path: Path, database_url: str, fake_twilio: Any
) -> Settings:
    return make_settings(
        redis_url,
        namespace,
        tmp_path,
        fake_twilio.url,
        database_url=database_url,
        dead_letter_retention_days=0,
        admin_token=TOKEN,
        replay_rate=100,
    )


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    connection = aioredis.Redis.from_url(redis_url)
    yield connection
    await connection.aclose()


async def test_mirrored_dead_letters_are_trimmed_and_the_rest_stays(
    settings: Settings, client: aioredis.Redis
) -> None:
    dead = ShardKeys(settings.namespace).dead
    for _ in range(3):
        await add_dead_letter(client, settings)
    assert await mirror_now(settings) == 3
    # Given a mirror that read one more and died before writing it (pending), and two more
    # that no mirror has read yet
    crashed = Mirror(settings, name="crashed")
    await crashed.group(client).ensure()
    _, pending_entry = await add_dead_letter(client, settings)
    await client.xreadgroup(MIRROR_GROUP, "crashed", {dead: ">"}, count=1)
    for _ in range(2):
        await add_dead_letter(client, settings)
    # When the retention (0 days) has passed, Then only the three mirrored ones go
    assert await Mirror(settings).trim(client) == 3
    left = [entry_id.decode() for entry_id, _ in entries(await client.xrange(dead))]
    assert len(left) == 3 and left[0] == pending_entry
    assert (await client.xpending(dead, MIRROR_GROUP))["pending"] == 1


async def test_a_long_retention_keeps_everything(
    settings: Settings, client: aioredis.Redis
) -> None:
    kept = settings.model_copy(update={"dead_letter_retention_days": 14})
    await add_dead_letter(client, kept)
    await mirror_now(kept)
    assert await Mirror(kept).trim(client) == 0
    assert await client.xlen(ShardKeys(kept.namespace).dead) == 1


async def test_retry_replay_and_delete_work_from_the_record_alone(
    settings: Settings, client: aioredis.Redis, fake_twilio: Any
) -> None:
    # Given three mirrored dead letters whose stream entries were trimmed
    phones = ["+14155552611", "+14155552612", "+14155552613"]
    ids = [(await add_dead_letter(client, settings, phone=p, body=f"for {p}"))[0] for p in phones]
    await mirror_now(settings)
    assert await Mirror(settings).trim(client) == 3
    assert await client.xlen(ShardKeys(settings.namespace).dead) == 0
    async with admin_client(settings) as api, running_worker(settings):
        # When an admin retries one, replays one and deletes one
        retried = await api.post(LIST, json={"id": ids[0]})
        assert retried.status_code == 200, retried.json()
        assert (await api.post(REPLAY, json={"ids": [ids[1]]})).json()["queued"] == 1
        assert (await api.delete(LIST, params={"id": ids[2]})).status_code == 200

        async def replay_resolved() -> bool:
            return bool((await get_record(api, phones[1]))["status"] == "resolved")

        # (the outcome reaches the record through the mirror)
        await mirror_until(settings, api, replay_resolved)
    # Then each did its job from the Postgres record
    assert [m.body for m in fake_twilio.messages_to(phones[0])] == [f"for {phones[0]}"]
    assert [m.body for m in fake_twilio.messages_to(phones[1])] == [f"for {phones[1]}"]


async def mirror_until(settings: Settings, api: Any, check: Any) -> None:
    async def mirrored() -> bool:
        await mirror_now(settings)
        return bool(await check())

    await wait_until(mirrored, timeout=15, what="the replay's outcome mirrored")
