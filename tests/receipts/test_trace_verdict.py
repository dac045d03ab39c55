"""A verdict `sent_sms` holds but the Redis trace lacks (a receipt the admin applied to
Postgres while Redis was away) joins the trace; one the trace has is never added twice."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from smsrelay.admin.trace import _status, _with_verdict
from smsrelay.store.sent_sms import SentSms

AT = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
AT_MS = round(AT.timestamp() * 1000)


def _sent(sid: str, status: str | None, error: str | None = None) -> SentSms:
    return SentSms(
        uuid.uuid4(), "ns", "+14155552671", sid, None, 1, AT, status, AT if status else None, error
    )


def test_a_verdict_the_trace_lacks_is_added_after_the_send() -> None:
    events = [(AT_MS - 900, "published", ""), (AT_MS - 500, "sent", "SM1")]
    merged = _with_verdict(events, _sent("SM1", "delivered"))
    assert merged == [*events, (AT_MS, "delivered", "SM1")]
    assert _status(merged, None) == "delivered"


def test_a_verdict_the_trace_has_is_not_added_again() -> None:
    events = [(AT_MS - 500, "sent", "SM1"), (AT_MS - 100, "undelivered", "Twilio error 30003")]
    assert _with_verdict(events, _sent("SM1", "undelivered", "Twilio error 30003")) == events


def test_the_first_sends_verdict_does_not_stand_for_a_retrys() -> None:
    # The first SID was undelivered (in the trace); the retry's SID was delivered (Postgres only)
    events = [
        (AT_MS - 900, "sent", "SM1"),
        (AT_MS - 800, "undelivered", "Twilio error 30003"),
        (AT_MS - 500, "sent", "SM2"),
    ]
    merged = _with_verdict(events, _sent("SM2", "undelivered", "Twilio error 30005"))
    assert merged[-1] == (AT_MS, "undelivered", "Twilio error 30005")


def test_progress_or_no_receipt_adds_nothing() -> None:
    events = [(AT_MS - 500, "sent", "SM1")]
    assert _with_verdict(events, _sent("SM1", "sent")) == events
    assert _with_verdict(events, _sent("SM1", None)) == events
    assert _with_verdict(events, None) == events
