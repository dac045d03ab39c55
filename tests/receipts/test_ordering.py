"""Callbacks repeat, come out of order, and may come before the mirror has the message's row:
a message ends at its most final status, never goes back from `delivered` to `sent`, and a
multi-part message with a failed part ends `undelivered` (sent_sms.py: a failure outranks a
delivery, since the text did not arrive whole; its record can be retried as a new SMS)."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from smsrelay.settings import Settings
from smsrelay.streams.clients import text
from smsrelay.streams.keys import ShardKeys, shard_of
from smsrelay.testing.fake_twilio import FakeTwilioThread, Receipts
from tests.admin.conftest import LIST
from tests.receipts.conftest import (
    admin_http,
    answers,
    mirror,
    read_sent,
    send_all,
    sid_of,
    trace_events,
)
from tests.store.dlq import unique_phone
from tests.support.worker import entries

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

PLANS: dict[str, tuple[Receipts, str]] = {
    "delivered then a late sent": (Receipts(("delivered", "sent")), "delivered"),
    "duplicates": (Receipts(("sent", "sent", "delivered", "delivered", "sent")), "delivered"),
    "reordered": (Receipts(("queued", "delivered", "sending", "sent")), "delivered"),
    "undelivered then a late sent": (Receipts(("undelivered", "sent"), 30003), "undelivered"),
    "a failed part then a delivered one": (
        Receipts(("sent", "undelivered", "delivered"), 30003),
        "undelivered",
    ),
    "a delivered part then a failed one": (
        Receipts(("sent", "delivered", "undelivered", "delivered"), 30003),
        "undelivered",
    ),
    "undelivered then failed": (Receipts(("undelivered", "failed"), 30005), "failed"),
}


async def test_each_message_ends_at_its_most_final_status(
    receipt_settings: Settings,
    fake_twilio: FakeTwilioThread,
    live_admin: str,
    rclient: aioredis.Redis,
) -> None:
    phones = {name: unique_phone() for name in PLANS}
    for name, (plan, _) in PLANS.items():
        fake_twilio.script_receipts(phones[name], plan)
    sent = await send_all(receipt_settings, fake_twilio, list(phones.values()))
    ids = dict(zip(PLANS, sent, strict=True))
    for name, (plan, _) in PLANS.items():
        sid = sid_of(fake_twilio, phones[name])
        assert answers(fake_twilio.callbacks(sid=sid)) == [204] * len(plan.statuses), name
    await mirror(receipt_settings)
    async with admin_http(live_admin) as http:
        for name, (_, final) in PLANS.items():
            phone, message_id, sid = phones[name], ids[name], sid_of(fake_twilio, phones[name])
            row = await read_sent(receipt_settings, message_id)
            assert row is not None and row.delivery_status == final, (name, row)
            trace = (await http.get(f"/api/admin/messages/{message_id}")).json()["data"]
            assert trace["status"] == final, name
            # Each receipt that moved the message forward is in the trace once, in order
            events = await trace_events(rclient, receipt_settings, phone, message_id)
            receipts = [e.split("|")[0] for e in events[events.index(f"sent|{sid}") + 1 :]]
            assert receipts == sorted(set(receipts), key=receipts.index), (name, events)
            assert receipts[-1] == final, (name, events)
            records = (await http.get(LIST, params={"phone": phone})).json()["data"]
            if final == "delivered":
                assert (records, row.error) == ([], None), name
            else:
                [record] = records
                assert (record["reason"], record["messageSid"]) == ("undelivered", sid), name
                assert record["error"].startswith("Twilio error 3000"), name
                assert record["error"] == row.error, name


async def test_receipts_that_come_before_the_message_s_row_wait_for_it(
    receipt_settings: Settings,
    fake_twilio: FakeTwilioThread,
    live_admin: str,
    rclient: aioredis.Redis,
) -> None:
    delivered, undelivered = unique_phone(), unique_phone()
    fake_twilio.script_receipts(undelivered, Receipts.ending("undelivered", 30003))
    ids = await send_all(receipt_settings, fake_twilio, [delivered, undelivered])
    # The outcomes are held back: the mirror sees the receipts first
    held: list[tuple[str, dict[str, str]]] = []
    for phone in (delivered, undelivered):
        outcomes = ShardKeys(
            receipt_settings.namespace, shard_of(phone, receipt_settings.shards)
        ).outcomes
        for _, raw in entries(await rclient.xrange(outcomes)):
            held.append((outcomes, {text(k): text(v) for k, v in raw.items()}))
        await rclient.delete(outcomes)
    assert len(held) == 2
    await mirror(receipt_settings)
    assert [await read_sent(receipt_settings, m) for m in ids] == [None, None]
    # Then the outcomes arrive: each row takes the receipts that waited for it
    for stream, fields in held:
        await rclient.xadd(stream, fields)  # type: ignore[arg-type]
    await mirror(receipt_settings)
    rows = [await read_sent(receipt_settings, m) for m in ids]
    assert [r.delivery_status if r else None for r in rows] == ["delivered", "undelivered"]
    async with admin_http(live_admin) as http:
        [record] = (await http.get(LIST, params={"phone": undelivered})).json()["data"]
        assert record["error"] == "Twilio error 30003: Unreachable destination handset"
        assert record["message"] == "Your code is 4815"
        traces = [(await http.get(f"/api/admin/messages/{m}")).json()["data"] for m in ids]
    assert [t["status"] for t in traces] == ["delivered", "undelivered"]
