"""Driving the console in Debian's Chromium with Playwright: the admin in a thread (uvicorn on
a free port, its real lifespan), the test Redis/Postgres and the fake Twilio behind it.

Playwright's own browser download cannot run here (no network but the package registries):
the tests launch /usr/bin/chromium, which scripts/test installs (apt-get) when missing.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import redis.asyncio as aioredis
import uvicorn
from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Locator, Page, Request

from smsrelay import clock
from smsrelay.admin.app import create_app
from smsrelay.settings import Settings
from smsrelay.store import sent_sms
from smsrelay.store.db import Database
from smsrelay.store.sent_sms import SentRow
from tests.store.dlq import add_dead_letter, mirror_now, unique_phone
from tests.support.servers import LOOPBACK, free_port

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# The README's screenshots: refreshed in docs/img when SMSRELAY_UPDATE_SCREENSHOTS=1 (so a test
# run does not leave tracked files changed), taken into a scratch folder otherwise.
SCREENSHOTS = (
    Path(__file__).parents[2] / "docs" / "img"
    if os.environ.get("SMSRELAY_UPDATE_SCREENSHOTS") == "1"
    else Path(tempfile.gettempdir()) / "smsrelay-screenshots"
)
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}

T = TypeVar("T")


def run(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run async set-up code from a sync test, on a loop of its own in a thread of its own
    (Playwright's sync API keeps an event loop of its own in this one)."""
    result: list[T] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(make()))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(timeout=60)
    if errors:
        raise errors[0]
    assert result, "the set-up code did not finish"
    return result[0]


@contextmanager
def live_admin(settings: Settings) -> Iterator[str]:
    """`create_app(settings)` served on a free loopback port; yields its URL."""
    port = free_port()
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
    thread = threading.Thread(target=server.run, daemon=True)
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


@dataclass
class Visit:
    """A browser context on the admin that records every request its pages make, and every
    console error (a Content-Security-Policy violation is one)."""

    base: str
    context: BrowserContext
    page: Page
    requests: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)

    def goto(self, path: str) -> None:
        self.page.goto(self.base + path)

    def foreign_requests(self) -> list[str]:
        return [url for url in self.requests if not url.startswith(self.base + "/")]

    def sign_in(self, token: str) -> None:
        self.goto("/ui/sign-in")
        self.page.get_by_label("Admin token").fill(token)
        self.page.get_by_role("button", name="Sign in").click()


@contextmanager
def visit(browser: Browser, base: str, viewport: dict[str, int] | None = None) -> Iterator[Visit]:
    context = browser.new_context(viewport=viewport or DESKTOP)  # type: ignore[arg-type]
    context.set_default_timeout(15_000)
    page = context.new_page()
    seen = Visit(base, context, page)

    def on_request(request: Request) -> None:
        seen.requests.append(request.url)

    page.on("request", on_request)

    def on_console(message: ConsoleMessage) -> None:
        # An error status of a page the test asked for is logged too; that is not a fault.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            seen.console_errors.append(message.text)

    page.on("console", on_console)
    try:
        yield seen
    finally:
        context.close()


def seed(settings: Settings, *letters: dict[str, Any]) -> list[tuple[str, str]]:
    """Dead letters mirrored into Postgres: (message id, phone) each."""

    async def make() -> list[tuple[str, str]]:
        client = aioredis.Redis.from_url(settings.redis_url)
        made = []
        try:
            for letter in letters:
                phone = letter.pop("phone", None) or unique_phone()
                message_id, _ = await add_dead_letter(client, settings, phone=phone, **letter)
                made.append((message_id, phone))
        finally:
            await client.aclose()
        await mirror_now(settings)
        return made

    return run(make)


def row(page: Page, text: str) -> Locator:
    return page.locator("tbody tr", has_text=text)


def same_origin_and_quiet(seen: Visit) -> None:
    assert seen.requests, "no request recorded"
    assert seen.foreign_requests() == []
    assert seen.console_errors == []


def record_sent(settings: Settings, minutes_ago: list[float]) -> None:
    """Rows of `sent_sms`, as the mirror writes them, sent that many minutes ago each."""

    async def make() -> None:
        now = clock.now()
        rows = [
            SentRow(uuid.uuid4(), unique_phone(), f"SM{uuid.uuid4().hex}", "otp", 1, at)
            for at in (now - timedelta(minutes=m) for m in minutes_ago)
        ]
        async with Database(settings.database_url).connection() as conn:
            await sent_sms.upsert_sent(conn, settings.namespace, rows)

    run(make)


def set_hash(settings: Settings, key: str, values: dict[str, str | int]) -> None:
    async def make() -> None:
        client = aioredis.Redis.from_url(settings.redis_url)
        try:
            for name, value in values.items():
                await client.hset(key, name, value)
        finally:
            await client.aclose()

    run(make)
