"""1,000 messages with receipts through the whole pipeline (the fake Twilio at 0 ms): every
callback answered 2xx, every message's trace complete (published, its attempt, sent with its
SID, its receipts), and sent_sms holding 1,000 rows with their delivery status."""

from __future__ import annotations

import random
import uuid
from collections import Counter

import pytest
import redis.asyncio as aioredis

from smsrelay.settings import Settings
from smsrelay.store.db import Database
from smsrelay.streams.clients import text
from smsrelay.streams.keys import ShardKeys, shard_of
from smsrelay.testing.fake_twilio import FakeTwilioThread
from tests.receipts.conftest import admin_http, mirror, send_all

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

N = 1_000


async def test_a_thousand_messages_with_receipts(
    receipt_settings: Settings,
    fake_twilio: FakeTwilioThread,
    live_admin: str,
    rclient: aioredis.Redis,
) -> None:
    base = random.randint(2_000_000, 8_000_000)
    phones = [f"+1415{base + n}" for n in range(N)]  # one each: no phone's window fills
    ids = await send_all(receipt_settings, fake_twilio, phones, timeout=120)
    sids = {m.to: m.sid for m in fake_twilio.messages}
    assert len(fake_twilio.messages) == N and len(set(sids.values())) == N
    # Every callback (sent, then delivered, for each) was answered 2xx
    callbacks = fake_twilio.callbacks()
    assert len(callbacks) == 2 * N
    assert Counter(c.http_status for c in callbacks) == {204: 2 * N}
    assert await mirror(receipt_settings) >= 3 * N  # outcomes and receipts
    # sent_sms: every message, with its SID and its delivery
    async with Database(receipt_settings.database_url).connection() as conn:
        cur = await conn.execute(
            "SELECT id, phone, message_sid, delivery_status FROM public.sent_sms "
            "WHERE namespace = %s",
            [receipt_settings.namespace],
        )
        rows = await cur.fetchall()
    assert len(rows) == N
    assert {(str(r["id"]), r["phone"], r["message_sid"]) for r in rows} == {
        (m, p, sids[p]) for m, p in zip(ids, phones, strict=True)
    }
    assert Counter(r["delivery_status"] for r in rows) == {"delivered": N}
    # Every trace: published, the attempt, sent with the SID, the receipts
    async with rclient.pipeline(transaction=False) as pipe:
        for message_id, phone in zip(ids, phones, strict=True):
            shard = shard_of(phone, receipt_settings.shards)
            pipe.lrange(ShardKeys(receipt_settings.namespace, shard).trace(message_id), 0, -1)
        traces = await pipe.execute()
    incomplete = []
    for message_id, phone, raw in zip(ids, phones, traces, strict=True):
        events = [text(item).split("|", 1)[1] for item in raw]
        sid = sids[phone]
        if events != [
            "published|",
            "attempt|1",
            f"sent|{sid}",
            f"receipt_sent|{sid}",
            f"delivered|{sid}",
        ]:
            incomplete.append((message_id, events))
    assert incomplete == [], incomplete[:3]
    # and the API answers from them (a sample)
    async with admin_http(live_admin) as http:
        for message_id in random.sample(ids, 20):
            data = (await http.get(f"/api/admin/messages/{uuid.UUID(message_id)}")).json()["data"]
            assert data["status"] == "delivered" and data["messageSid"] in sids.values()
