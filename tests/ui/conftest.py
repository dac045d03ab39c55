"""The admin console under test: its settings (three tokens: the operator `admin`, the
operator `oncall`, the viewer `grafana`) and helpers to sign in and read its forms."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import httpx
import pytest
from playwright.sync_api import Browser, sync_playwright
from pydantic import SecretStr

from smsrelay.settings import Settings
from tests.admin.conftest import TOKEN, admin_client
from tests.admin.conftest import admin_settings as admin_settings  # the fixtures, shared
from tests.admin.conftest import rclient as rclient
from tests.support.servers import require_tool
from tests.ui.browser import CHROMIUM, CHROMIUM_ARGS, live_admin

ONCALL = "oncall-token-0123456789"
VIEWER = "grafana-token-0123456789"
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@pytest.fixture
def console_settings(admin_settings: Settings) -> Settings:
    tokens = SecretStr(f"oncall:operator:{ONCALL},grafana:viewer:{VIEWER}")
    return admin_settings.model_copy(update={"admin_tokens": tokens})


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium, one per test module (skipped when it is not installed)."""
    path = require_tool(CHROMIUM, "apt-get install -y chromium; scripts/test does it as root")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def admin_url(console_settings: Settings) -> Iterator[str]:
    """The admin with the console's settings, served on a free loopback port."""
    with live_admin(console_settings) as url:
        yield url


@asynccontextmanager
async def browser_like(
    settings: Settings, client: tuple[str, int] = ("127.0.0.1", 50000)
) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the app with no bearer token: only what a browser would send."""
    async with admin_client(settings, headers={}, client=client) as http:
        yield http


async def sign_in(http: httpx.AsyncClient, token: str = TOKEN) -> str:
    """Sign in; the CSRF token of the new session."""
    response = await http.post("/ui/sign-in", data={"token": token})
    assert response.status_code == 303, response.text
    page = await http.get("/ui/failed")
    assert page.status_code == 200, page.text
    return csrf_of(page.text)


def csrf_of(html: str) -> str:
    match = _CSRF.search(html)
    assert match, "no CSRF token on the page"
    return match.group(1)
