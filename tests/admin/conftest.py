"""The admin app in the test's loop (its real lifespan: pool, Redis, Twilio provider)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from fastapi import FastAPI

from smsrelay.admin.app import create_app
from smsrelay.settings import Settings
from tests.conftest import make_settings
from tests.store.dlq import add_dead_letter, mirror_now, unique_phone

TOKEN = "test-admin-token-0123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LIST = "/api/admin/retry-failed-sms"
REPLAY = "/api/admin/dead-letters/replay"


@pytest.fixture
def admin_settings(
    redis_url: str, namespace: str, tmp_path: Path, fake_twilio: Any, database_url: str
) -> Settings:
    return make_settings(
        redis_url,
        namespace,
        tmp_path,
        fake_twilio.url,
        database_url=database_url,
        admin_token=TOKEN,
        replay_rate=200,
    )


@asynccontextmanager
async def admin_client(
    settings: Settings,
    headers: dict[str, str] | None = None,
    *,
    client: tuple[str, int] = ("127.0.0.1", 50000),
    app: FastAPI | None = None,
) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the app (by default a new one) calling from the address `client`."""
    app = app or create_app(settings)
    transport = httpx.ASGITransport(app=app, client=client)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=transport,
            base_url="http://admin",
            headers=AUTH if headers is None else headers,
        ) as http,
    ):
        yield http


@pytest.fixture
async def api(admin_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with admin_client(admin_settings) as client:
        yield client


@pytest.fixture
async def rclient(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def seed(
    settings: Settings, client: aioredis.Redis, *, phone: str | None = None, **kwargs: Any
) -> tuple[str, str, str]:
    """A mirrored dead letter: (message id, dead-letter entry id, phone)."""
    phone = phone or unique_phone()
    message_id, entry_id = await add_dead_letter(client, settings, phone=phone, **kwargs)
    await mirror_now(settings)
    return message_id, entry_id, phone


async def get_record(api: httpx.AsyncClient, phone: str) -> dict[str, Any]:
    body = (await api.get(LIST, params={"phone": phone})).json()
    [record] = body["data"]
    assert isinstance(record, dict)
    return record
