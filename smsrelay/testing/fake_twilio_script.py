"""What the fake Twilio answers: scripted steps per number, Twilio's errors and resources.

A `Script` is a queue of `Step`s consumed one per Messages API request to its `To` number,
then a default step (normal processing unless given). Steps travel as JSON too:

    "accept" | "drop" | "accept_drop"
    {"action": "accept" | "error" | "drop" | "accept_drop",
     "status": 503, "code": 20429 | null, "delay": 1.5, "retry_after": 2}

`{"status": N}` alone means an error step; `{"delay": S}` alone means accept at once and answer
after S seconds. An accepting step records the message when the request arrives: its delay and
its dropped answer come after, so a client that gave up still sent the SMS (as with Twilio).
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from http import HTTPStatus
from typing import Literal, TypeAlias, cast, get_args

from aiohttp import web

API_VERSION = "2010-04-01"
JSON_TYPE = "application/json"
Action = Literal["accept", "error", "drop", "accept_drop"]
_ACTIONS: frozenset[str] = frozenset(get_args(Action))
Outcome = Literal["accepted", "error", "dropped"]

# Messages as Twilio words them (docs and observed responses), keyed by error code.
ERROR_MESSAGES: dict[int, str] = {
    20001: "Invalid parameter {param}",
    20003: "Authentication Error - invalid username",
    20404: "The requested resource {path} was not found",
    20429: "Too Many Requests",
    20500: "An internal server error has occurred",
    20503: "Service Unavailable",
    21211: "The 'To' number {to} is not a valid phone number.",
    21212: "The 'From' number {from_} is not a valid phone number, shortcode, "
    "or alphanumeric sender ID.",
    21408: "Permission to send an SMS has not been enabled for the region indicated "
    "by the 'To' number: {to}.",
    21602: "Message body is required.",
    21603: "A 'From' phone number is required.",
    21604: "A 'To' phone number is required.",
    21610: "Attempt to send to unsubscribed recipient",
    21611: "This 'From' number has exceeded the maximum number of queued messages",
    21612: "The 'To' phone number: {to}, is not currently reachable using the 'From' "
    "phone number: {from_} via SMS.",
    21614: "'To' number is not a valid mobile number",
    21609: "Invalid StatusCallback url",
    21617: "The concatenated message body exceeds the 1600 character limit.",
}

# Delivery errors reported in status callbacks (ErrorCode / ErrorMessage).
DELIVERY_ERRORS: dict[int, str] = {
    30001: "Queue overflow",
    30002: "Account suspended",
    30003: "Unreachable destination handset",
    30004: "Message blocked",
    30005: "Unknown destination handset",
    30006: "Landline or unreachable carrier",
    30007: "Message filtered",
    30008: "Unknown error",
    30032: "Toll-Free Number Has Not Been Verified",
    30034: "Message from an Unregistered Number",
}

# Twilio's magic test numbers (test credentials): the error each one triggers.
MAGIC_TO: dict[str, int] = {
    "+15005550001": 21211,
    "+15005550002": 21612,
    "+15005550003": 21408,
    "+15005550004": 21610,
    "+15005550009": 21614,
}
MAGIC_FROM: dict[str, int] = {"+15005550001": 21212, "+15005550008": 21611}


def error_message(
    code: int, *, to: str = "", from_: str = "", path: str = "", param: str = ""
) -> str:
    template = ERROR_MESSAGES.get(code) or DELIVERY_ERRORS.get(code, "Error")
    return template.format(to=to, from_=from_, path=path, param=param)


@dataclass(frozen=True, slots=True)
class Step:
    """One scripted response.

    `delay_s` is waited before answering. An error or a drop happens after it; an accepting
    step records the message first, then waits, then answers (or drops the connection).
    `retry_after_s` adds a `Retry-After` header to an error answer (Twilio's 429s carry one).
    """

    action: Action = "accept"
    status: int = 0
    code: int | None = None
    delay_s: float = 0.0
    retry_after_s: float | None = None

    def __post_init__(self) -> None:
        if self.action not in _ACTIONS:
            raise ValueError(f"unknown action {self.action!r}")
        if self.action == "error" and not 400 <= self.status <= 599:
            raise ValueError(f"an error step needs a 4xx/5xx status, got {self.status}")
        if self.delay_s < 0:
            raise ValueError("delay must be >= 0")
        if self.retry_after_s is not None:
            if self.action != "error":
                raise ValueError("retry_after goes with an error step only")
            if self.retry_after_s < 0:
                raise ValueError("retry_after must be >= 0")

    @property
    def accepts(self) -> bool:
        """True when the step creates the message (whatever becomes of the answer)."""
        return self.action in ("accept", "accept_drop")

    @classmethod
    def accept(cls, delay_s: float = 0.0) -> Step:
        return cls("accept", delay_s=delay_s)

    @classmethod
    def error(
        cls,
        status: int,
        code: int | None = None,
        delay_s: float = 0.0,
        retry_after_s: float | None = None,
    ) -> Step:
        return cls("error", status=status, code=code, delay_s=delay_s, retry_after_s=retry_after_s)

    @classmethod
    def rate_limited(cls, retry_after_s: float | None = 1.0, delay_s: float = 0.0) -> Step:
        """Twilio's `429 Too Many Requests` (code 20429, never processed) with `Retry-After`."""
        return cls.error(429, 20429, delay_s=delay_s, retry_after_s=retry_after_s)

    @classmethod
    def drop(cls, delay_s: float = 0.0) -> Step:
        """Close the connection without a response; the message is not accepted."""
        return cls("drop", delay_s=delay_s)

    @classmethod
    def accept_drop(cls, delay_s: float = 0.0) -> Step:
        """Accept the message, then (after `delay_s`) close the connection unanswered."""
        return cls("accept_drop", delay_s=delay_s)

    @classmethod
    def delay(cls, seconds: float) -> Step:
        """Accept at once, answer after `seconds`: sent even if the client gave up."""
        return cls("accept", delay_s=seconds)

    @classmethod
    def parse(cls, raw: StepLike) -> Step:
        if isinstance(raw, Step):
            return raw
        if isinstance(raw, str):
            if raw == "error" or raw not in _ACTIONS:
                raise ValueError(f"bad step {raw!r}")
            return cls(cast(Action, raw))
        if not isinstance(raw, Mapping):
            raise ValueError(f"bad step {raw!r}")
        unknown = set(raw) - {"action", "status", "code", "delay", "retry_after"}
        if unknown:
            raise ValueError(f"unknown step keys {sorted(unknown)}")
        action = raw.get("action", "error" if "status" in raw else "accept")
        status, code, delay = raw.get("status", 0), raw.get("code"), raw.get("delay", 0.0)
        retry_after = raw.get("retry_after")
        if not isinstance(action, str) or action not in _ACTIONS:
            raise ValueError(f"unknown action {action!r}")
        if not _is_int(status) or (code is not None and not _is_int(code)):
            raise ValueError("status and code must be integers")
        if not _is_number(delay):
            raise ValueError("delay must be a number of seconds")
        if retry_after is not None and not _is_number(retry_after):
            raise ValueError("retry_after must be a number of seconds")
        return cls(
            cast(Action, action),
            status=cast(int, status),
            code=cast("int | None", code),
            delay_s=float(cast(float, delay)),
            retry_after_s=None if retry_after is None else float(cast(float, retry_after)),
        )

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"action": self.action, "delay": self.delay_s}
        if self.action == "error":
            out |= {"status": self.status, "code": self.code}
            if self.retry_after_s is not None:
                out["retry_after"] = self.retry_after_s
        return out

    def headers(self) -> dict[str, str]:
        """Headers of an error answer: `Retry-After` in whole seconds unless given finer."""
        if self.retry_after_s is None:
            return {}
        seconds = float(self.retry_after_s)
        return {"Retry-After": str(int(seconds)) if seconds.is_integer() else str(seconds)}


