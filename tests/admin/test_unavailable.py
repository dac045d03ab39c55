"""Postgres or Redis away: 503 with a clear error, /readyz says so, /healthz does not care."""

from __future__ import annotations

import uuid

import redis.asyncio as aioredis

from smsrelay.settings import Settings
from smsrelay.streams.keys import ShardKeys
from tests.admin.conftest import LIST, REPLAY, admin_client, get_record, seed
from tests.admin.test_http_errors import assert_error
from tests.support.worker import entries

NOWHERE_PG = "postgresql://postgres@127.0.0.1:1/postgres"
NOWHERE_REDIS = "redis://127.0.0.1:1/0"


async def test_postgres_down_is_503_database_unavailable(admin_settings: Settings) -> None:
    settings = admin_settings.model_copy(update={"database_url": NOWHERE_PG})
    some_id = str(uuid.uuid4())
    # The app still starts (it migrates once Postgres is back)
    async with admin_client(settings) as api:
        for response in (
            await api.get(LIST),
            await api.post(LIST, json={"id": some_id}),
            await api.delete(LIST, params={"id": some_id}),
            await api.post(REPLAY, json={"ids": [some_id]}),
        ):
            assert_error(response, 503, "database unavailable")
            assert response.json()["service"] == "postgres"
        ready = await api.get("/readyz")
        assert ready.status_code == 503
        assert ready.json() == {"status": "unavailable", "redis": "ok", "postgres": "unavailable"}
        assert (await api.get("/healthz")).status_code == 200
        # bad input is still told apart from an outage
        assert_error(await api.get(LIST, params={"limit": 0}), 400, "limit")


async def test_redis_down_is_503_for_what_needs_redis(
    admin_settings: Settings, rclient: aioredis.Redis
) -> None:
    message_id, entry_id, phone = await seed(admin_settings, rclient)
    settings = admin_settings.model_copy(update={"redis_url": NOWHERE_REDIS})
    async with admin_client(settings) as api:
        # Listing reads Postgres only: it works
        assert (await api.get(LIST, params={"phone": phone})).json()["data"][0]["id"] == (
            message_id
        )
        # Retry and delete need Redis: 503, and the row is kept (delete is all or nothing)
        for response in (
            await api.post(LIST, json={"id": message_id}),
            await api.delete(LIST, params={"id": message_id}),
        ):
            assert_error(response, 503, "database unavailable")
            assert response.json()["service"] == "redis"
        assert (await get_record(api, phone))["status"] == "failed"
        ready = await api.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["redis"].startswith("unavailable")
        assert ready.json()["postgres"] == "ok"
    # and the dead-letter entry is still there
    assert [
        e.decode()
        for e, _ in entries(await rclient.xrange(ShardKeys(admin_settings.namespace).dead))
    ] == [entry_id]
