"""One send path (issue 10, defect 1): a worker, an admin's retry, a replay and a delete that
race on one message id exclude each other through the message's one state in Redis."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from smsrelay.outage import Outages
from smsrelay.runner import mirror_upkeep
from smsrelay.settings import Settings
from smsrelay.streams.keys import ShardKeys
from tests.admin.conftest import LIST, REPLAY, get_record, seed
from tests.support.wait import wait_until
from tests.support.worker import running_worker


def _worker(settings: Settings) -> Any:
    return running_worker(settings, upkeep=mirror_upkeep(settings, Outages()))


@pytest.mark.parametrize("run", range(3))
async def test_a_retry_and_a_replay_75_ms_apart_send_one_sms(
    run: int,
    api: httpx.AsyncClient,
    admin_settings: Settings,
    rclient: aioredis.Redis,
    fake_twilio: Any,
) -> None:
    # Given a dead letter, a worker, and a provider that takes 0.3 s to answer
    message_id, _, phone = await seed(admin_settings, rclient)
    fake_twilio.script(phone, [], default={"delay": 0.3})
    async with _worker(admin_settings):
        # When an admin retries it and another replays it 75 ms later
        retry = asyncio.create_task(api.post(LIST, json={"id": message_id}))
        await asyncio.sleep(0.075)
        replay = await api.post(REPLAY, json={"ids": [message_id]})
        retried = await retry
        # Then the provider got one SMS, whatever order the two took
        await wait_until(lambda: _resolved(api, phone), what="the record resolved")
        await asyncio.sleep(0.5)  # a second send, if any, would have reached the fake by now
    assert len(fake_twilio.messages_to(phone)) == 1, (retried.json(), replay.json())
    # and the sent marker and the record hold the same SID, the one Twilio gave
    [sms] = fake_twilio.messages_to(phone)
    marker = await rclient.get(ShardKeys(admin_settings.namespace).sent(message_id))
    assert marker == sms.sid.encode()
    assert (await get_record(api, phone))["messageSid"] == sms.sid


async def _resolved(api: httpx.AsyncClient, phone: str) -> bool:
    return bool((await get_record(api, phone))["status"] == "resolved")


async def test_a_replay_asked_during_a_failing_retry_is_skipped_then_sends_once(
    api: httpx.AsyncClient, admin_settings: Settings, rclient: aioredis.Redis, fake_twilio: Any
) -> None:
    # Given a retry whose send is refused after 0.3 s
    message_id, _, phone = await seed(admin_settings, rclient)
    fake_twilio.script(phone, [{"status": 503, "delay": 0.3}])
    async with _worker(admin_settings):
        retry = asyncio.create_task(api.post(LIST, json={"id": message_id}))
        await asyncio.sleep(0.075)
        # When a replay of it is asked meanwhile, it is skipped: the retry holds the record
        during = await api.post(REPLAY, json={"ids": [message_id]})
        assert during.json() == {"success": True, "queued": 0, "skipped": 1}
        assert (await retry).status_code == 502
        # and a replay asked after the failed retry sends it, once
        after = await api.post(REPLAY, json={"ids": [message_id]})
        assert after.json()["queued"] == 1
        await wait_until(lambda: _resolved(api, phone), timeout=15, what="replay resolved")
    assert len(fake_twilio.messages_to(phone)) == 1
    assert len([r for r in fake_twilio.requests if r.to == phone]) == 2


async def test_a_delete_during_a_retry_is_a_conflict_and_the_send_is_recorded(
    api: httpx.AsyncClient, admin_settings: Settings, rclient: aioredis.Redis, fake_twilio: Any
) -> None:
    message_id, _, phone = await seed(admin_settings, rclient)
    fake_twilio.script(phone, [{"delay": 0.4}])
    # When an admin deletes the record while another's retry is sending it
    retry = asyncio.create_task(api.post(LIST, json={"id": message_id}))
    await asyncio.sleep(0.1)
    deleted = await api.delete(LIST, params={"id": message_id})
    # Then the delete is refused, and the send is on the record
    assert deleted.status_code == 409, deleted.json()
    assert "in progress" in deleted.json()["error"]
    assert (await retry).status_code == 200
    record = await get_record(api, phone)
    assert (record["status"], record["messageSid"]) == (
        "resolved",
        fake_twilio.messages_to(phone)[0].sid,
    )
    # and once it settled, the delete works
    assert (await api.delete(LIST, params={"id": message_id})).status_code == 200


async def test_a_delete_while_a_worker_sends_a_replay_is_a_conflict(
    api: httpx.AsyncClient, admin_settings: Settings, rclient: aioredis.Redis, fake_twilio: Any
) -> None:
    message_id, _, phone = await seed(admin_settings, rclient)
    fake_twilio.script(phone, [{"delay": 0.5}])
    async with _worker(admin_settings):
        await api.post(REPLAY, json={"ids": [message_id]})
        await wait_until(lambda: _requested(fake_twilio, phone), what="the replay's send")
        response = await api.delete(LIST, params={"id": message_id})
        assert response.status_code == 409, response.json()
        await wait_until(lambda: _resolved(api, phone), what="the replay resolved")
    assert len(fake_twilio.messages_to(phone)) == 1


async def _requested(fake_twilio: Any, phone: str) -> bool:
    return any(r.to == phone for r in fake_twilio.requests)


async def test_retry_never_sends_an_invalid_payload_even_forced(
    api: httpx.AsyncClient, admin_settings: Settings, rclient: aioredis.Redis, fake_twilio: Any
) -> None:
    # A dead letter whose entry did not parse, though its `to` and `body` would
    message_id, _, phone = await seed(
        admin_settings, rclient, reason="invalid_payload", error="created_at: invalid datetime"
    )
    response = await api.post(LIST, json={"id": message_id, "force": True})
    assert response.status_code == 409
    assert "invalid_payload" in response.json()["error"]
    assert fake_twilio.messages_to(phone) == []
