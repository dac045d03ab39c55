"""The official twilio SDK, set up the same way for every system under test.

- async (arq, the bare loop): `AsyncTwilioHttpClient` with an aiohttp session whose connector
  is sized to the concurrency (aiohttp's default caps a session at 100 connections), calls
  wrapped in `asyncio.wait_for` (the SDK ignores its own timeout, twilio-python #925);
- sync (Dramatiq threads, Celery threads pool): `TwilioHttpClient(pool_connections=True)` with
  an `HTTPAdapter(pool_maxsize=N)` mounted for http:// and https://, so N threads keep N
  connections alive.

`environment` is a non-empty mapping so TWILIO_REGION/TWILIO_EDGE in os.environ cannot rewrite
the loopback host; the SDK's own retries stay off (they re-POST and duplicate SMS).
"""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any

import aiohttp
from requests.adapters import HTTPAdapter
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

from bench.common import ACCOUNT_SID, AUTH_TOKEN, FROM_NUMBER

TIMEOUT_S = 10.0
_ENV = {"BENCH_NO_TWILIO_ENV": "1"}


def sync_client(base_url: str, pool_size: int) -> Client:
    http = TwilioHttpClient(pool_connections=True, timeout=TIMEOUT_S)
    adapter = HTTPAdapter(pool_connections=1, pool_maxsize=pool_size)
    assert http.session is not None
    http.session.mount("http://", adapter)
    http.session.mount("https://", adapter)
    client = Client(ACCOUNT_SID, AUTH_TOKEN, http_client=http, environment=_ENV)
    client.api.base_url = base_url
    return client


def sync_send(client: Client, to: str, text: str) -> str:
    message = client.api.account.messages.create(to=to, from_=FROM_NUMBER, body=text)
    return str(message.sid)


_worker_client: Client | None = None
_worker_client_lock = threading.Lock()


def send_from_worker(to: str, text: str) -> None:
    """The task body of the threaded peers (Dramatiq, Celery): one SDK client per worker
    process, made on first use, its HTTP pool sized to BENCH_CONCURRENCY threads."""
    global _worker_client
    if _worker_client is None:
        with _worker_client_lock:
            if _worker_client is None:
                _worker_client = sync_client(
                    os.environ["BENCH_FAKE_URL"], int(os.environ.get("BENCH_CONCURRENCY", "64"))
                )
    sync_send(_worker_client, to, text)


class AsyncSender:
    """Build inside a running loop; `await close()` at the end."""

    def __init__(self, base_url: str, pool_size: int) -> None:
        self.http = AsyncTwilioHttpClient(pool_connections=False)
        self.http.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=pool_size, limit_per_host=pool_size)
        )
        self.client = Client(ACCOUNT_SID, AUTH_TOKEN, http_client=self.http, environment=_ENV)
        self.client.api.base_url = base_url
        self._messages: Any = self.client.api.account.messages

    async def send(self, to: str, text: str) -> str:
        message = await asyncio.wait_for(
            self._messages.create_async(to=to, from_=FROM_NUMBER, body=text), timeout=TIMEOUT_S
        )
        return str(message.sid)

    async def close(self) -> None:
        await self.http.close()
