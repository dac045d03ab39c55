"""Twilio through the official SDK's asyncio client, with the SDK's traps disarmed.

- The async client ignores its timeout (twilio-python #925): every call is wrapped in
  `asyncio.wait_for`.
- The SDK's own retries re-POST on 5xx and send duplicates: `max_retries` stays unset.
- aiohttp's default connector allows 100 connections: the session gets one sized to the
  worker's concurrency, or sends beyond 100 queue for a socket.
- TWILIO_REGION / TWILIO_EDGE in the environment would rewrite the host of a custom API root:
  the client is given its own environment mapping.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from twilio.base.exceptions import TwilioException, TwilioRestException, TwilioServiceException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client

from smsrelay.consumers.providers.base import SendReceipt
from smsrelay.consumers.providers.classify import describe, is_retryable
from smsrelay.errors import ProviderError
from smsrelay.settings import Settings


class _QuietHttpClient(AsyncTwilioHttpClient):  # type: ignore[misc]  # untyped SDK
    """The SDK formats a dozen log strings per request even when its logger is silent (about
    2 % of a worker's CPU); smsrelay logs each outcome itself, with phone numbers masked."""

    def log_request(self, kwargs: dict[str, Any]) -> None:
        pass

    def log_response(self, status_code: int, response: Any) -> None:
        pass


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
        except TwilioRestException as exc:
            # Without a Twilio code in the answer the SDK puts the HTTP status in `code`.
            code = None if exc.code == exc.status else exc.code
            raise ProviderError(
                describe(exc.status, code, _first_line(exc.msg)),
                code=code,
                status=exc.status,
                retryable=is_retryable(exc.status, code),
            ) from None
        except TwilioServiceException as exc:
            raise ProviderError(
                describe(exc.status, exc.code, exc.detail or exc.title),
                code=exc.code,
                status=exc.status,
                retryable=is_retryable(exc.status, exc.code),
            ) from None
        except TimeoutError:
            raise ProviderError(
                f"Twilio did not answer within {self._timeout_s:g} s", retryable=True
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise ProviderError(
                f"network error talking to Twilio: {type(exc).__name__}: {exc}", retryable=True
            ) from None
        except TwilioException as exc:
            raise ProviderError(
                f"Twilio client error: {_first_line(str(exc))}", retryable=True
            ) from None
        segments = int(message.num_segments) if message.num_segments else None
        return SendReceipt(sid=str(message.sid), segments=segments)

    async def aclose(self) -> None:
        await self._http.close()


def _first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0] if text and text.strip() else ""
