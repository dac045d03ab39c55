"""Delivery receipts end to end: a real worker sends through the fake Twilio, which POSTs
Twilio-signed status callbacks to the admin service served on a loopback port (its real
lifespan, in a thread of its own); a mirror with the provider's body look-up applies them to
Postgres. Helpers to sign callbacks as Twilio does and to read what Postgres and Redis hold."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis
import uvicorn
from twilio.request_validator import RequestValidator

from smsrelay.admin.app import create_app
from smsrelay.consumers.providers.twilio import TwilioProvider
from smsrelay.producers.publish import AsyncProducer
from smsrelay.settings import Settings
from smsrelay.store import sent_sms
from smsrelay.store.db import Database
from smsrelay.store.mirror import Mirror
from smsrelay.store.sent_sms import SentSms
from smsrelay.streams.clients import text
from smsrelay.streams.keys import FleetKeys, ShardKeys, shard_of
from smsrelay.testing.fake_twilio import CallbackRecord, FakeTwilioThread
from tests.admin.conftest import AUTH, TOKEN
from tests.admin.conftest import rclient as rclient  # the fixture, shared
from tests.conftest import TEST_AUTH_TOKEN, make_settings
from tests.support.servers import LOOPBACK, free_port
from tests.support.wait import wait_until
from tests.support.worker import running_worker

CALLBACK_PATH = "/twilio/status-callback"
SIGNATURE = "X-Twilio-Signature"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture
def admin_port() -> int:
    return free_port()


@pytest.fixture
def receipt_settings(
    redis_url: str,
    namespace: str,
    tmp_path: Path,
    fake_twilio: FakeTwilioThread,
    database_url: str,
    admin_port: int,
) -> Settings:
    """The worker's and the admin's settings: sends ask for callbacks to the live admin."""
    return make_settings(
        redis_url,
        namespace,
        tmp_path,
        fake_twilio.url,
        database_url=database_url,
        admin_token=TOKEN,
        twilio_status_callback=f"http://{LOOPBACK}:{admin_port}{CALLBACK_PATH}",
    )


@contextmanager
def serve_admin(settings: Settings, port: int) -> Iterator[str]:
    """`create_app(settings)` on `port` in a thread of its own; yields its base URL."""
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings),
            host=LOOPBACK,
            port=port,
            log_config=None,
            access_log=False,
            lifespan="on",
        )
    )
    thread = threading.Thread(target=server.run, daemon=True, name="live-admin")
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the admin did not start"
        time.sleep(0.05)
    try:
        yield f"http://{LOOPBACK}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)


@pytest.fixture
def live_admin(receipt_settings: Settings, admin_port: int) -> Iterator[str]:
    with serve_admin(receipt_settings, admin_port) as url:
        yield url


@asynccontextmanager
async def admin_http(base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=base_url, headers=AUTH, timeout=30) as http:
        yield http


# -- signing as Twilio signs ---------------------------------------------------------------------


def signature(url: str, form: dict[str, str], token: str = TEST_AUTH_TOKEN) -> str:
    return str(RequestValidator(token).compute_signature(url, form))


def callback_form(sid: str, status: str, error_code: int | None = None) -> dict[str, str]:
    """The fields Twilio posts (the fake's `callback_params`, for a message it never saw)."""
    form = {
        "AccountSid": "AC" + "0" * 32,
        "ApiVersion": "2010-04-01",
        "MessageSid": sid,
        "MessageStatus": status,
        "SmsSid": sid,
        "SmsStatus": status,
        "To": "+14155552671",
        "From": "+15005550006",
    }
    if error_code is not None:
        form["ErrorCode"] = str(error_code)
    return form


async def post_callback(
    http: httpx.AsyncClient,
    form: dict[str, str],
    *,
    signed_for: str | None,
    settings: Settings,
) -> httpx.Response:
    """POST `form` to the callback route, signed for `signed_for` (None: the configured URL;
    '' : no signature header at all)."""
    headers = dict(FORM)
    if signed_for != "":
        url = settings.twilio_status_callback if signed_for is None else signed_for
        assert url is not None
        headers[SIGNATURE] = signature(url, form)
    return await http.post(CALLBACK_PATH, data=form, headers={**headers, "Authorization": ""})


# -- the pipeline -------------------------------------------------------------------------------


async def publish(
    settings: Settings, phones: Sequence[str], body: str = "Your code is 4815"
) -> list[str]:
    async with AsyncProducer(settings) as producer:
        return [
            str((await producer.publish(phone, body, kind="otp", strict=True)).message_id)
            for phone in phones
        ]


async def send_all(
    settings: Settings, fake: FakeTwilioThread, phones: Sequence[str], timeout: float = 20
) -> list[str]:
    """Publish one SMS to each phone, let a worker send them all, and wait until every status
    callback the fake scheduled was answered. Returns the message ids, in order."""
    before = len(fake.messages)
    ids = await publish(settings, phones)
    async with running_worker(settings):
        await wait_until(
            lambda: len(fake.messages) >= before + len(phones), timeout, what="the SMS sent"
        )
    await asyncio.to_thread(fake.wait_for_callbacks, timeout)
    return ids


async def mirror(settings: Settings) -> int:
    """Mirror everything waiting (outcomes, dead letters, receipts), as a worker's mirror
    does: an undelivered message's body is fetched from the provider for its record."""
    provider = TwilioProvider(settings)
    try:
        return await Mirror(settings, name="test-mirror", fetch_body=provider.fetch_body).drain()
    finally:
        await provider.aclose()


async def read_sent(settings: Settings, message_id: str) -> SentSms | None:
    async with Database(settings.database_url).connection() as conn:
        return await sent_sms.get_sent(conn, settings.namespace, uuid.UUID(message_id))


async def trace_events(
    client: aioredis.Redis, settings: Settings, phone: str, message_id: str
) -> list[str]:
    """The message's Redis trace as `event|detail` (the time dropped)."""
    key = ShardKeys(settings.namespace, shard_of(phone, settings.shards)).trace(message_id)
    raw = await client.lrange(key, 0, -1)
    return [text(item).split("|", 1)[1] for item in raw]


async def forget_trace(
    client: aioredis.Redis, settings: Settings, phone: str, message_id: str
) -> None:
    """As SMSRELAY_TRACE_TTL_SECONDS would: the trace is gone from Redis."""
    key = ShardKeys(settings.namespace, shard_of(phone, settings.shards)).trace(message_id)
    assert await client.delete(key) == 1


async def receipts_waiting(client: aioredis.Redis, settings: Settings) -> int:
    return int(await client.xlen(FleetKeys(settings.namespace).receipts))


def answers(records: Sequence[CallbackRecord]) -> list[int | None]:
    return [r.http_status for r in records]


def sid_of(fake: FakeTwilioThread, phone: str, n: int = -1) -> str:
    return fake.messages_to(phone)[n].sid
