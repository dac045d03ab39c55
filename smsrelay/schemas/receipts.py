"""Delivery receipts: what Twilio's status callbacks say, and what their error codes mean."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

# Delivery errors Twilio reports in status callbacks (ErrorCode), after it accepted a message.
DELIVERY_CODES: dict[int, str] = {
    30001: "Queue overflow",
    30002: "Account suspended",
    30003: "Unreachable destination handset",
    30004: "Message blocked",
    30005: "Unknown destination handset",
    30006: "Landline or unreachable carrier",
    30007: "Message filtered by the carrier",
    30008: "Unknown error",
    30032: "Toll-free number not verified",
    30034: "US A2P 10DLC: message from an unregistered number",
    21610: "Attempt to send to unsubscribed recipient",
}
# Codes that say the number will not take SMS: a retry of the record is pointless.
NEVER_RETRY_CODES = frozenset({21610, 30004, 30005, 30006})


def describe_delivery(status: str, code: int | None) -> str:
    """`Twilio error 30003: Unreachable destination handset` (and whether to try again)."""
    if code is None:
        return f"Twilio reported the message {status} (no error code)"
    text = f"Twilio error {code}: {DELIVERY_CODES.get(code, 'delivery failed')}"
    if code in NEVER_RETRY_CODES:
        text += " (this number will not take SMS: do not retry it)"
    return text


# Every status Twilio reports for an outbound message (inbound ones never reach this route).
MESSAGE_STATUSES = frozenset(
    {
        "accepted",
        "scheduled",
        "queued",
        "sending",
        "sent",
        "partially_delivered",
        "delivered",
        "read",
        "canceled",
        "undelivered",
        "failed",
    }
)
# A message SID is two letters and 32 hex digits; room is left for a longer form, not more.
_SID = re.compile(r"[A-Za-z0-9]{2,64}")


@dataclass(frozen=True)
class StatusCallback:
    """The fields of one status callback smsrelay uses (Twilio sends more)."""

    message_sid: str
    status: str
    error_code: int | None
    received_at: datetime

    @classmethod
    def parse(cls, form: Mapping[str, str], received_at: datetime) -> StatusCallback | None:
        """None when the form is none of a message's status callbacks (neither a MessageSid
        nor a MessageStatus). Raises ValueError, one line, when it is one that makes no sense:
        nothing of it may be stored."""
        sid = form.get("MessageSid") or form.get("SmsSid") or ""
        status = (form.get("MessageStatus") or form.get("SmsStatus") or "").lower()
        if not sid and not status:
            return None
        if not sid:
            raise ValueError("MessageSid is missing")
        if not _SID.fullmatch(sid):
            raise ValueError(
                f"MessageSid is not a message SID ({len(sid)} characters; expected SM and "
                "32 hex digits)"
            )
        if not status:
            raise ValueError("MessageStatus is missing")
        if status not in MESSAGE_STATUSES:
            shown = status if len(status) <= 32 else status[:32] + "..."
            raise ValueError(f"unknown MessageStatus {shown!r}")
        code = form.get("ErrorCode") or ""
        return cls(
            sid, status, int(code) if code.isdigit() and len(code) < 9 else None, received_at
        )

    @classmethod
    def from_form(cls, form: Mapping[str, str], received_at: datetime) -> StatusCallback | None:
        """`parse`, with None for what it refuses (a stored entry that does not read back)."""
        try:
            return cls.parse(form, received_at)
        except ValueError:
            return None
