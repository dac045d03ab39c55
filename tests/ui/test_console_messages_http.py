"""The console's message pages and the overview's new figures over HTTP: a message's trace,
a phone's messages, the look-ups' one-line errors, the breaker, the delivery receipts and the
sends and failures per minute. (tests/ui/test_console_trace_browser.py drives them in Chromium.)"""

from __future__ import annotations

import html
import re
import uuid
from datetime import timedelta

import httpx
import pytest
import redis.asyncio as aioredis

from smsrelay import clock
from smsrelay.settings import Settings
from smsrelay.store import sent_sms
from smsrelay.store.db import Database
from smsrelay.store.sent_sms import SentRow
from smsrelay.streams.keys import FleetKeys, ShardKeys, shard_of
from tests.admin.conftest import seed
from tests.admin.test_security import Assets, csp
from tests.store.dlq import unique_phone
from tests.ui.conftest import VIEWER, browser_like, sign_in


def self_contained(page: httpx.Response) -> None:
    """Strict policy, no inline script or style, nothing loaded from elsewhere."""
    policy = csp(page)
    assert policy["script-src"] == "'self'" and policy["style-src"] == "'self'"
    assets = Assets()
    assets.feed(page.text)
    assert assets.inline_scripts == [] and assets.inline_handlers == []
    assert all(url.startswith(("/ui/", "#")) for url in assets.urls), assets.urls
    assert "style=" not in page.text


