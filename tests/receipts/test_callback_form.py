"""A status callback's form read into a receipt: what is one, what is refused and why."""

from __future__ import annotations

import re

import pytest

from smsrelay import clock
from smsrelay.schemas.receipts import MESSAGE_STATUSES, StatusCallback
from smsrelay.store.sent_sms import STATUS_RANK
from smsrelay.testing.fake_twilio_script import STATUS_RANK as FAKE_STATUSES

SID = "SM" + "0123456789abcdef" * 2


def test_every_status_has_a_rank_and_the_fake_sends_only_known_ones() -> None:
    assert set(STATUS_RANK) == MESSAGE_STATUSES
    assert set(FAKE_STATUSES) <= MESSAGE_STATUSES


def test_a_callback_reads_into_a_receipt() -> None:
    now = clock.now()
    form = {"MessageSid": SID, "MessageStatus": "Undelivered", "ErrorCode": "30003"}
    assert StatusCallback.parse(form, now) == StatusCallback(SID, "undelivered", 30003, now)
    # The older field names, and an error code that is no number
    legacy = {"SmsSid": SID, "SmsStatus": "failed", "ErrorCode": "x1"}
    assert StatusCallback.parse(legacy, now) == StatusCallback(SID, "failed", None, now)
    # Another of Twilio's callbacks (no message status): nothing to do, not an error
    assert StatusCallback.parse({"CallSid": "CA1", "CallStatus": "completed"}, now) is None


@pytest.mark.parametrize(
    ("form", "words"),
    [
        ({"MessageStatus": "delivered"}, "MessageSid is missing"),
        ({"MessageSid": SID}, "MessageStatus is missing"),
        ({"MessageSid": "SM" + "a" * 4998, "MessageStatus": "sent"}, "(5000 characters;"),
        ({"MessageSid": "SM12 34", "MessageStatus": "sent"}, "is not a message SID"),
        ({"MessageSid": SID, "MessageStatus": "teleported"}, "unknown MessageStatus 'teleported'"),
        ({"MessageSid": SID, "MessageStatus": "z" * 5000}, "'" + "z" * 32 + "...'"),
    ],
)
def test_what_makes_no_sense_is_refused_in_one_line(form: dict[str, str], words: str) -> None:
    with pytest.raises(ValueError, match=re.escape(words)) as refused:
        StatusCallback.parse(form, clock.now())
    assert len(str(refused.value)) < 120
    # (an entry read back from Redis that does not parse is skipped, never raised)
    assert StatusCallback.from_form(form, clock.now()) is None
