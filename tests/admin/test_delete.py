"""DELETE /api/admin/retry-failed-sms?id=: the row and its dead-letter entry."""

from __future__ import annotations

import uuid

import httpx
import redis.asyncio as aioredis

from smsrelay.settings import Settings
from smsrelay.streams.keys import ShardKeys
from tests.admin.conftest import LIST, seed
from tests.admin.test_http_errors import assert_error
from tests.support.worker import entries


async def test_delete_removes_the_row_and_the_stream_entry(
    api: httpx.AsyncClient, admin_settings: Settings, rclient: aioredis.Redis
) -> None:
    # Given two records; the other one must survive
    message_id, _, phone = await seed(admin_settings, rclient)
    other_id, other_entry, _ = await seed(admin_settings, rclient)
    dead = ShardKeys(admin_settings.namespace).dead
    # When one is deleted
    response = await api.delete(LIST, params={"id": message_id})
    # Then it is gone from Postgres and from the dead-letter stream
    assert response.status_code == 200, response.text
    assert response.json() == {"success": True, "message": "Failed SMS record deleted"}
    assert (await api.get(LIST, params={"phone": phone})).json()["data"] == []
    assert [e.decode() for e, _ in entries(await rclient.xrange(dead))] == [other_entry]
    # and deleting it again is 404
    assert_error(await api.delete(LIST, params={"id": message_id}), 404, "no failed SMS")
    assert other_id != message_id


async def test_unknown_id_is_404(api: httpx.AsyncClient) -> None:
    assert_error(await api.delete(LIST, params={"id": str(uuid.uuid4())}), 404)