StepLike: TypeAlias = Step | str | Mapping[str, object]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class Script:
    """Steps consumed one per request to a number, then `default` for ever after."""

    __slots__ = ("_steps", "default")

    def __init__(self, steps: Iterable[StepLike] = (), default: StepLike | None = None) -> None:
        self._steps: deque[Step] = deque(Step.parse(s) for s in steps)
        self.default: Step | None = None if default is None else Step.parse(default)

    def next_step(self) -> Step | None:
        return self._steps.popleft() if self._steps else self.default

    @property
    def remaining(self) -> int:
        return len(self._steps)

    @classmethod
    def from_json(cls, data: object) -> tuple[str, Script]:
        """Parse the body of `POST /_fake/script` into (to, script)."""
        if not isinstance(data, dict) or not isinstance(data.get("to"), str):
            raise ValueError('expected {"to": "+1...", "steps": [...], "default": ...}')
        steps = data.get("steps", [])
        if not isinstance(steps, list):
            raise ValueError("steps must be a list")
        return data["to"], cls(steps, data.get("default"))


_KNOWN_STATUSES = frozenset(s.value for s in HTTPStatus)
_date_cache: tuple[int, str] = (-1, "")


def _rfc2822(epoch_s: float) -> str:
    """Twilio's date format (`Thu, 24 Aug 2023 05:01:45 +0000`), cached per second."""
    global _date_cache
    second = int(epoch_s)
    if _date_cache[0] != second:
        _date_cache = (second, format_datetime(datetime.fromtimestamp(second, UTC)))
    return _date_cache[1]


