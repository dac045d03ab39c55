"""Delivery receipts of the fake Twilio: a message's status moves on, and Twilio-signed status
callbacks are POSTed to its `StatusCallback` URL.

A `Receipts` plan, per `To` number or for every number, lists the statuses in the order the
callbacks are sent. It may repeat one (`["sent", "delivered", "delivered"]`), put one out of
order (`["delivered", "sent"]`), add intermediate ones (`["queued", "sending", "sent", ...]`) or
end badly (`"undelivered"` / `"failed"` with an `error_code`). The message's own status (what
fetch and list show) follows the plan but never goes back, as Twilio's does. JSON form:

    {"to": "+1...", "statuses": ["sent", "undelivered"], "error_code": 30003, "delay": 0.2}
    {"to": "+1...", "final": "failed", "error_code": 30005}
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import aiohttp
from twilio.request_validator import RequestValidator

from smsrelay.testing.fake_twilio_script import (
    API_VERSION,
    DELIVERY_ERRORS,
    FAILED_STATUSES,
    STATUS_RANK,
    FakeMessage,
)

SIGNATURE_HEADER = "X-Twilio-Signature"
DEFAULT_ERROR_CODE = 30008  # "Unknown error": what a failed receipt says when not told otherwise


@dataclass(frozen=True, slots=True)
class Receipts:
    """The callbacks played for each message: `statuses` in order, `delay_s` before each."""

    statuses: tuple[str, ...] = ("sent", "delivered")
    error_code: int | None = None
    delay_s: float = 0.0

    def __post_init__(self) -> None:
        unknown = [s for s in self.statuses if s not in STATUS_RANK]
        if unknown:
            raise ValueError(f"unknown message status {unknown[0]!r}")
        if self.delay_s < 0:
            raise ValueError("delay must be >= 0")
        if self.error_code is not None and not FAILED_STATUSES & set(self.statuses):
            raise ValueError("error_code goes with an 'undelivered' or 'failed' status")

    @classmethod
    def ending(
        cls,
        final: str,
        error_code: int | None = None,
        *,
        before: Iterable[str] | None = None,
        delay_s: float = 0.0,
    ) -> Receipts:
        """`before` (default `sent`; nothing before `failed`, which never left) then `final`."""
        if before is None:
            before = () if final == "failed" else ("sent",)
        return cls((*before, final), error_code, delay_s)

    @classmethod
    def none(cls) -> Receipts:
        """No callback, and the message stays `queued`."""
        return cls(())

    @property
    def code(self) -> int:
        return DEFAULT_ERROR_CODE if self.error_code is None else self.error_code

    @classmethod
    def from_json(cls, data: object) -> tuple[str | None, Receipts]:
        """Parse the body of `POST /_fake/receipts` into (to or None for every number, plan)."""
        if not isinstance(data, dict):
            raise ValueError('expected {"to": "+1...", "statuses": [...] | "final": ...}')
        unknown = set(data) - {"to", "statuses", "final", "before", "error_code", "delay"}
        if unknown:
            raise ValueError(f"unknown receipts keys {sorted(unknown)}")
        to, code, delay = data.get("to"), data.get("error_code"), data.get("delay", 0.0)
        if to is not None and not isinstance(to, str):
            raise ValueError("to must be a phone number, or absent for every number")
        if code is not None and (not isinstance(code, int) or isinstance(code, bool)):
            raise ValueError("error_code must be an integer")
        if not isinstance(delay, int | float) or isinstance(delay, bool):
            raise ValueError("delay must be a number of seconds")
        if ("statuses" in data) == ("final" in data):
            raise ValueError("give either statuses or final")
        if "statuses" in data:
            if "before" in data:
                raise ValueError("before goes with final")
            return to, cls(_status_list(data["statuses"], "statuses"), code, float(delay))
        final = data["final"]
        if not isinstance(final, str):
            raise ValueError("final must be a status")
        before = None if "before" not in data else _status_list(data["before"], "before")
        return to, cls.ending(final, code, before=before, delay_s=float(delay))

    def to_json(self) -> dict[str, object]:
        return {
            "statuses": list(self.statuses),
            "error_code": self.error_code,
            "delay": self.delay_s,
        }


def _status_list(raw: object, name: str) -> tuple[str, ...]:
    if not isinstance(raw, list) or not all(isinstance(s, str) for s in raw):
        raise ValueError(f"{name} must be a list of statuses")
    return tuple(raw)


@dataclass(slots=True)
class CallbackRecord:
    """One status callback the fake tried to deliver.

    `http_status` is what the receiver answered, None when it could not be reached (`error`
    says why).
    """

    at: float
    sid: str
    to: str
    url: str
    status: str
    params: dict[str, str]
    signature: str
    http_status: int | None = None
    error: str | None = None

    @property
    def delivered(self) -> bool:
        return self.http_status is not None and 200 <= self.http_status < 300

    def to_json(self) -> dict[str, object]:
        return {
            "at": self.at,
            "sid": self.sid,
            "to": self.to,
            "url": self.url,
            "status": self.status,
            "params": self.params,
            "signature": self.signature,
            "http_status": self.http_status,
            "error": self.error,
        }


def callback_params(message: FakeMessage, status: str, error_code: int) -> dict[str, str]:
    """The form fields Twilio posts for an outbound message's status change."""
    params = {
        "AccountSid": message.account_sid,
        "ApiVersion": API_VERSION,
        "MessageSid": message.sid,
        "MessageStatus": status,
        "SmsSid": message.sid,
        "SmsStatus": status,
        "To": message.to,
    }
    if message.from_ is not None:
        params["From"] = message.from_
    if message.messaging_service_sid is not None:
        params["MessagingServiceSid"] = message.messaging_service_sid
    if status in FAILED_STATUSES:
        params["ErrorCode"] = str(error_code)
        params["ErrorMessage"] = DELIVERY_ERRORS.get(error_code, "Error")
    return params


