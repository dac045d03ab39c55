"""What reached the phone: a delivered message's trace and `smsrelay trace`; an undelivered
one's failed_sms record (reason `undelivered`), retried to a new SMS with a new SID whose own
receipts count; the codes that say "never retry this number"."""

from __future__ import annotations

import json

import pytest
import redis.asyncio as aioredis

from smsrelay.settings import Settings
from smsrelay.testing.fake_twilio import FakeTwilioThread, Receipts
from tests.admin.conftest import LIST
from tests.admin.test_cli import smsrelay
from tests.receipts.conftest import (
    admin_http,
    answers,
    forget_trace,
    mirror,
    read_sent,
    send_all,
    sid_of,
    trace_events,
)
from tests.store.dlq import unique_phone

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]


async def test_delivered_shows_in_the_trace_the_api_and_the_cli(
    receipt_settings: Settings,
    fake_twilio: FakeTwilioThread,
    live_admin: str,
    rclient: aioredis.Redis,
) -> None:
    phone = unique_phone()
    [message_id] = await send_all(receipt_settings, fake_twilio, [phone])
    sid = sid_of(fake_twilio, phone)
    # The fake posted `sent` then `delivered`, signed, and the admin took both
    callbacks = fake_twilio.callbacks(sid=sid)
    assert [c.status for c in callbacks] == ["sent", "delivered"]
    assert answers(callbacks) == [204, 204]
    await mirror(receipt_settings)
    # sent_sms has the SID and the delivery
    row = await read_sent(receipt_settings, message_id)
    assert row is not None
    assert (row.message_sid, row.delivery_status, row.error) == (sid, "delivered", None)
    assert row.delivered_at is not None
    # The trace: published, the attempt, sent with its SID, then the receipts
    events = await trace_events(rclient, receipt_settings, phone, message_id)
    assert events == [
        "published|",
        "attempt|1",
        f"sent|{sid}",
        f"receipt_sent|{sid}",
        f"delivered|{sid}",
    ]
    async with admin_http(live_admin) as http:
        response = await http.get(f"/api/admin/messages/{message_id}")
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert (data["status"], data["messageSid"], data["phone"]) == ("delivered", sid, phone)
    assert data["attempts"] == 1 and data["reason"] is None
    assert [e["event"] for e in data["events"]][-1] == "delivered"
    # `smsrelay trace ID` says the same, in words and in the API's JSON
    printed = smsrelay(receipt_settings, "trace", message_id)
    assert printed.returncode == 0, printed.stderr
    assert "Traceback" not in printed.stdout + printed.stderr
    first = printed.stdout.splitlines()[0]
    assert first == f"message {message_id} to {phone}: delivered, SID {sid}, 1 attempt(s)"
    assert printed.stdout.splitlines()[-1].split()[2:] == ["delivered", sid]
    as_json = smsrelay(receipt_settings, "trace", message_id, "--json")
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout)["data"] == data


async def test_undelivered_becomes_a_record_and_a_retry_sends_a_new_sms(
    receipt_settings: Settings,
    fake_twilio: FakeTwilioThread,
    live_admin: str,
    rclient: aioredis.Redis,
) -> None:
    phone = unique_phone()
    fake_twilio.script_receipts(phone, Receipts.ending("undelivered", 30003))
    [message_id] = await send_all(receipt_settings, fake_twilio, [phone])
    first_sid = sid_of(fake_twilio, phone)
    assert answers(fake_twilio.callbacks(sid=first_sid)) == [204, 204]
    await mirror(receipt_settings)
    async with admin_http(live_admin) as http:
        listing = await http.get(LIST, params={"phone": phone})
        [record] = listing.json()["data"]
        assert record["id"] == message_id
        assert (record["reason"], record["status"]) == ("undelivered", "failed")
        assert record["error"] == "Twilio error 30003: Unreachable destination handset"
        assert record["messageSid"] == first_sid
        assert record["message"] == "Your code is 4815"  # fetched from the provider
        trace = (await http.get(f"/api/admin/messages/{message_id}")).json()["data"]
        assert (trace["status"], trace["reason"]) == ("undelivered", "undelivered")
        # The number takes SMS again: the retry sends a new SMS, with a new SID
        fake_twilio.script_receipts(phone, Receipts())
        retried = await http.post(LIST, json={"id": message_id})
        assert retried.status_code == 200, retried.text
        sms = fake_twilio.messages_to(phone)
        assert len(sms) == 2 and sms[1].sid != first_sid
        assert retried.json()["messageSid"] == sms[1].sid
        new_sid = sms[1].sid
        callbacks = fake_twilio.wait_for_callbacks(10)
        assert [c.http_status for c in callbacks if c.sid == new_sid] == [204, 204]
        await mirror(receipt_settings)
        # The record is resolved by the new SMS, and the message is delivered now
        [record] = (await http.get(LIST, params={"phone": phone})).json()["data"]
        assert (record["status"], record["messageSid"]) == ("resolved", new_sid)
        trace = (await http.get(f"/api/admin/messages/{message_id}")).json()["data"]
    assert (trace["status"], trace["messageSid"], trace["reason"]) == ("delivered", new_sid, None)
    events = [e["event"] for e in trace["events"]]
    assert events.index("undelivered") < events.index("admin_retry") < events.index("delivered")
    row = await read_sent(receipt_settings, message_id)
    assert row is not None
    # (the row follows the new SMS: its delivery, not the old one's failure)
    assert (row.message_sid, row.delivery_status, row.error) == (new_sid, "delivered", None)
    assert row.attempts == 2
    # Past its Redis TTL, the trace answers from Postgres alike
    await forget_trace(rclient, receipt_settings, phone, message_id)
    async with admin_http(live_admin) as http:
        late = (await http.get(f"/api/admin/messages/{message_id}")).json()["data"]
    assert (late["status"], late["messageSid"], late["attempts"]) == ("delivered", new_sid, 2)
    assert [e["event"] for e in late["events"]] == ["published", "sent", "delivered"]


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (21610, "Twilio error 21610: Attempt to send to unsubscribed recipient"),
        (30006, "Twilio error 30006: Landline or unreachable carrier"),
    ],
)
async def test_a_number_that_takes_no_sms_says_never_retry(
    receipt_settings: Settings,
    fake_twilio: FakeTwilioThread,
    live_admin: str,
    rclient: aioredis.Redis,
    code: int,
    words: str,
) -> None:
    phone = unique_phone()
    fake_twilio.script_receipts(phone, Receipts.ending("undelivered", code))
    [message_id] = await send_all(receipt_settings, fake_twilio, [phone])
    await mirror(receipt_settings)
    await forget_trace(rclient, receipt_settings, phone, message_id)  # (from Postgres alone)
    async with admin_http(live_admin) as http:
        [record] = (await http.get(LIST, params={"phone": phone})).json()["data"]
        trace = (await http.get(f"/api/admin/messages/{message_id}")).json()["data"]
    assert record["id"] == message_id and record["reason"] == "undelivered"
    assert record["error"] == f"{words} (this number will not take SMS: do not retry it)"
    assert (trace["status"], trace["reason"]) == ("undelivered", "undelivered")
    assert trace["events"][-1]["detail"] == record["error"]