def text_of(page: httpx.Response) -> str:
    """The page's text, tags dropped and whitespace folded (for phrases across elements)."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page.text)).split())


async def record_sent(settings: Settings, phone: str, sid: str, minutes_ago: float = 0) -> str:
    message_id = uuid.uuid4()
    at = clock.now() - timedelta(minutes=minutes_ago)
    database = Database(settings.database_url)
    async with database.connection() as conn:
        await sent_sms.upsert_sent(
            conn, settings.namespace, [SentRow(message_id, phone, sid, "otp", 1, at)]
        )
    return str(message_id)


async def test_a_failed_message_s_trace_from_its_row(
    console_settings: Settings, rclient: aioredis.Redis
) -> None:
    message_id, _, phone = await seed(console_settings, rclient, reason="permanent_error")
    # The Redis trace of the message, as the scripts write it
    key = ShardKeys(console_settings.namespace, shard_of(phone, console_settings.shards)).trace(
        message_id
    )
    now_ms = (await rclient.time())[0] * 1000
    await rclient.rpush(
        key,
        f"{now_ms - 900}|published|",
        f"{now_ms - 800}|attempt|1",
        f"{now_ms - 10}|dead_lettered|permanent_error: Twilio 21610: unsubscribed <b>",
    )
    async with browser_like(console_settings) as http:
        await sign_in(http, VIEWER)  # a viewer reads traces
        listing = await http.get("/ui/failed", params={"phone": phone})
        assert f'href="/ui/messages/{message_id}"' in listing.text
        page = await http.get(f"/ui/messages/{message_id}")
    assert page.status_code == 200
    self_contained(page)
    words = text_of(page)
    assert f"Message {message_id}" in words
    assert "Status failed" in words and "Reason permanent_error" in words
    assert "Attempts 1" in words
    for event in ("published", "attempt", "dead_lettered"):
        assert f"<code>{event}</code>" in page.text
    assert "unsubscribed &lt;b&gt;" in page.text  # escaped, as every value
    assert page.text.index("<code>published</code>") < page.text.index("<code>dead_lettered</code>")
    assert 'class="trouble"' in page.text
    assert f'href="/ui/messages?phone={phone.replace("+", "%2B")}"' in page.text


async def test_a_sent_message_s_trace_from_postgres_and_a_phone_s_messages(
    console_settings: Settings, rclient: aioredis.Redis
) -> None:
    phone = unique_phone()
    sent_id = await record_sent(console_settings, phone, "SM" + "a" * 32, minutes_ago=1)
    failed_id, _, _ = await seed(console_settings, rclient, phone=phone, reason="retries_exhausted")
    async with browser_like(console_settings) as http:
        await sign_in(http)
        trace = await http.get(f"/ui/messages/{sent_id}")
        listing = await http.get("/ui/messages", params={"phone": phone})
    assert trace.status_code == 200
    words = text_of(trace)
    assert "Status sent" in words and "Message SID SM" + "a" * 32 in words
    assert "<code>sent</code>" in trace.text  # the event Postgres keeps
    assert listing.status_code == 200
    self_contained(listing)
    assert f"Messages to {phone}" in listing.text
    assert f"2 recent messages to {phone}, sent and failed, newest first." in text_of(listing)
    for message_id in (sent_id, failed_id):
        assert f'href="/ui/messages/{message_id}"' in listing.text
    assert listing.text.index(failed_id) < listing.text.index(sent_id)  # newest first
    assert "retries_exhausted" in listing.text


@pytest.mark.parametrize(
    ("path", "status", "line"),
    [
        ("/ui/messages/not-a-uuid", 400, "Message id: not a message id (a UUID): 'not-a-uuid'"),
        ("/ui/messages?id=12345", 400, "Message id: not a message id (a UUID): '12345'"),
        ("/ui/messages?id=", 400, "Message id: enter a message id"),
        ("/ui/messages?phone=12", 400, "Phone: must be an E.164 number like +14155552671"),
        ("/ui/messages?phone=", 400, "Phone: enter a phone number"),
        (f"/ui/messages/{uuid.UUID(int=7)}", 404, "Not found: no message with id"),
    ],
)
async def test_look_ups_say_what_is_wrong_in_one_line(
    console_settings: Settings, path: str, status: int, line: str
) -> None:
    async with browser_like(console_settings) as http:
        await sign_in(http, VIEWER)
        page = await http.get(path)
    assert page.status_code == status
    assert line in text_of(page)
    assert page.text.count('role="alert"') == 1
    assert "Traceback" not in page.text


async def test_the_message_id_box_goes_to_the_trace(console_settings: Settings) -> None:
    message_id = uuid.uuid4()
    async with browser_like(console_settings) as http:
        await sign_in(http)
        for page in ("/ui/", "/ui/failed", "/ui/messages"):
            text = (await http.get(page)).text
            assert "Message id</label>" in text, page
        found = await http.get("/ui/messages", params={"id": f"  {str(message_id).upper()} "})
        assert found.status_code == 303
        assert found.headers["location"] == f"/ui/messages/{message_id}"
        empty = await http.get("/ui/messages")
        assert empty.status_code == 200 and 'role="alert"' not in empty.text


async def test_signed_out_goes_to_sign_in(console_settings: Settings) -> None:
    async with browser_like(console_settings) as http:
        for path in (f"/ui/messages/{uuid.uuid4()}", "/ui/messages?phone=%2B14155552671"):
            response = await http.get(path)
            assert response.status_code == 303 and response.headers["location"] == "/ui/sign-in"


async def test_the_overview_shows_the_breaker_receipts_and_sends_per_minute(
    console_settings: Settings, rclient: aioredis.Redis
) -> None:
    phone = unique_phone()
    for n in range(3):
        await record_sent(console_settings, phone, f"SM{n:032d}")
    await seed(console_settings, rclient, reason="permanent_error")
    fleet = FleetKeys(console_settings.namespace)
    async with browser_like(console_settings) as http:
        await sign_in(http, VIEWER)
        page = await http.get("/ui/")
        self_contained(page)
        assert re.search(r'data-figure="breaker">closed<', page.text)
        assert 'data-figure="opened-total">0 times<' in page.text
        assert re.search(r'data-figure="sent-total">3<', page.text)
        assert re.search(r'data-figure="failed-total">1<', page.text)
        assert page.text.count("<tr") - page.text.count('<tr class="current"') >= 15
        assert "(so far)" in page.text
        assert "No delivery receipt yet" in page.text
        assert "Not built yet" not in page.text and "No data yet" not in page.text
        # The breaker opens and receipts arrive: the panel's next read says so
        await rclient.hset(
            fleet.breaker,
            mapping={
                "state": "open",
                "failures": 5,
                "opened_total": 2,
                "last_error": "Twilio 20500: Internal <Server> Error",
            },
        )
        await rclient.hset(
            fleet.delivery_counts, mapping={"undelivered": 1, "delivered": 7, "sent": 9}
        )
        panel = await http.get("/ui/overview/panel")
    assert panel.status_code == 200 and "<html" not in panel.text
    assert 'data-figure="breaker">OPEN<' in panel.text
    assert "card-alert" in panel.text
    assert "Twilio 20500: Internal &lt;Server&gt; Error" in panel.text
    assert 'data-figure="opened-total">2 times<' in panel.text
    receipts = re.findall(r'data-receipts="(\w+)">(\d+)<', panel.text)
    assert receipts == [("sent", "9"), ("delivered", "7"), ("undelivered", "1")]


async def test_the_message_pages_say_when_the_stores_are_away(console_settings: Settings) -> None:
    away = console_settings.model_copy(
        update={
            "database_url": "postgresql://postgres@127.0.0.1:1/postgres",
            "redis_url": "redis://127.0.0.1:1/0",
        }
    )
    async with browser_like(away) as http:
        assert (await http.post("/ui/sign-in", data={"token": VIEWER})).status_code == 303
        listing = await http.get("/ui/messages", params={"phone": "+14155552671"})
        assert listing.status_code == 503
        assert "Unavailable: Postgres unreachable" in listing.text
        trace = await http.get(f"/ui/messages/{uuid.uuid4()}")
        assert trace.status_code == 503 and "Unavailable:" in trace.text
        overview = await http.get("/ui/")
        assert overview.status_code == 200
        words = text_of(overview)
        assert "Sends and failures per minute Unknown while Postgres is unavailable." in words
        assert "Provider breaker Unknown while Redis is unavailable." in words
