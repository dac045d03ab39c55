"""sent_sms rows from the mirror's outcomes: a later send of a message (an undelivered one
retried) takes its row over and starts its delivery afresh; an older one never takes it back;
two sends of one message in one batch are one row, not a failed batch."""

from __future__ import annotations

import uuid
from datetime import timedelta

from smsrelay import clock
from smsrelay.settings import Settings
from smsrelay.store import sent_sms
from smsrelay.store.db import Database
from smsrelay.store.sent_sms import Receipt, SentRow
from tests.store.dlq import unique_phone


async def test_a_later_send_takes_the_row_and_an_older_one_never_does(
    receipt_settings: Settings,
) -> None:
    ns, message_id, phone = receipt_settings.namespace, uuid.uuid4(), unique_phone()
    first_at = clock.now() - timedelta(minutes=5)
    first = SentRow(message_id, phone, "SM" + "1" * 32, "otp", 1, first_at)
    second = SentRow(message_id, phone, "SM" + "2" * 32, "otp", 1, clock.now())
    async with Database(receipt_settings.database_url).connection() as conn:
        await sent_sms.upsert_sent(conn, ns, [first])
        failed = Receipt(first.message_sid, "undelivered", 30003, clock.now())
        assert await sent_sms.apply_receipt(conn, failed, "Twilio error 30003: x") is not None
        # Both sends in one batch (the mirror was behind): one row, the later send's
        await sent_sms.upsert_sent(conn, ns, [second, first])
        row = await sent_sms.get_sent(conn, ns, message_id)
        assert row is not None
        assert (row.message_sid, row.delivery_status, row.error) == (second.message_sid, None, None)
        assert row.attempts == 2
        # The old send read again changes nothing; the new one's receipt counts
        await sent_sms.upsert_sent(conn, ns, [first])
        await sent_sms.upsert_sent(conn, ns, [second])
        delivered = Receipt(second.message_sid, "delivered", None, clock.now())
        assert await sent_sms.apply_receipt(conn, delivered, None) is not None
        row = await sent_sms.get_sent(conn, ns, message_id)
    assert row is not None
    assert (row.message_sid, row.delivery_status, row.attempts) == (
        second.message_sid,
        "delivered",
        2,
    )
