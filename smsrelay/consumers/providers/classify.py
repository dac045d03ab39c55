"""Which provider failures are worth another attempt: one table, easy to change.

Retryable means the provider did not (or may not have) done the work and trying later can
succeed. Permanent means trying again gives the same answer; the message is dead-lettered at once.
"""

from __future__ import annotations

# Twilio error codes (https://www.twilio.com/docs/api/errors), by what to do with them.
RETRYABLE_CODES: dict[int, str] = {
    20429: "too many requests (never processed)",
    21611: "sender's queue is full",
    30001: "queue overflow",
}
PERMANENT_CODES: dict[int, str] = {
    20003: "authentication failed",
    20404: "resource not found",
    21211: "invalid 'To' phone number",
    21212: "invalid 'From' phone number",
    21408: "permission to send to this region is not enabled",
    21602: "message body is required",
    21606: "the 'From' number cannot send SMS",
    21608: "unverified number on a trial account",
    21610: "recipient unsubscribed (replied STOP)",
    21612: "cannot route to this number",
    21614: "'To' is not a mobile number",
    21617: "message body exceeds 1600 characters",
}


def is_retryable(status: int | None, code: int | None) -> bool:
    """The table first; then HTTP status: 429 and 5xx retry, every other 4xx is permanent."""
    if code in RETRYABLE_CODES:
        return True
    if code in PERMANENT_CODES:
        return False
    if status is None:
        return True  # no HTTP answer at all: a network failure
    return status == 429 or status >= 500


def describe(status: int | None, code: int | None, message: str) -> str:
    """The error text stored with a dead letter; it always holds the code."""
    if code is not None:
        known = RETRYABLE_CODES.get(code) or PERMANENT_CODES.get(code)
        detail = message or known or ""
        return f"Twilio error {code}: {detail}".rstrip(": ")
    if status is not None:
        return f"HTTP {status}: {message}".rstrip(": ")
    return message
