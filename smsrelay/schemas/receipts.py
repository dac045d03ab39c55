"""Delivery receipts: what Twilio's status callbacks say, and what their error codes mean."""

from __future__ import annotations

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


@dataclass(frozen=True)
class StatusCallback:
    """The fields of one status callback smsrelay uses (Twilio sends more)."""

    message_sid: str
    status: str
    error_code: int | None
    received_at: datetime

    @classmethod
    def from_form(cls, form: dict[str, str], received_at: datetime) -> StatusCallback | None:
        """None when the form is not a message status callback."""
        sid = form.get("MessageSid") or form.get("SmsSid") or ""
        status = (form.get("MessageStatus") or form.get("SmsStatus") or "").lower()
        if not sid or not status or len(sid) > 64 or len(status) > 32:
            return None
        code = form.get("ErrorCode") or ""
        return cls(
            sid, status, int(code) if code.isdigit() and len(code) < 9 else None, received_at
        )
