"""The fake Twilio's signed status callbacks, and its documentation (`--help`, the user doc).

Kept apart from test_fake_twilio.py only to hold each file under 600 lines."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from twilio.base.exceptions import TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.request_validator import RequestValidator
from twilio.rest import Client

from smsrelay.cli import build_parser
from smsrelay.testing.fake_twilio import FakeTwilio, FakeTwilioThread, Receipts, Step
from smsrelay.testing.fake_twilio_control import CONTROL_ROUTES
from tests.support.servers import free_port
from tests.test_fake_twilio import ACCOUNT_SID, FROM, NO_ENV, OTHER, TO, TOKEN, _client

SECRET = "the-auth-token"
ROOT = Path(__file__).resolve().parents[1]


class Receiver:
    """A tiny status-callback endpoint that keeps what it was sent."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, dict[str, str], str]] = []
        self.answer = 204
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        self.posts.append((str(request.url), form, request.headers["X-Twilio-Signature"]))
        return web.Response(status=self.answer)

    def statuses(self, sid: str | None = None) -> list[str]:
        return [f["MessageStatus"] for _, f, _ in self.posts if sid in (None, f["MessageSid"])]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    box = Receiver()
    app = web.Application()
    app.router.add_post("/twilio/status", box.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    box.url = f"http://127.0.0.1:{runner.addresses[0][1]}/twilio/status?tenant=7"
    yield box
    await runner.cleanup()


@pytest.fixture
async def fake() -> AsyncIterator[FakeTwilio]:
    # Enforced credentials: the callbacks are signed with the token the send authenticated with.
    async with FakeTwilio(account_sid=ACCOUNT_SID, auth_token=SECRET) as server:
        yield server


@pytest.fixture
async def twilio(fake: FakeTwilio) -> AsyncIterator[Any]:
    async with AsyncTwilioHttpClient() as http:
        yield await _client(fake.url, http, token=SECRET)


async def _send(twilio: Any, callback: str, to: str = TO, **kwargs: Any) -> Any:
    return await twilio.messages.create_async(
        to=to, from_=FROM, body="Hi", status_callback=callback, **kwargs
    )


async def test_callbacks_are_signed_as_twilio_signs(
    fake: FakeTwilio, twilio: Any, receiver: Receiver
) -> None:
    message = await _send(twilio, receiver.url)
    await fake.wait_for_callbacks(timeout_s=5)

    assert receiver.statuses() == ["sent", "delivered"]
    for url, form, signature in receiver.posts:
        assert url == receiver.url  # the full URL, query included, is what is signed
        assert RequestValidator(SECRET).validate(url, form, signature)
        assert not RequestValidator("another-token").validate(url, form, signature)
        assert not RequestValidator(SECRET).validate(url, form | {"To": OTHER}, signature)
        assert form == {
            "AccountSid": ACCOUNT_SID,
            "ApiVersion": "2010-04-01",
            "From": FROM,
            "To": TO,
            "MessageSid": message.sid,
            "SmsSid": message.sid,
            "MessageStatus": form["MessageStatus"],
            "SmsStatus": form["MessageStatus"],
        }
    records = fake.callbacks(sid=message.sid)
    assert [(r.status, r.http_status, r.error) for r in records] == [
        ("sent", 204, None),
        ("delivered", 204, None),
    ]
    assert [r.signature for r in records] == [s for _, _, s in receiver.posts]
    fetched = await twilio.messages(message.sid).fetch_async()
    assert (fetched.status, fetched.error_code) == ("delivered", None)


async def test_receipts_are_scripted_per_number(
    fake: FakeTwilio, twilio: Any, receiver: Receiver
) -> None:
    numbers = [f"+1876555000{i}" for i in range(5)]
    fake.script_receipts(numbers[0], Receipts.ending("undelivered", 30003))
    fake.script_receipts(numbers[1], Receipts.ending("failed", 30005))
    fake.script_receipts(numbers[2], Receipts(("delivered", "sent")))  # out of order
    fake.script_receipts(
        numbers[3], Receipts(("queued", "sending", "sent", "sent", "delivered", "delivered"))
    )
    sids = [(await _send(twilio, receiver.url, to)).sid for to in numbers]
    await fake.wait_for_callbacks(timeout_s=5)

    assert [receiver.statuses(sid) for sid in sids] == [
        ["sent", "undelivered"],
        ["failed"],
        ["delivered", "sent"],
        ["queued", "sending", "sent", "sent", "delivered", "delivered"],
        ["sent", "delivered"],
    ]
    forms = {(f["MessageSid"], f["MessageStatus"]): f for _, f, _ in receiver.posts}
    assert forms[(sids[0], "undelivered")]["ErrorCode"] == "30003"
    assert forms[(sids[0], "undelivered")]["ErrorMessage"] == "Unreachable destination handset"
    assert forms[(sids[1], "failed")]["ErrorCode"] == "30005"
    assert "ErrorCode" not in forms[(sids[0], "sent")]
    # The resource keeps the most final status: a late "sent" does not undo "delivered".
    resources = [await twilio.messages(sid).fetch_async() for sid in sids]
    assert [(m.status, m.error_code) for m in resources] == [
        ("undelivered", 30003),
        ("failed", 30005),
        ("delivered", None),
        ("delivered", None),
        ("delivered", None),
    ]
    assert resources[1].date_sent is None  # a failed message never left


async def test_delayed_receipts_move_the_status_on_in_time(
    fake: FakeTwilio, twilio: Any, receiver: Receiver
) -> None:
    fake.script_receipts(None, Receipts(delay_s=0.6))  # every number
    message = await _send(twilio, receiver.url)

    assert fake.callbacks() == []
    assert (await twilio.messages(message.sid).fetch_async()).status == "queued"
    records = await fake.wait_for_callbacks(timeout_s=5)
    assert [r.status for r in records] == ["sent", "delivered"]
    assert records[1].at - records[0].at >= 0.5


async def test_a_receiver_that_is_down_or_failing_is_recorded(
    fake: FakeTwilio, twilio: Any, receiver: Receiver
) -> None:
    receiver.answer = 500
    await _send(twilio, receiver.url)
    closed_port = free_port()  # nothing listens there
    await _send(twilio, f"http://127.0.0.1:{closed_port}/cb", to=OTHER)
    await fake.wait_for_callbacks(timeout_s=10)

    assert [r.http_status for r in fake.callbacks(to=TO)] == [500, 500]
    down = fake.callbacks(to=OTHER)
    assert [r.http_status for r in down] == [None, None]
    assert all(r.error and "Connect" in r.error for r in down)
    assert fake.callback_summary() == {"attempted": 4, "delivered": 0, "failed": 4, "pending": 0}
    assert (await _send(twilio, receiver.url)).status == "queued"  # the fake still serves


async def test_an_answer_slower_than_the_client_still_calls_back(
    fake: FakeTwilio, twilio: Any, receiver: Receiver
) -> None:
    fake.script(TO, [Step.delay(1.0)])

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(_send(twilio, receiver.url), timeout=0.1)
    [message] = fake.messages
    assert fake.callback_summary()["pending"] == 2  # they wait for the (late) answer
    await fake.wait_for_callbacks(timeout_s=5)
    # The client never saw the SID, but the receipts name it.
    assert {f["MessageSid"] for _, f, _ in receiver.posts} == {message.sid}


async def test_invalid_status_callback_is_21609(twilio: Any) -> None:
    with pytest.raises(TwilioRestException) as info:
        await _send(twilio, "not a url")
    assert (info.value.status, info.value.code) == (400, 21609)


async def test_reset_cancels_receipts_not_sent_yet(
    fake: FakeTwilio, twilio: Any, receiver: Receiver
) -> None:
    fake.script_receipts(TO, Receipts(delay_s=5))
    await _send(twilio, receiver.url)
    fake.reset()
    assert await fake.wait_for_callbacks(timeout_s=1) == []
    assert fake.callback_summary()["pending"] == 0


async def test_receipts_and_callbacks_over_http(
    fake: FakeTwilio, twilio: Any, receiver: Receiver
) -> None:
    async with aiohttp.ClientSession(base_url=fake.url) as http:
        plan = {"to": TO, "final": "undelivered", "error_code": 30007, "before": ["sending"]}
        async with http.post("/_fake/receipts", json=plan) as resp:
            assert (await resp.json())["statuses"] == ["sending", "undelivered"]
        sid = (await _send(twilio, receiver.url)).sid
        async with http.post("/_fake/callbacks/wait", json={"timeout": 5}) as resp:
            assert await resp.json() == {
                "ok": True,
                "attempted": 2,
                "delivered": 2,
                "failed": 0,
                "pending": 0,
            }
        async with http.get("/_fake/callbacks", params={"to": TO}) as resp:
            found = await resp.json()
        assert [(c["sid"], c["status"], c["http_status"]) for c in found] == [
            (sid, "sending", 204),
            (sid, "undelivered", 204),
        ]
        assert found[1]["params"]["ErrorCode"] == "30007"
        await http.post("/_fake/receipts", json={"to": TO, "statuses": ["sent"], "delay": 30})
        await _send(twilio, receiver.url)
        async with http.post("/_fake/callbacks/wait", json={"timeout": 0.2}) as resp:
            assert (resp.status, (await resp.json())["pending"]) == (504, 1)


@pytest.mark.parametrize(
    "payload",
    [
        {"to": TO, "statuses": ["shipped"]},
        {"to": TO, "statuses": ["sent"], "error_code": 30003},
        {"to": TO, "final": "delivered", "statuses": ["sent"]},
        {"to": TO},
        {"to": 5, "final": "delivered"},
        {"to": TO, "final": "failed", "delay": -1},
        {"to": TO, "final": "failed", "colour": "red"},
    ],
)
async def test_bad_receipts_are_refused(fake: FakeTwilio, payload: dict[str, Any]) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{fake.url}/_fake/receipts", json=payload) as resp,
    ):
        assert resp.status == 400
        assert (await resp.json())["error"]


