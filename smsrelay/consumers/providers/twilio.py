"""Twilio through the official SDK's asyncio client, with the SDK's traps disarmed.

- The async client ignores its timeout (twilio-python #925): every call is bounded by
  `asyncio.timeout`.
- The SDK's own retries re-POST on 5xx and send duplicates: `max_retries` stays unset.
- aiohttp's default connector allows 100 connections: the session gets one sized to the
  worker's concurrency, or sends beyond 100 queue for a socket.
- TWILIO_REGION / TWILIO_EDGE in the environment would rewrite the host of a custom API root:
  the client is given its own environment mapping.
"""

from __future__ import annotations

import asyncio
import contextvars
from datetime import datetime, timedelta
from typing import Any

import aiohttp
from twilio.base.exceptions import TwilioException, TwilioRestException, TwilioServiceException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client

from smsrelay.consumers.providers.base import SendReceipt
from smsrelay.consumers.providers.classify import classify, describe
from smsrelay.errors import ProviderError
from smsrelay.settings import Settings


class _QuietHttpClient(AsyncTwilioHttpClient):  # type: ignore[misc]  # untyped SDK
    """The SDK formats a dozen log strings per request even when its logger is silent (about
    2 % of a worker's CPU); smsrelay logs each outcome itself, with phone numbers masked."""

    def log_request(self, kwargs: dict[str, Any]) -> None:
        pass

    def log_response(self, status_code: int, response: Any) -> None:
        # The SDK's exceptions carry no headers: keep a 429's Retry-After for this task.
        if status_code == 429:
            _retry_after.set(_seconds(response.headers.get("Retry-After")))


_retry_after: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "twilio_retry_after", default=None
)
# How far before the first attempt a lookup looks (clocks of the worker and Twilio differ).
LOOKUP_SKEW = timedelta(minutes=2)
LOOKUP_PAGE = 50


def _seconds(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None  # an HTTP date: rare from Twilio; the breaker's own cooldown applies


class TwilioProvider:
    """Build inside a running event loop (aiohttp requires it); `await aclose()` at the end."""

    def __init__(self, settings: Settings, *, pool_size: int | None = None) -> None:
        settings.require_sender()
        assert settings.twilio_account_sid is not None
        assert settings.twilio_auth_token is not None
        self._timeout_s = settings.twilio_timeout_seconds
        self._http = _QuietHttpClient(pool_connections=False)
        limit = pool_size or settings.worker_concurrency
        self._http.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=limit, limit_per_host=limit, keepalive_timeout=30)
        )
        self._client = Client(
            settings.twilio_account_sid,
            settings.twilio_auth_token.get_secret_value(),
            http_client=self._http,
            environment={"SMSRELAY_NO_TWILIO_ENV": "1"},
        )
        self._client.api.base_url = settings.twilio_base_url
        self._messages = self._client.api.account.messages
        self._sender: dict[str, Any] = (
            {"from_": settings.twilio_from}
            if settings.twilio_from
            else {"messaging_service_sid": settings.twilio_messaging_service_sid}
        )
        if settings.twilio_status_callback:
            self._sender["status_callback"] = settings.twilio_status_callback

    async def send(self, to: str, body: str, *, message_id: str) -> SendReceipt:
        try:
            # asyncio.timeout (3.11+) bounds the call in the current task; wait_for would
            # wrap it in a new Task per send.
            async with asyncio.timeout(self._timeout_s):
                message = await self._messages.create_async(to=to, body=body, **self._sender)
        except Exception as exc:
            raise self._error(exc) from None
        segments = int(message.num_segments) if message.num_segments else None
        return SendReceipt(sid=str(message.sid), segments=segments)

    async def find_sent(self, to: str, body: str, since: datetime) -> SendReceipt | None:
        """Twilio's Messages list by To (and From), sent since `since`, matched on the body.

        One call, on this path only. A message Twilio still holds queued has no DateSent
        yet and is not found (FAULTS.md says what remains possible).
        """
        sender = self._sender.get("from_")
        try:
            async with asyncio.timeout(self._timeout_s):
                found = await self._messages.list_async(
                    to=to, from_=sender, date_sent_after=since - LOOKUP_SKEW, limit=LOOKUP_PAGE
                )
        except Exception as exc:
            raise self._error(exc, lookup=True) from None
        for message in found:
            if message.body == body and message.status not in ("failed", "canceled"):
                segments = int(message.num_segments) if message.num_segments else None
                return SendReceipt(sid=str(message.sid), segments=segments)
        return None

    async def fetch_body(self, sid: str) -> str | None:
        """The body of a message Twilio has (an undelivered one's, for its failed_sms record)."""
        try:
            async with asyncio.timeout(self._timeout_s):
                message = await self._messages(sid).fetch_async()
        except Exception as exc:
            raise self._error(exc, lookup=True) from None
        return str(message.body) if message.body is not None else None

    def _error(self, exc: Exception, *, lookup: bool = False) -> ProviderError:
        """One ProviderError for whatever the SDK, aiohttp or the timeout raised."""
        what = "look the message up at" if lookup else "talk to"
        if isinstance(exc, TwilioRestException):
            # Without a Twilio code in the answer the SDK puts the HTTP status in `code`.
            code = None if exc.code == exc.status else exc.code
            return _failure(
                describe(exc.status, code, _first_line(exc.msg)),
                exc.status,
                code,
                retry_after_s=_retry_after.get() if exc.status == 429 else None,
            )
        if isinstance(exc, TwilioServiceException):
            return _failure(
                describe(exc.status, exc.code, exc.detail or exc.title), exc.status, exc.code
            )
        if isinstance(exc, TimeoutError):
            # The request may have reached Twilio: the outcome is unknown.
            return ProviderError(
                f"Twilio did not answer within {self._timeout_s:g} s",
                retryable=True,
                systemic=True,
                ambiguous=not lookup,
            )
        if isinstance(exc, aiohttp.ClientConnectorError):
            return ProviderError(
                f"cannot {what} Twilio: {type(exc).__name__}: {exc}", retryable=True, systemic=True
            )
        if isinstance(exc, aiohttp.ClientError | OSError):
            # The connection failed after it was made: the request may have been written.
            return ProviderError(
                f"network error talking to Twilio: {type(exc).__name__}: {exc}",
                retryable=True,
                systemic=True,
                ambiguous=not lookup,
            )
        if isinstance(exc, TwilioException):
            # (a failed list page raises a bare TwilioException)
            return ProviderError(
                f"Twilio client error: {_first_line(str(exc))}", retryable=True, systemic=True
            )
        raise exc

    async def aclose(self) -> None:
        await self._http.close()


def _failure(
    message: str, status: int | None, code: int | None, *, retry_after_s: float | None = None
) -> ProviderError:
    verdict = classify(status, code)
    return ProviderError(
        message,
        code=code,
        status=status,
        retryable=verdict.retryable,
        systemic=verdict.systemic,
        ambiguous=verdict.ambiguous,
        retry_after_s=retry_after_s,
    )


def _first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0] if text and text.strip() else ""