@dataclass(slots=True)
class _Pending:
    count: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)


class StatusCallbacks:
    """Plays each accepted message's receipts and delivers its signed callbacks.

    Runs on the fake's loop. The status changes start when the message is accepted; callbacks
    wait until the create request was answered (or dropped), then go one after another.
    """

    def __init__(self, timeout_s: float = 5.0) -> None:
        self._timeout_s = timeout_s
        self._plans: dict[str, Receipts] = {}
        self._default = Receipts()
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._pending: _Pending | None = None
        self.records: list[CallbackRecord] = []

    # -- plans ------------------------------------------------------------------------------
    def set_plan(self, to: str | None, plan: Receipts) -> None:
        if to is None:
            self._default = plan
        else:
            self._plans[to] = plan

    def plan_for(self, to: str) -> Receipts:
        return self._plans.get(to, self._default)

    # -- playing ----------------------------------------------------------------------------
    def start(self, message: FakeMessage, token: str | None) -> asyncio.Future[None] | None:
        """Begin `message`'s receipts. When callbacks will be posted, returns the future the
        create handler resolves once it answered (or dropped) the request: they wait for it."""
        plan = self.plan_for(message.to)
        loop = asyncio.get_running_loop()
        for n, status in enumerate(plan.statuses, start=1):
            if plan.delay_s == 0:
                message.advance(status, plan.code, time.time())
            else:  # a reset leaves these to change messages no longer listed: harmless
                loop.call_later(n * plan.delay_s, _advance, message, status, plan.code)
        if message.status_callback is None or not plan.statuses or not token:
            return None
        answered: asyncio.Future[None] = loop.create_future()
        pending = self._pending_state()
        pending.count += len(plan.statuses)
        pending.idle.clear()
        task = loop.create_task(self._deliver(message, token, plan, answered, pending))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return answered

    def _pending_state(self) -> _Pending:
        if self._pending is None:
            self._pending = _Pending()
            self._pending.idle.set()
        return self._pending

    async def _deliver(
        self,
        message: FakeMessage,
        token: str,
        plan: Receipts,
        answered: asyncio.Future[None],
        pending: _Pending,
    ) -> None:
        left = len(plan.statuses)
        try:
            await answered
            validator = RequestValidator(token)
            for status in plan.statuses:
                if plan.delay_s > 0:
                    await asyncio.sleep(plan.delay_s)
                await self._post(message, validator, status, plan.code)
                left -= 1
                pending.count -= 1
        finally:
            if left:  # cancelled (reset or stop): these callbacks will never go
                pending.count -= left
            if pending.count <= 0:
                pending.count = 0
                pending.idle.set()

    async def _post(
        self, message: FakeMessage, validator: RequestValidator, status: str, error_code: int
    ) -> None:
        assert message.status_callback is not None  # start() posts only with a URL
        url = message.status_callback
        params = callback_params(message, status, error_code)
        signature = validator.compute_signature(url, params)
        record = CallbackRecord(
            time.time(), message.sid, message.to, url, status, params, signature
        )
        self.records.append(record)
        headers = {
            SIGNATURE_HEADER: signature,
            "User-Agent": "TwilioProxy/1.1",
            "I-Twilio-Idempotency-Token": os.urandom(16).hex(),
        }
        try:
            async with self._client().post(url, data=params, headers=headers) as resp:
                await resp.read()
                record.http_status = resp.status
        except Exception as exc:  # a receiver that is down or broken must not stop the fake
            record.error = f"{type(exc).__name__}: {exc}".rstrip(": ")

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=self._timeout_s)
            self._session = aiohttp.ClientSession(timeout=timeout)
        return self._session

    # -- reading and waiting ----------------------------------------------------------------
    def pending(self) -> int:
        return 0 if self._pending is None else self._pending.count

    async def wait_idle(self, timeout_s: float = 10.0) -> list[CallbackRecord]:
        """Wait until every scheduled callback was attempted (TimeoutError otherwise)."""
        pending = self._pending_state()
        async with asyncio.timeout(timeout_s):
            await pending.idle.wait()
        return list(self.records)

    def select(self, sid: str | None = None, to: str | None = None) -> list[CallbackRecord]:
        return [r for r in self.records if sid in (None, r.sid) and to in (None, r.to)]

    def summary(self) -> dict[str, int]:
        delivered = sum(1 for r in self.records if r.delivered)
        return {
            "attempted": len(self.records),
            "delivered": delivered,
            "failed": len(self.records) - delivered,
            "pending": self.pending(),
        }

    # -- lifecycle --------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget plans and records; callbacks not sent yet never will be."""
        for task in self._tasks:
            task.cancel()
        self._pending = None  # cancelled tasks settle their counts on the old one
        self._plans.clear()
        self._default = Receipts()
        self.records.clear()

    async def close(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()


def _advance(message: FakeMessage, status: str, error_code: int) -> None:
    message.advance(status, error_code, time.time())
