"""The console's message traces, phone look-ups and the overview's breaker, receipts and
sends per minute, in Debian's Chromium: messages a real worker sent and dead-lettered through
the fake Twilio are found by phone, by a failed row and by the "Message id" box; a viewer
reads them too; the overview follows the breaker opening without a reload. Every request a
page makes stays on the service, and no page logs an error (a CSP violation would be one)."""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest
import redis.asyncio as aioredis
from playwright.sync_api import Browser, Page, expect

from smsrelay.producers.publish import AsyncProducer
from smsrelay.settings import Settings
from smsrelay.streams.keys import FleetKeys, ShardKeys, shard_of
from tests.admin.conftest import TOKEN
from tests.store.dlq import mirror_now, unique_phone
from tests.support.wait import wait_until
from tests.support.worker import running_worker
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

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def send_through_a_worker(settings: Settings, fake_twilio: Any) -> dict[str, tuple[str, str]]:
    """Publish one message the fake Twilio accepts and one it refuses for good, let a worker
    settle both, and mirror the outcomes: {"sent"/"failed": (message id, phone)}."""
    ok, refused = unique_phone(), unique_phone()
    fake_twilio.script(refused, [], default={"status": 400, "code": 21610})

    async def make() -> dict[str, tuple[str, str]]:
        async with AsyncProducer(settings) as producer:
            sent = await producer.publish(ok, "Your code is 481 516", kind="otp", strict=True)
            failed = await producer.publish(refused, "Your table is booked", strict=True)
        client = aioredis.Redis.from_url(settings.redis_url)
        dead = ShardKeys(settings.namespace, shard_of(refused, settings.shards)).dead
        try:
            async with running_worker(settings):
                await wait_until(
                    lambda: len(fake_twilio.messages_to(ok)) == 1, 20, what="the SMS sent"
                )

                async def dead_lettered() -> bool:
                    return int(await client.xlen(dead)) == 1

                await wait_until(dead_lettered, 20, what="the refused SMS dead-lettered")
        finally:
            await client.aclose()
        await mirror_now(settings)
        return {
            "sent": (str(sent.message_id), ok),
            "failed": (str(failed.message_id), refused),
        }

    return run(make)


def events(page: Page) -> list[str]:
    return page.locator("table.events tbody tr td[data-label='Event']").all_inner_texts()


def test_traces_from_a_phone_a_failed_row_and_the_message_id_box(
    browser: Browser, admin_url: str, console_settings: Settings, fake_twilio: Any
) -> None:
    messages = send_through_a_worker(console_settings, fake_twilio)
    sent_id, ok_phone = messages["sent"]
    failed_id, refused_phone = messages["failed"]
    [sms] = fake_twilio.messages_to(ok_phone)
    with visit(browser, admin_url) as seen:
        page = seen.page
        seen.sign_in(TOKEN)
        # The overview counts the send and the failure in this quarter hour
        panel = page.locator("#overview-panel")
        expect(panel.locator('[data-figure="sent-total"]')).to_have_text("1")
        expect(panel.locator('[data-figure="failed-total"]')).to_have_text("1")
        expect(panel.locator('[data-figure="breaker"]')).to_have_text("closed")
        # A phone's messages, then the trace of the one sent
        page.get_by_role("link", name="Messages").click()
        page.get_by_label("Phone").fill(ok_phone)
        page.get_by_role("button", name="List messages").click()
        expect(page.get_by_role("heading", name=f"Messages to {ok_phone}")).to_be_visible()
        expect(row(page, sent_id)).to_contain_text("sent")
        expect(row(page, sent_id)).to_contain_text(sms.sid)
        row(page, sent_id).get_by_role("link", name=sent_id).click()
        expect(page.get_by_role("heading", name=f"Message {sent_id}")).to_be_visible()
        expect(page.locator('[data-figure="status"]')).to_have_text("sent")
        expect(page.locator('[data-figure="sid"]')).to_have_text(sms.sid)
        expect(page.locator('[data-figure="attempts"]')).to_have_text("1")
        trail = events(page)
        assert trail[0] == "published" and "sent" in trail, trail
        expect(row(page, "sent")).to_contain_text(sms.sid)
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "console-message-trace.png"), full_page=True)
        # From the failed row of the refused one
        page.get_by_role("link", name="Failed SMS").click()
        row(page, refused_phone).get_by_role("link", name=failed_id).click()
        expect(page.locator('[data-figure="status"]')).to_have_text("failed")
        expect(page.locator('[data-figure="reason"]')).to_have_text("permanent_error")
        assert events(page)[-1] == "dead_lettered"
        expect(row(page, "dead_lettered")).to_contain_text("21610")
        # The "Message id" box on the failed list, and on the overview
        page.get_by_role("link", name="Failed SMS").click()
        page.get_by_label("Message id").fill(sent_id)
        page.get_by_role("button", name="Show trace").click()
        expect(page).to_have_url(re.compile(f"/ui/messages/{sent_id}$"))
        page.get_by_role("link", name="Overview").click()
        page.get_by_label("Message id").fill("not-an-id")
        page.get_by_role("button", name="Show trace").click()
        expect(page.get_by_role("alert")).to_have_text(
            "Message id: not a message id (a UUID): 'not-an-id'"
        )
        expect(page.get_by_label("Message id")).to_have_value("not-an-id")
        page.get_by_label("Message id").fill(str(uuid.uuid4()))
        page.get_by_role("button", name="Show trace").click()
        expect(page.get_by_role("alert")).to_contain_text("Not found: no message with id")
        same_origin_and_quiet(seen)
    assert (SCREENSHOTS / "console-message-trace.png").stat().st_size > 10_000