def test_thread_helper_plays_receipts_and_outages() -> None:
    with FakeTwilioThread() as fake:
        client = Client(ACCOUNT_SID, TOKEN, environment=NO_ENV)
        client.api.base_url = fake.url
        fake.script_receipts(TO, Receipts.ending("undelivered", 30006))
        fake.start_outage(Step.rate_limited(retry_after_s=1), seconds=60)
        assert fake.outage()["active"] is True
        fake.end_outage()
        sid = client.messages.create(to=TO, from_=FROM, body="x", status_callback=fake.url).sid
        records = fake.wait_for_callbacks(timeout_s=5)
        assert [(r.sid, r.status, r.http_status) for r in records] == [
            (sid, "sent", 404),
            (sid, "undelivered", 404),
        ]  # the fake itself: no such route
        assert fake.callbacks(sid=sid) == records
        assert fake.outage()["requests"] == 0


# -- documentation -----------------------------------------------------------------------------

_TOPICS = [
    "--account-sid",
    "--auth-token",
    "--latency-ms",
    "+15005550001",
    "+15005550008",
    "Retry-After",
    "20429",
    "outage",
    "StatusCallback",
    "X-Twilio-Signature",
    "30003",
    "accept_drop",
    "PageToken",
]


def test_help_lists_every_control_route_and_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["fake-twilio", "--help"])
    text = capsys.readouterr().out
    for method, path, _ in CONTROL_ROUTES:
        assert f"{method} {path}" in text, (method, path)
    for topic in _TOPICS:
        assert topic in text, topic


def test_user_document_covers_every_route_with_curl() -> None:
    text = (ROOT / "docs" / "fake-twilio.md").read_text()
    curls = [line for line in text.splitlines() if "curl" in line]
    for method, path, _ in CONTROL_ROUTES:
        assert f"{method} {path}" in text, (method, path)
        verb = "" if method == "GET" else f"-X {method} "
        assert any(f"{verb}$F{path}" in line.replace('"', "") for line in curls), (method, path)
    for topic in _TOPICS:
        assert topic in text, topic
