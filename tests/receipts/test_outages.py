"""Receipts through outages: with Postgres down the admin still answers Twilio 2xx (the
callbacks wait in Redis) and the mirror applies them once Postgres is back; with Redis down
the admin applies a callback to Postgres itself (Twilio would not post it again after an
error answer); only with both down is a callback refused (503)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
import redis.asyncio as aioredis
from structlog.testing import capture_logs

from smsrelay.consumers.providers.twilio import TwilioProvider
from smsrelay.settings import Settings
from smsrelay.store.mirror import Mirror
from smsrelay.streams.keys import MIRROR_GROUP, FleetKeys
from smsrelay.testing.fake_twilio import FakeTwilioThread, Receipts
from tests.admin.conftest import LIST, admin_client
from tests.receipts.conftest import (
    admin_http,
    answers,
    callback_form,
    mirror,
    post_callback,
    read_sent,
    receipts_waiting,
    send_all,
    serve_admin,
    sid_of,
)
from tests.store.dlq import unique_phone
from tests.support.servers import PrivateRedis, ThrowawayPostgres
from tests.support.wait import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


async def test_callbacks_while_postgres_is_down_are_answered_and_applied_later(
    receipt_settings: Settings,
    admin_port: int,
    fake_twilio: FakeTwilioThread,
    throwaway_postgres: ThrowawayPostgres,
    rclient: aioredis.Redis,
) -> None:
    settings = receipt_settings.model_copy(update={"database_url": throwaway_postgres.url})
    delivered, undelivered = unique_phone(), unique_phone()
    fake_twilio.script_receipts(undelivered, Receipts.ending("undelivered", 30003))
    with serve_admin(settings, admin_port) as admin:
        throwaway_postgres.stop("immediate")
        ids = await send_all(settings, fake_twilio, [delivered, undelivered])
        # Every callback was answered 2xx, with nothing to write them to but Redis
        for phone in (delivered, undelivered):
            assert answers(fake_twilio.callbacks(to=phone)) == [204, 204]
        assert await receipts_waiting(rclient, settings) == 4
        # A mirror waits the outage out, and applies them once Postgres is back
        provider = TwilioProvider(settings)
        stop = asyncio.Event()
        task = asyncio.create_task(
            Mirror(settings, name="outage-mirror", fetch_body=provider.fetch_body).run(stop)
        )
        try:
            receipts = FleetKeys(settings.namespace).receipts

            async def read_but_not_written() -> bool:
                try:
                    pending = await rclient.xpending(receipts, MIRROR_GROUP)
                except aioredis.ResponseError:  # (its group is not there yet)
                    return False
                return int(pending["pending"]) == 4

            await wait_until(read_but_not_written, 20, what="the mirror to read the receipts")
            assert not task.done() and await receipts_waiting(rclient, settings) == 4
            throwaway_postgres.start()

            async def applied() -> bool:
                with contextlib.suppress(Exception):
                    rows = [await read_sent(settings, m) for m in ids]
                    return [r.delivery_status if r else None for r in rows] == [
                        "delivered",
                        "undelivered",
                    ]
                return False

            await wait_until(applied, 30, interval=0.2, what="the receipts applied")
        finally:
            stop.set()
            await asyncio.wait_for(task, 20)
            await provider.aclose()
        assert await receipts_waiting(rclient, settings) == 0
        async with admin_http(admin) as http:
            [record] = (await http.get(LIST, params={"phone": undelivered})).json()["data"]
            traces = [(await http.get(f"/api/admin/messages/{m}")).json()["data"] for m in ids]
    assert record["error"] == "Twilio error 30003: Unreachable destination handset"
    assert record["messageSid"] == sid_of(fake_twilio, undelivered)
    assert [t["status"] for t in traces] == ["delivered", "undelivered"]


async def test_with_redis_down_too_a_callback_is_503(
    receipt_settings: Settings,
    private_redis: PrivateRedis,
    throwaway_postgres: ThrowawayPostgres,
) -> None:
    settings = receipt_settings.model_copy(
        update={"redis_url": private_redis.url, "database_url": throwaway_postgres.url}
    )
    form = callback_form("SM" + "0" * 32, "delivered")
    async with admin_client(settings, headers={}) as http:
        throwaway_postgres.stop("immediate")
        assert (
            await post_callback(http, form, signed_for=None, settings=settings)
        ).status_code == 204
        private_redis.kill()
        refused = await post_callback(http, form, signed_for=None, settings=settings)
        # (a forged one is still 403: the signature is checked before Redis is needed)
        forged = await post_callback(http, form, signed_for="", settings=settings)
    assert refused.status_code == 503, refused.text
    assert refused.json() == {
        "success": False,
        "error": "database unavailable",
        "service": "redis",
    }
    assert forged.status_code == 403


async def test_with_redis_down_a_callback_is_applied_in_postgres_at_once(
    receipt_settings: Settings,
    fake_twilio: FakeTwilioThread,
    private_redis: PrivateRedis,
) -> None:
    # Given a message sent and mirrored into sent_sms (no admin listened for its callbacks)
    settings = receipt_settings.model_copy(update={"redis_url": private_redis.url})
    phone = unique_phone()
    [message_id] = await send_all(settings, fake_twilio, [phone])
    assert await mirror(settings) >= 1
    sid = sid_of(fake_twilio, phone)
    async with admin_client(settings) as http:
        # When Redis dies and Twilio reports the message undelivered
        private_redis.kill()
        form = callback_form(sid, "undelivered", 30003)
        with capture_logs() as logs:
            answer = await post_callback(http, form, signed_for=None, settings=settings)
            # Then Twilio hears 204 and Postgres has the verdict: sent_sms and a failed_sms record
            assert answer.status_code == 204, answer.text
            [record] = (await http.get(LIST, params={"phone": phone})).json()["data"]
            # and a repeat of the same callback changes nothing
            again = await post_callback(http, form, signed_for=None, settings=settings)
            assert again.status_code == 204, again.text
            total = (await http.get(LIST, params={"phone": phone})).json()["pagination"]["total"]
            assert total == 1
            # and once Redis is back, the message's trace tells the verdict its events lack
            private_redis.start()
            trace = (await http.get(f"/api/admin/messages/{message_id}")).json()["data"]
            # and the next receipt goes to Redis again; the next outage is said again, once
            other = callback_form("SM" + "1" * 32, "delivered")
            assert (await post_callback(http, other, signed_for=None, settings=settings)).is_success
            private_redis.kill()
            assert (await post_callback(http, other, signed_for=None, settings=settings)).is_success
    said = [e["event"] for e in logs if e["event"].startswith("receipts.")]
    assert said == ["receipts.applied_without_redis"] * 2  # one per outage, not per receipt
    assert trace["status"] == "undelivered", trace
    assert [e["event"] for e in trace["events"]][-2:] == ["sent", "undelivered"]
    assert trace["events"][-1]["detail"] == "Twilio error 30003: Unreachable destination handset"
    row = await read_sent(settings, message_id)
    assert row is not None and row.delivery_status == "undelivered"
    assert record["id"] == message_id
    assert record["reason"] == "undelivered"
    assert record["error"] == "Twilio error 30003: Unreachable destination handset"
    assert record["messageSid"] == sid
    assert record["message"] == "Your code is 4815"  # the body, asked of Twilio
