"""The admin console in a real browser (Debian's Chromium, driven by Playwright): an operator
signs in, sees a dead letter, retries it to a new SID, deletes one, replays a reason and a
selection, and signs out; a viewer sees no change controls; a bad token is refused. Every
request a page makes goes to the service itself, and no page logs an error (a CSP violation
would be one). The README's screenshots of the overview and the list are taken here (the
trace's in test_console_trace_browser.py)."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from playwright.sync_api import Browser, expect

from smsrelay.settings import Settings
from smsrelay.streams.keys import WORKER_GROUP, FleetKeys, ShardKeys
from tests.admin.conftest import TOKEN
from tests.ui.browser import (
    PHONE,
    SCREENSHOTS,
    record_sent,
    row,
    run,
    same_origin_and_quiet,
    seed,
    set_hash,
    visit,
)
from tests.ui.conftest import VIEWER

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def test_an_operator_retries_deletes_replays_and_signs_out(
    browser: Browser, admin_url: str, console_settings: Settings, fake_twilio: Any
) -> None:
    (to_retry, retry_phone), (to_delete, delete_phone), *by_reason = seed(
        console_settings,
        {"reason": "permanent_error"},
        {"reason": "permanent_error"},
        {"reason": "poison"},
        {"reason": "poison"},
    )
    [(to_select, select_phone)] = seed(console_settings, {"reason": "retries_exhausted"})
    with visit(browser, admin_url) as seen:
        page = seen.page
        # Signing in from the console's address lands on the sign-in page, then the overview
        seen.goto("/ui/")
        expect(page).to_have_url(re.compile(r"/ui/sign-in$"))
        seen.sign_in(TOKEN)
        expect(page.get_by_role("heading", name="Overview")).to_be_visible()
        assert TOKEN not in page.url
        # The dead letter is in the list
        page.get_by_role("link", name="Failed SMS").click()
        expect(row(page, retry_phone)).to_contain_text("permanent_error")
        expect(row(page, retry_phone)).to_contain_text(to_retry)
        # Retry: a new SID, from the fake Twilio
        row(page, retry_phone).get_by_role("button", name="Retry", exact=True).click()
        expect(page.get_by_role("status")).to_contain_text("message SID SM")
        [sent] = fake_twilio.messages_to(retry_phone)
        expect(page.get_by_role("status")).to_contain_text(f"message SID {sent.sid}")
        expect(row(page, retry_phone)).to_contain_text("resolved")
        # Delete asks first; confirmed from the keyboard
        row(page, delete_phone).get_by_role("button", name="Delete", exact=True).click()
        expect(page.get_by_role("heading", name="Delete a failed SMS?")).to_be_visible()
        expect(page.get_by_text(to_delete)).to_be_visible()
        page.get_by_role("button", name="Delete", exact=True).focus()
        page.keyboard.press("Enter")
        expect(page.get_by_role("status")).to_contain_text(f"Deleted {to_delete}")
        expect(row(page, delete_phone)).to_have_count(0)
        # Replay a whole reason: the count first
        page.get_by_label("Replay every failed record of a reason").select_option("poison")
        page.get_by_role("button", name="Count and replay…").click()
        expect(page.locator("#replay-count")).to_contain_text("2 failed SMS records")
        page.get_by_role("button", name="Replay", exact=True).click()
        expect(page.get_by_role("status")).to_contain_text("Queued 2 for replay")
        for _, phone in by_reason:
            seen.goto(f"/ui/failed?phone={phone.replace('+', '%2B')}")
            expect(row(page, phone)).to_contain_text("replayed")
        # Select a row and replay it
        seen.goto("/ui/failed?reason=retries_exhausted")
        page.get_by_label(f"Select {to_select}").check()
        page.get_by_role("button", name="Replay", exact=True).click()
        expect(page.get_by_role("status")).to_contain_text("Queued 1 for replay")
        expect(row(page, select_phone)).to_contain_text("replayed")
        # The audit page has it all, by `admin`
        page.get_by_role("link", name="Audit").click()
        audit = page.locator("tbody")
        for target in (to_retry, to_delete, "reason:poison", to_select):
            expect(audit).to_contain_text(target)
        expect(audit.locator("tr").first).to_contain_text("admin")
        # Sign out: back to sign-in, and the console is closed again
        page.get_by_role("button", name="Sign out").click()
        expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
        seen.goto("/ui/failed")
        expect(page).to_have_url(re.compile(r"/ui/sign-in$"))
        assert seen.context.cookies() == []
        same_origin_and_quiet(seen)


def test_retry_errors_say_429_with_the_wait_and_502_with_the_answer(
    browser: Browser, admin_url: str, console_settings: Settings, fake_twilio: Any
) -> None:
    (limited, limited_phone), (refused, refused_phone) = seed(
        console_settings, {"reason": "rate_limited"}, {"reason": "permanent_error"}
    )

    async def fill_window() -> None:
        client = aioredis.Redis.from_url(console_settings.redis_url)
        try:
            now_ms = (await client.time())[0] * 1000
            members = {f"other-{n}": now_ms for n in range(console_settings.rate_limit_max)}
            await client.zadd(
                ShardKeys(console_settings.namespace).rate_limit(limited_phone), members
            )
        finally:
            await client.aclose()

    run(fill_window)
    fake_twilio.script(refused_phone, [{"status": 400, "code": 21610}])
    with visit(browser, admin_url) as seen:
        page = seen.page
        seen.sign_in(TOKEN)
        seen.goto("/ui/failed")
        row(page, limited_phone).get_by_role("button", name="Retry", exact=True).click()
        alert = page.get_by_role("alert")
        expect(alert).to_contain_text("Rate limited (429)")
        expect(alert).to_contain_text(re.compile(r"retry after \d+ s"))
        assert fake_twilio.messages_to(limited_phone) == []
        # The message offers the way past the limit, and it works
        alert.get_by_role("button", name="Retry now, bypassing the rate limit").click()
        expect(page.get_by_role("status")).to_contain_text("message SID SM")
        [sent] = fake_twilio.messages_to(limited_phone)
        expect(page.get_by_role("status")).to_contain_text(sent.sid)
        row(page, refused_phone).get_by_role("button", name="Retry", exact=True).click()
        expect(page.get_by_role("alert")).to_contain_text("Provider error (502)")
        expect(page.get_by_role("alert")).to_contain_text("21610")
        expect(row(page, refused_phone)).to_contain_text("failed")
        assert limited and refused
        same_origin_and_quiet(seen)


def test_a_viewer_sees_no_change_controls(
    browser: Browser, admin_url: str, console_settings: Settings
) -> None:
    [(message_id, phone)] = seed(console_settings, {"reason": "permanent_error"})
    with visit(browser, admin_url) as seen:
        page = seen.page
        seen.sign_in(VIEWER)
        expect(page.get_by_text("Signed in as grafana")).to_be_visible()
        seen.goto("/ui/failed")
        expect(row(page, phone)).to_contain_text(message_id)
        # Not disabled: absent
        for name in ("Retry", "Delete", "Replay", "Count and replay…"):
            expect(page.get_by_role("button", name=name, exact=True)).to_have_count(0)
        expect(page.get_by_role("checkbox")).to_have_count(0)
        expect(page.get_by_label("Replay every failed record of a reason")).to_have_count(0)
        # The confirmation pages refuse too
        seen.goto(f"/ui/failed/delete?id={message_id}")
        expect(page.get_by_role("alert")).to_contain_text("A viewer cannot delete records")
        same_origin_and_quiet(seen)


def test_a_bad_token_is_refused(browser: Browser, admin_url: str) -> None:
    with visit(browser, admin_url) as seen:
        page = seen.page
        seen.sign_in("not-a-token-" + uuid.uuid4().hex)
        expect(page.get_by_role("alert")).to_have_text("That admin token is not valid.")
        expect(page.get_by_label("Admin token")).to_have_attribute("aria-invalid", "true")
        expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
        assert seen.context.cookies() == []
        assert "not-a-token" not in page.url
        same_origin_and_quiet(seen)


def _fill_the_pipeline(settings: Settings) -> None:
    """A backlog with a consumer holding some of it, and waits in the delay set."""

    async def make() -> None:
        client = aioredis.Redis.from_url(settings.redis_url)
        keys = ShardKeys(settings.namespace)
        try:
            for n in range(7):
                await client.xadd(keys.requests, {"v": "1", "id": str(uuid.uuid4()), "n": str(n)})
            await client.xgroup_create(keys.requests, WORKER_GROUP, id="0", mkstream=True)
            await client.xreadgroup(WORKER_GROUP, "worker-7f3a-1", {keys.requests: ">"}, count=3)
            await client.zadd(keys.delayed, {"m1": 1, "m2": 2})
        finally:
            await client.aclose()

    run(make)


def test_overview_refreshes_itself_and_the_screenshots(
    browser: Browser, admin_url: str, console_settings: Settings
) -> None:
    _fill_the_pipeline(console_settings)
    seed(
        console_settings,
        *[{"reason": "permanent_error"} for _ in range(3)],
        *[
            {"reason": "retries_exhausted", "error": "Twilio 20429: Too Many Requests"}
            for _ in range(2)
        ],
        {"reason": "rate_limited", "error": "rate limit: 5 per 3600 s", "attempts": 0},
        {"reason": "poison", "error": "delivered 5 times without settling"},
    )
    # A quarter hour of sends, a breaker that opened twice and closed, and receipts
    # (13 minutes back at most: the window reaches 14 minutes before the current one, so a
    # minute that turns before the page reads them loses none of them)
    per_minute = [4, 6, 5, 7, 9, 8, 6, 5, 7, 8, 10, 9, 6, 3]
    record_sent(
        console_settings,
        [float(minute) for minute, n in enumerate(reversed(per_minute)) for _ in range(n)],
    )
    fleet = FleetKeys(console_settings.namespace)
    set_hash(console_settings, fleet.breaker, {"state": "closed", "opened_total": 2})
    set_hash(
        console_settings,
        fleet.delivery_counts,
        {"queued": 12, "sent": 95, "delivered": 88, "undelivered": 3, "failed": 1},
    )
    with visit(browser, admin_url) as seen:
        page = seen.page
        seen.sign_in(TOKEN)
        panel = page.locator("#overview-panel")
        expect(panel.locator('[data-figure="backlog"]')).to_have_text("7")
        expect(panel.locator('[data-figure="pending"]')).to_have_text("3")
        expect(panel.locator('[data-figure="delayed"]')).to_have_text("2")
        expect(panel).to_contain_text("worker-7f3a-1")
        expect(panel.locator('[data-figure="breaker"]')).to_have_text("closed")
        expect(panel.locator('[data-figure="opened-total"]')).to_have_text("2 times")
        expect(panel.locator('[data-figure="sent-total"]')).to_have_text(str(sum(per_minute)))
        expect(panel.locator('[data-figure="failed-total"]')).to_have_text("7")
        expect(panel.locator('[data-receipts="delivered"]')).to_have_text("88")
        expect(page.get_by_role("button", name="Pause refresh")).to_be_visible()
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "console-overview.png"), full_page=True)
        # A new dead letter shows up without a reload
        before = panel.locator('[data-figure="dead"]').inner_text()
        seed(console_settings, {"reason": "permanent_error"})
        expect(panel.locator('[data-figure="dead"]')).to_have_text(
            str(int(before) + 1), timeout=20_000
        )
        seen.goto("/ui/failed")
        expect(page.locator("tbody tr")).to_have_count(8)
        page.screenshot(path=str(SCREENSHOTS / "console-failed-sms.png"))
        same_origin_and_quiet(seen)
    for name in ("console-overview.png", "console-failed-sms.png"):
        assert (SCREENSHOTS / name).stat().st_size > 10_000, name


def test_readable_on_a_phone(browser: Browser, admin_url: str, console_settings: Settings) -> None:
    [(_, phone)] = seed(console_settings, {"reason": "permanent_error"})
    with visit(browser, admin_url, viewport=PHONE) as seen:
        page = seen.page
        seen.sign_in(TOKEN)
        for path in ("/ui/", "/ui/failed", "/ui/audit"):
            seen.goto(path)
            overflow = page.evaluate(
                "document.documentElement.scrollWidth - document.documentElement.clientWidth"
            )
            assert overflow <= 1, (path, overflow)
        seen.goto("/ui/failed")
        expect(row(page, phone).get_by_role("button", name="Retry", exact=True)).to_be_in_viewport()
        same_origin_and_quiet(seen)


def test_the_screenshots_are_in_the_readme() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    for name in ("console-overview.png", "console-failed-sms.png", "console-message-trace.png"):
        assert f"docs/img/{name}" in readme
        assert (Path(__file__).parents[2] / "docs" / "img" / name).is_file(), name