def test_a_viewer_reads_traces_and_a_phone_s_messages(
    browser: Browser, admin_url: str, console_settings: Settings
) -> None:
    [(message_id, phone)] = seed(console_settings, {"reason": "retries_exhausted"})
    with visit(browser, admin_url) as seen:
        page = seen.page
        seen.sign_in(VIEWER)
        seen.goto("/ui/failed")
        row(page, phone).get_by_role("link", name=message_id).click()
        expect(page.locator('[data-figure="reason"]')).to_have_text("retries_exhausted")
        expect(page.get_by_role("button", name="Retry")).to_have_count(0)
        page.get_by_role("navigation", name="Breadcrumb").get_by_role("link", name=phone).click()
        expect(row(page, message_id)).to_contain_text("failed")
        page.get_by_label("Phone").fill("12")
        page.get_by_role("button", name="List messages").click()
        expect(page.get_by_role("alert")).to_have_text(
            "Phone: must be an E.164 number like +14155552671"
        )
        same_origin_and_quiet(seen)


def test_the_overview_follows_the_breaker_and_the_sends_without_a_reload(
    browser: Browser, admin_url: str, console_settings: Settings
) -> None:
    record_sent(console_settings, [1, 1, 2])
    fleet = FleetKeys(console_settings.namespace)
    with visit(browser, admin_url) as seen:
        page = seen.page
        seen.sign_in(TOKEN)
        panel = page.locator("#overview-panel")
        expect(panel.locator('[data-figure="breaker"]')).to_have_text("closed")
        expect(panel.locator('[data-figure="sent-total"]')).to_have_text("3")
        expect(panel).to_contain_text("No delivery receipt yet")
        # The breaker opens, a send lands and receipts arrive while the page is open
        set_hash(
            console_settings,
            fleet.breaker,
            {"state": "open", "opened_total": 1, "last_error": "Twilio 20003: Authenticate"},
        )
        record_sent(console_settings, [0])
        set_hash(console_settings, fleet.delivery_counts, {"delivered": 3, "undelivered": 1})
        expect(panel.locator('[data-figure="breaker"]')).to_have_text("OPEN", timeout=20_000)
        expect(panel.locator(".breaker-open")).to_contain_text("no message goes to the provider")
        expect(panel).to_contain_text("Twilio 20003: Authenticate")
        expect(panel.locator('[data-figure="opened-total"]')).to_have_text("1 time")
        expect(panel.locator('[data-figure="sent-total"]')).to_have_text("4")
        expect(panel.locator('[data-receipts="delivered"]')).to_have_text("3")
        # The chart is a table: one row a minute, the current one first
        rates = panel.locator("table.rates tbody tr")
        expect(rates).to_have_count(15)
        expect(rates.first).to_contain_text("(so far)")
        same_origin_and_quiet(seen)


def test_the_message_pages_on_a_phone(
    browser: Browser, admin_url: str, console_settings: Settings
) -> None:
    [(message_id, phone)] = seed(console_settings, {"reason": "permanent_error"})
    with visit(browser, admin_url, viewport=PHONE) as seen:
        page = seen.page
        seen.sign_in(TOKEN)
        for path in (
            f"/ui/messages/{message_id}",
            f"/ui/messages?phone={phone.replace('+', '%2B')}",
            "/ui/messages",
        ):
            seen.goto(path)
            expect(page.locator("h1")).to_be_visible()
            overflow = page.evaluate(
                "document.documentElement.scrollWidth - document.documentElement.clientWidth"
            )
            assert overflow <= 1, (path, overflow)
        same_origin_and_quiet(seen)