# How far along each message status is: a message's status never goes back (a late or repeated
# receipt does not undo a later one); the first final status wins.
STATUS_RANK: dict[str, int] = {
    "accepted": 0,
    "scheduled": 0,
    "queued": 0,
    "sending": 1,
    "sent": 2,
    "delivered": 3,
    "undelivered": 3,
    "failed": 3,
    "partially_delivered": 3,
    "canceled": 3,
    "read": 4,
}
FAILED_STATUSES = frozenset({"failed", "undelivered"})
# A message has left Twilio (it has a date_sent) once it reaches one of these.
_SENT_STATUSES = frozenset({"sent", "delivered", "undelivered", "partially_delivered", "read"})


@dataclass(slots=True)
class FakeMessage:
    """A message the fake accepted; `status` moves on as its receipts are played."""

    sid: str
    account_sid: str
    to: str
    from_: str | None
    messaging_service_sid: str | None
    body: str
    status: str
    num_segments: int
    status_callback: str | None
    received_at: float  # epoch seconds
    date_sent: float | None = None
    updated_at: float | None = None
    error_code: int | None = None

    def advance(self, status: str, error_code: int | None, now: float) -> bool:
        """Move to `status` unless the message is already as far or further along."""
        current = STATUS_RANK.get(self.status, 0)
        rank = STATUS_RANK.get(status, 0)
        if rank < current or (rank == current and (status == self.status or rank >= 3)):
            return False
        self.status, self.updated_at = status, now
        if status in _SENT_STATUSES and self.date_sent is None:
            self.date_sent = now
        if status in FAILED_STATUSES:
            self.error_code = error_code
        return True

    def resource(self) -> dict[str, object]:
        """The message resource exactly as Twilio's API returns it."""
        date = _rfc2822(self.received_at)
        uri = f"/{API_VERSION}/Accounts/{self.account_sid}/Messages/{self.sid}"
        return {
            "account_sid": self.account_sid,
            "api_version": API_VERSION,
            "body": self.body,
            "date_created": date,
            "date_sent": None if self.date_sent is None else _rfc2822(self.date_sent),
            "date_updated": date if self.updated_at is None else _rfc2822(self.updated_at),
            "direction": "outbound-api",
            "error_code": self.error_code,
            "error_message": None if self.error_code is None else error_message(self.error_code),
            "from": self.from_,
            "messaging_service_sid": self.messaging_service_sid,
            "num_media": "0",
            "num_segments": str(self.num_segments),  # Twilio sends counts as strings
            "price": None,
            "price_unit": "USD",
            "sid": self.sid,
            "status": self.status,
            "subresource_uris": {"media": f"{uri}/Media.json"},
            "to": self.to,
            "uri": f"{uri}.json",
        }

    def to_json(self) -> dict[str, object]:
        """The record served by `GET /_fake/messages`."""
        return {
            "sid": self.sid,
            "to": self.to,
            "from": self.from_,
            "messaging_service_sid": self.messaging_service_sid,
            "body": self.body,
            "num_segments": self.num_segments,
            "status_callback": self.status_callback,
            "received_at": self.received_at,
            "status": self.status,
            "date_sent": self.date_sent,
            "error_code": self.error_code,
        }


@dataclass(slots=True)
class RequestRecord:
    """One create request, whatever became of it.

    `status` is None when no response was sent; `code` is the Twilio error code, or the HTTP
    status when the response carried none (as the SDK reports it).
    """

    at: float
    to: str | None
    from_: str | None
    body: str | None
    outcome: Outcome
    status: int | None
    code: int | None = None
    sid: str | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "at": self.at,
            "to": self.to,
            "from": self.from_,
            "body": self.body,
            "outcome": self.outcome,
            "status": self.status,
            "code": self.code,
            "sid": self.sid,
        }


def error_response(
    status: int,
    code: int | None,
    message: str = "",
    headers: Mapping[str, str] | None = None,
    **extra: object,
) -> web.Response:
    """Twilio's error JSON; without a code, the HTML page a proxy in front of Twilio sends."""
    if code is None:
        reason = HTTPStatus(status).phrase if status in _KNOWN_STATUSES else "Error"
        html = f"<html><body><h1>{status} {reason}</h1></body></html>"
        return web.Response(status=status, text=html, content_type="text/html", headers=headers)
    payload = {
        "code": code,
        "message": message or error_message(code),
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
        **extra,
    }
    return web.Response(
        status=status, text=json.dumps(payload), content_type=JSON_TYPE, headers=headers
    )
