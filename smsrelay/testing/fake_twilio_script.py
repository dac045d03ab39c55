"""What the fake Twilio answers: scripted steps per number, Twilio's errors and resources.

A `Script` is a queue of `Step`s consumed one per Messages API request to its `To` number,
then a default step (normal processing unless given). Steps travel as JSON too:

    "accept" | "drop" | "accept_drop"
    {"action": "accept" | "error" | "drop" | "accept_drop",
     "status": 503, "code": 20429 | null, "delay": 1.5}

`{"status": N}` alone means an error step; `{"delay": S}` alone means accept after S seconds.
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
    21617: "The concatenated message body exceeds the 1600 character limit.",
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


def error_message(code: int, *, to: str = "", from_: str = "", path: str = "") -> str:
    template = ERROR_MESSAGES.get(code, "Error")
    return template.format(to=to, from_=from_, path=path)


@dataclass(frozen=True, slots=True)
class Step:
    """One scripted response; `delay_s` is waited before the action."""

    action: Action = "accept"
    status: int = 0
    code: int | None = None
    delay_s: float = 0.0

    def __post_init__(self) -> None:
        if self.action not in _ACTIONS:
            raise ValueError(f"unknown action {self.action!r}")
        if self.action == "error" and not 400 <= self.status <= 599:
            raise ValueError(f"an error step needs a 4xx/5xx status, got {self.status}")
        if self.delay_s < 0:
            raise ValueError("delay must be >= 0")

    @classmethod
    def accept(cls, delay_s: float = 0.0) -> Step:
        return cls("accept", delay_s=delay_s)

    @classmethod
    def error(cls, status: int, code: int | None = None, delay_s: float = 0.0) -> Step:
        return cls("error", status=status, code=code, delay_s=delay_s)

    @classmethod
    def drop(cls, delay_s: float = 0.0) -> Step:
        """Close the connection without a response; the message is not accepted."""
        return cls("drop", delay_s=delay_s)

    @classmethod
    def accept_drop(cls, delay_s: float = 0.0) -> Step:
        """Accept the message, then lose the response: the client cannot know it was sent."""
        return cls("accept_drop", delay_s=delay_s)

    @classmethod
    def delay(cls, seconds: float) -> Step:
        """Accept after `seconds` (the message is recorded even if the client gave up)."""
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
        unknown = set(raw) - {"action", "status", "code", "delay"}
        if unknown:
            raise ValueError(f"unknown step keys {sorted(unknown)}")
        action = raw.get("action", "error" if "status" in raw else "accept")
        status, code, delay = raw.get("status", 0), raw.get("code"), raw.get("delay", 0.0)
        if not isinstance(action, str) or action not in _ACTIONS:
            raise ValueError(f"unknown action {action!r}")
        if not isinstance(status, int) or (code is not None and not isinstance(code, int)):
            raise ValueError("status and code must be integers")
        if not isinstance(delay, int | float):
            raise ValueError("delay must be a number of seconds")
        return cls(cast(Action, action), status=status, code=code, delay_s=float(delay))

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"action": self.action, "delay": self.delay_s}
        if self.action == "error":
            out |= {"status": self.status, "code": self.code}
        return out


StepLike: TypeAlias = Step | str | Mapping[str, object]


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


@dataclass(slots=True)
class FakeMessage:
    """A message the fake accepted."""

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

    def resource(self) -> dict[str, object]:
        """The message resource exactly as Twilio's API returns it."""
        date = _rfc2822(self.received_at)
        uri = f"/{API_VERSION}/Accounts/{self.account_sid}/Messages/{self.sid}"
        return {
            "account_sid": self.account_sid,
            "api_version": API_VERSION,
            "body": self.body,
            "date_created": date,
            "date_sent": None,
            "date_updated": date,
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
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
    status: int, code: int | None, message: str = "", **extra: object
) -> web.Response:
    """Twilio's error JSON; without a code, the HTML page a proxy in front of Twilio sends."""
    if code is None:
        reason = HTTPStatus(status).phrase if status in _KNOWN_STATUSES else "Error"
        html = f"<html><body><h1>{status} {reason}</h1></body></html>"
        return web.Response(status=status, text=html, content_type="text/html")
    payload = {
        "code": code,
        "message": message or error_message(code),
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
        **extra,
    }
    return web.Response(status=status, text=json.dumps(payload), content_type=JSON_TYPE)
