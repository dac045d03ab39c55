"""POST /api/admin/retry-failed-sms: one attempt now, through the worker's sending code."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import redis.asyncio as aioredis

from smsrelay.settings import Settings
from smsrelay.streams.keys import ShardKeys
from tests.admin.conftest import LIST, admin_client, get_record, seed
from tests.admin.test_http_errors import assert_error


async def test_retry_sends_and_resolves(
    api: httpx.AsyncClient, admin_settings: Settings, rclient: aioredis.Redis, fake_twilio: Any
) -> None:
    # Given a failed record
    message_id, _, phone = await seed(admin_settings, rclient, attempts=1)
    # When retried
    response = await api.post(LIST, json={"id": message_id})
    # Then Twilio got one SMS, the caller its SID, and the record is resolved
    assert response.status_code == 200, response.text
    [sent] = fake_twilio.messages_to(phone)
    assert response.json() == {
        "success": True,
        "message": "SMS retry successful",
        "messageSid": sent.sid,
    }
    assert sent.body == "Hi, your booking is in"
    record = await get_record(api, phone)
    assert (record["status"], record["messageSid"], record["attempts"]) == ("resolved", sent.sid, 2)
    assert record["resolvedAt"] is not None
    # and the worker's sent marker is written, so a later copy is never sent again
    keys = ShardKeys(admin_settings.namespace)
    assert await rclient.get(keys.sent(message_id)) == sent.sid.encode()
    # and a second retry is a conflict
    assert_error(await api.post(LIST, json={"id": message_id}), 409, "already resolved")


async def test_unknown_id_is_404(api: httpx.AsyncClient) -> None:
    assert_error(await api.post(LIST, json={"id": str(uuid.uuid4())}), 404, "no failed SMS")


async def test_rate_limited_is_429_then_force_sends(
    redis_url: str, admin_settings: Settings, rclient: aioredis.Redis, fake_twilio: Any
) -> None:
    settings = admin_settings.model_copy(update={"rate_limit_max": 1})
    message_id, _, phone = await seed(settings, rclient, reason="rate_limited", attempts=0)
    # Given the phone's window is full (another message took the only slot just now)
    await rclient.zadd(
        ShardKeys(settings.namespace).rate_limit(phone),
        {"other-message": (await rclient.time())[0] * 1000},
    )
    async with admin_client(settings) as api:
        # When retried without force: 429 with the wait, and nothing sent
        response = await api.post(LIST, json={"id": message_id})
        assert_error(response, 429, "rate limit")
        retry_after = response.json()["retryAfter"]
        assert 3500 <= retry_after <= 3600
        assert response.headers["Retry-After"] == str(retry_after)
        assert fake_twilio.messages_to(phone) == []
        assert (await get_record(api, phone))["status"] == "failed"
        # When forced: sent
        response = await api.post(LIST, json={"id": message_id, "force": True})
        assert response.status_code == 200, response.text
    assert len(fake_twilio.messages_to(phone)) == 1


async def test_provider_failure_is_502_and_recorded(
    api: httpx.AsyncClient, admin_settings: Settings, rclient: aioredis.Redis, fake_twilio: Any
) -> None:
    message_id, _, phone = await seed(admin_settings, rclient, attempts=3)
    before = await get_record(api, phone)
    fake_twilio.script(phone, [{"status": 400, "code": 21610}])
    # When the provider refuses
    response = await api.post(LIST, json={"id": message_id})
    # Then 502 naming Twilio's error, and the record counts the attempt
    assert_error(response, 502, "21610")
    record = await get_record(api, phone)
    assert record["status"] == "failed"
    assert record["attempts"] == 4
    assert "21610" in record["error"]
    assert record["lastAttemptAt"] > before["lastAttemptAt"]
    # and a retry after the provider recovers succeeds
    assert (await api.post(LIST, json={"id": message_id})).status_code == 200


async def test_two_concurrent_retries_send_one_sms(
    api: httpx.AsyncClient, admin_settings: Settings, rclient: aioredis.Redis, fake_twilio: Any
) -> None:
    message_id, _, phone = await seed(admin_settings, rclient)
    fake_twilio.script(phone, [{"delay": 0.3}])  # the first send takes a while
    # When two operators click "retry" at once
    first, second = await asyncio.gather(
        api.post(LIST, json={"id": message_id}), api.post(LIST, json={"id": message_id})
    )
    # Then one SMS went out: one 200, one 409
    assert sorted([first.status_code, second.status_code]) == [200, 409]
    assert len(fake_twilio.messages_to(phone)) == 1


async def test_a_message_sent_earlier_is_resolved_without_a_second_sms(
    api: httpx.AsyncClient, admin_settings: Settings, rclient: aioredis.Redis, fake_twilio: Any
) -> None:
    # Given a record whose message did go out (its sent marker exists)
    message_id, _, phone = await seed(admin_settings, rclient)
    await rclient.set(ShardKeys(admin_settings.namespace).sent(message_id), "SMearlier")
    # When retried, then it is resolved with that SID and nothing is sent
    response = await api.post(LIST, json={"id": message_id})
    assert response.json()["messageSid"] == "SMearlier"
    assert fake_twilio.messages_to(phone) == []


async def test_replayed_and_unsendable_records_are_conflicts(
    api: httpx.AsyncClient, admin_settings: Settings, rclient: aioredis.Redis
) -> None:
    message_id, _, _ = await seed(admin_settings, rclient)
    await api.post("/api/admin/dead-letters/replay", json={"ids": [message_id]})
    assert_error(await api.post(LIST, json={"id": message_id}), 409, "replay")
    junk, _, _ = await seed(admin_settings, rclient, phone="+1415", reason="invalid_payload")
    assert_error(await api.post(LIST, json={"id": junk}), 409, "cannot be sent")


async def test_without_twilio_settings_retry_is_503(
    admin_settings: Settings, rclient: aioredis.Redis
) -> None:
    settings = admin_settings.model_copy(update={"twilio_account_sid": None})
    message_id, _, _ = await seed(settings, rclient)
    async with admin_client(settings) as api:
        assert_error(await api.post(LIST, json={"id": message_id}), 503, "TWILIO_ACCOUNT_SID")
        # the rest of the service works
        assert (await api.get(LIST)).status_code == 200
