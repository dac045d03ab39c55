"""What a provider failure means, classified once (rule 15): one table, easy to change.

Two questions, answered separately:
- Is it about this message, or is the provider (or the account) unwell? A failure about one
  message (a number Twilio refuses) follows the message's own retry rule. A systemic one
  (network, timeout, 5xx, 429, authentication, the sender's queue) feeds the provider breaker
  shared by the fleet, and costs no attempt once the breaker knows of an outage.
- Is trying again worth it? Permanent failures give the same answer every time: the message
  is dead-lettered at once.
A third, `ambiguous`, is a property of the attempt, not of the code: the request may have been
processed though no answer came (a timeout, a connection lost after the request went out, a
500/502/504). The message is looked up at the provider before it is tried again.
"""

from __future__ import annotations

from dataclasses import dataclass

# Twilio error codes (https://www.twilio.com/docs/api/errors), by what they say.
SYSTEMIC_CODES: dict[int, str] = {
    20003: "authentication failed",
    20005: "the account is not active",
    20404: "resource not found (account, service or API root)",
    20429: "too many requests (never processed)",
    21212: "invalid 'From' phone number",
    21606: "the 'From' number cannot send SMS",
    21611: "sender's queue is full",
    30001: "queue overflow",
    30002: "account suspended",
}
# Of the systemic codes, those that a later try can get past on its own (the others need an
# operator: a wrong token, a suspended account). Both open the breaker; neither burns attempts.
SYSTEMIC_TRANSIENT = frozenset({20429, 21611, 30001})
PER_MESSAGE_CODES: dict[int, str] = {
    21211: "invalid 'To' phone number",
    21408: "permission to send to this region is not enabled",
    21602: "message body is required",
    21608: "unverified number on a trial account",
    21610: "recipient unsubscribed (replied STOP)",
    21612: "cannot route to this number",
    21614: "'To' is not a mobile number",
    21617: "message body exceeds 1600 characters",
}
AMBIGUOUS_STATUSES = frozenset({500, 502, 504})


@dataclass(frozen=True)
class Classified:
    systemic: bool  # the provider or the account is unwell, not this message
    retryable: bool  # a later try may succeed without anyone changing anything
    ambiguous: bool = False  # the provider may have processed the request


def classify(status: int | None, code: int | None) -> Classified:
    """The table first; then the HTTP status: 401, 429 and 5xx are systemic, other 4xx are
    about the message and permanent; no HTTP answer at all is a systemic network failure."""
    if code in SYSTEMIC_CODES:
        return Classified(systemic=True, retryable=code in SYSTEMIC_TRANSIENT)
    if code in PER_MESSAGE_CODES:
        return Classified(systemic=False, retryable=False)
    if status is None:
        return Classified(systemic=True, retryable=True)
    if status == 401:
        return Classified(systemic=True, retryable=False)
    if status == 429 or status >= 500:
        return Classified(systemic=True, retryable=True, ambiguous=status in AMBIGUOUS_STATUSES)
    return Classified(systemic=False, retryable=False)


def is_retryable(status: int | None, code: int | None) -> bool:
    return classify(status, code).retryable


def describe(status: int | None, code: int | None, message: str) -> str:
    """The error text stored with a dead letter; it always holds the code."""
    if code is not None:
        known = SYSTEMIC_CODES.get(code) or PER_MESSAGE_CODES.get(code)
        detail = message or known or ""
        return f"Twilio error {code}: {detail}".rstrip(": ")
    if status is not None:
        return f"HTTP {status}: {message}".rstrip(": ")
    return message
