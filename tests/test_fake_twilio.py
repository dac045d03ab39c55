"""The fake Twilio, driven through the real twilio SDK wherever the Messages API is concerned."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from twilio.base.exceptions import TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client

from smsrelay.testing.fake_twilio import FakeTwilio, FakeTwilioThread
from smsrelay.testing.fake_twilio_script import Script, Step

ACCOUNT_SID = "AC" + "0" * 32
TOKEN = "token"  # the fake accepts any credentials unless told otherwise
FROM = "+15005550006"
TO = "+18761234567"
# A non-empty dict: with `{}` the SDK falls back to os.environ (TWILIO_REGION/EDGE).
NO_ENV = {"SMSRELAY_TEST": "1"}


@pytest.fixture
async def fake() -> AsyncIterator[FakeTwilio]:
    async with FakeTwilio() as server:
        yield server


async def _client(url: str, http: AsyncTwilioHttpClient, token: str = TOKEN) -> Any:
    client = Client(ACCOUNT_SID, token, http_client=http, environment=NO_ENV)
    client.api.base_url = url
    return client


@pytest.fixture
async def twilio(fake: FakeTwilio) -> AsyncIterator[Any]:
    async with AsyncTwilioHttpClient() as http:
        yield await _client(fake.url, http)


async def _send(twilio: Any, to: str = TO, body: str = "Hi John", **kwargs: Any) -> Any:
    kwargs.setdefault("from_", FROM)
    return await twilio.messages.create_async(to=to, body=body, **kwargs)


async def _send_error(twilio: Any, to: str = TO, **kwargs: Any) -> TwilioRestException:
    with pytest.raises(TwilioRestException) as info:
        await _send(twilio, to, **kwargs)
    return info.value


async def test_create_returns_a_queued_message_the_sdk_parses(
    fake: FakeTwilio, twilio: Any
) -> None:
    message = await _send(twilio, body="Hi John, we've received your booking")

    assert re.fullmatch(r"SM[0-9a-f]{32}", message.sid)
    assert message.status == "queued"
    assert (message.to, message.from_) == (TO, FROM)
    assert message.body == "Hi John, we've received your booking"
    assert message.account_sid == ACCOUNT_SID
    assert message.num_segments == "1"
    assert message.api_version == "2010-04-01"
    assert message.error_code is None
    assert message.uri == f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/{message.sid}.json"
    assert abs(message.date_created - datetime.now(UTC)) < timedelta(seconds=5)
    assert [m.sid for m in fake.messages] == [message.sid]

    fetched = await twilio.messages(message.sid).fetch_async()
    assert (fetched.sid, fetched.body, fetched.to) == (message.sid, message.body, TO)


@pytest.mark.parametrize(
    ("body", "segments"),
    [("a" * 160, "1"), ("a" * 161, "2"), ("😀" * 35, "1"), ("😀" * 36, "2")],
)
async def test_num_segments_follows_twilios_calculator(
    twilio: Any, body: str, segments: str
) -> None:
    assert (await _send(twilio, body=body)).num_segments == segments


async def test_messaging_service_send_starts_accepted_without_a_sender(twilio: Any) -> None:
    message = await _send(twilio, from_=None, messaging_service_sid="MG" + "1" * 32)
    assert (message.status, message.from_) == ("accepted", None)
    assert message.messaging_service_sid == "MG" + "1" * 32


@pytest.mark.parametrize(
    ("to", "from_", "code"),
    [
        ("+15005550001", FROM, 21211),
        ("+15005550002", FROM, 21612),
        ("+15005550003", FROM, 21408),
        ("+15005550004", FROM, 21610),
        ("+15005550009", FROM, 21614),
        (TO, "+15005550001", 21212),
        (TO, "+15005550008", 21611),
        ("not-a-number", FROM, 21211),
    ],
)
async def test_magic_numbers_fail_as_twilio_documents(
    fake: FakeTwilio, twilio: Any, to: str, from_: str, code: int
) -> None:
    error = await _send_error(twilio, to, from_=from_)
    assert (error.status, error.code) == (400, code)
    assert fake.messages == []
    assert fake.stats()["errors"] == {str(code): 1}


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"to": ""}, 21604),
        ({"from_": None}, 21603),
        ({"body": None}, 21602),
        ({"body": "x" * 1601}, 21617),
    ],
)
async def test_invalid_requests_fail_validation(
    twilio: Any, kwargs: dict[str, Any], code: int
) -> None:
    params: dict[str, Any] = {"to": TO, "from_": FROM, "body": "hi"} | kwargs
    params = {k: v for k, v in params.items() if v is not None}  # None: leave the field out
    with pytest.raises(TwilioRestException) as info:
        await twilio.messages.create_async(**params)
    assert (info.value.status, info.value.code) == (400, code)
    assert info.value.msg.startswith("Unable to create record: ")


async def test_a_body_of_exactly_1600_characters_is_accepted(twilio: Any) -> None:
    assert (await _send(twilio, body="x" * 1600)).num_segments == "11"


async def test_enforced_credentials_reject_a_wrong_token() -> None:
    async with (
        FakeTwilio(account_sid=ACCOUNT_SID, auth_token="right") as fake,
        AsyncTwilioHttpClient() as http,
    ):
        wrong = await _client(fake.url, http, token="wrong")
        error = await _send_error(wrong)
        assert (error.status, error.code) == (401, 20003)

        right = await _client(fake.url, http, token="right")
        assert (await _send(right)).status == "queued"
        assert len(fake.messages) == 1


async def test_unknown_message_is_20404(twilio: Any) -> None:
    with pytest.raises(TwilioRestException) as info:
        await twilio.messages("SM" + "f" * 32).fetch_async()
    assert (info.value.status, info.value.code) == (404, 20404)


async def test_scripted_503_then_success(fake: FakeTwilio, twilio: Any) -> None:
    fake.script(TO, [Step.error(503)])

    error = await _send_error(twilio)
    # No Twilio code: the SDK reports the HTTP status as the code.
    assert (error.status, error.code) == (503, 503)
    assert (await _send(twilio)).status == "queued"
    assert fake.accepted_count(TO, "Hi John") == 1
    assert [r.outcome for r in fake.requests] == ["error", "accepted"]


async def test_scripted_429_and_default_step(fake: FakeTwilio, twilio: Any) -> None:
    fake.script(TO, [{"status": 429, "code": 20429}], default=Step.error(500, 20500))

    first = await _send_error(twilio)
    assert (first.status, first.code) == (429, 20429)
    for _ in range(2):  # the default applies to every later request
        later = await _send_error(twilio)
        assert (later.status, later.code) == (500, 20500)
    assert fake.messages == []
    # Other numbers are not affected by the script.
    assert (await _send(twilio, to="+18767654321")).status == "queued"


async def test_dropped_connection_raises_server_disconnected(fake: FakeTwilio, twilio: Any) -> None:
    fake.script(TO, ["drop"])

    with pytest.raises(aiohttp.ServerDisconnectedError):
        await _send(twilio)
    assert fake.messages == []
    assert fake.stats()["dropped"] == 1
    assert (await _send(twilio)).status == "queued"


async def test_accept_then_drop_sends_without_telling_the_client(
    fake: FakeTwilio, twilio: Any
) -> None:
    fake.script(TO, [Step.accept_drop()])

    with pytest.raises(aiohttp.ClientError):
        await _send(twilio)
    await _send(twilio)  # the client's retry: a duplicate SMS
    assert fake.accepted_count(TO, "Hi John") == 2
    assert fake.duplicates() == {(TO, "Hi John"): 2}


async def test_delay_beyond_the_client_timeout(fake: FakeTwilio, twilio: Any) -> None:
    fake.script(TO, [Step.delay(0.5)])
    started = time.monotonic()

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(_send(twilio), timeout=0.1)
    assert len(fake.requests) == 1
    assert fake.messages == []
    # Twilio finishes what it started even though the client gave up.
    await fake.wait_for_messages(1, timeout_s=3)
    assert fake.accepted_count(TO, "Hi John") == 1
    assert time.monotonic() - started >= 0.5


async def test_global_latency_delays_every_send(fake: FakeTwilio, twilio: Any) -> None:
    fake.set_latency(0.3)
    started = time.monotonic()
    await asyncio.gather(_send(twilio), _send(twilio, to="+18767654321"))
    elapsed = time.monotonic() - started
    # Concurrent sends wait in parallel: about one latency, not two.
    assert 0.3 <= elapsed < 0.55


async def test_http_control_endpoints(fake: FakeTwilio, twilio: Any) -> None:
    async with aiohttp.ClientSession(base_url=fake.url) as http:
        # Given a script and a latency set over HTTP
        script = {"to": TO, "steps": [{"status": 503}, "drop"], "default": None}
        async with http.post("/_fake/script", json=script) as resp:
            assert (resp.status, await resp.json()) == (200, {"ok": True, "to": TO, "steps": 2})
        async with http.post("/_fake/latency", json={"seconds": 0.01}) as resp:
            assert (await resp.json())["latency_s"] == 0.01
        # When three sends go to the scripted number and one elsewhere
        assert (await _send_error(twilio)).status == 503
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await _send(twilio)
        sid = (await _send(twilio)).sid
        await _send(twilio, to="+18767654321", body="other")
        # Then the messages, requests and stats show it
        async with http.get("/_fake/messages", params={"to": TO}) as resp:
            messages = await resp.json()
        assert [(m["sid"], m["to"], m["from"], m["body"]) for m in messages] == [
            (sid, TO, FROM, "Hi John")
        ]
        assert isinstance(messages[0]["received_at"], float)
        async with http.get("/_fake/messages") as resp:
            assert len(await resp.json()) == 2
        async with http.get("/_fake/requests", params={"to": TO}) as resp:
            outcomes = [(r["outcome"], r["status"], r["code"]) for r in await resp.json()]
        assert outcomes == [("error", 503, 503), ("dropped", None, None), ("accepted", 201, None)]
        async with http.get("/_fake/stats") as resp:
            stats = await resp.json()
        assert stats == {
            "requests": 4,
            "accepted": 2,
            "errors": {"503": 1},
            "dropped": 1,
            "duplicates": [],
            "latency_s": 0.01,
        }
        # And a reset forgets everything
        async with http.post("/_fake/reset") as resp:
            assert resp.status == 200
        async with http.get("/_fake/stats") as resp:
            assert (await resp.json())["requests"] == 0
        assert (fake.messages, fake.latency_s) == ([], 0.0)


@pytest.mark.parametrize(
    ("path", "payload"),
    [
        ("/_fake/script", {"to": TO, "steps": [{"status": 201}]}),
        ("/_fake/script", {"to": TO, "steps": ["explode"]}),
        ("/_fake/script", {"steps": []}),
        ("/_fake/latency", {"seconds": -1}),
        ("/_fake/latency", {"ms": 5}),
    ],
)
async def test_control_endpoints_reject_bad_input(
    fake: FakeTwilio, path: str, payload: dict[str, Any]
) -> None:
    async with aiohttp.ClientSession() as http, http.post(fake.url + path, json=payload) as resp:
        assert resp.status == 400
        assert "error" in await resp.json()


def test_step_parsing_round_trips() -> None:
    assert Step.parse({"status": 429, "code": 20429}) == Step.error(429, 20429)
    assert Step.parse({"delay": 2}) == Step.delay(2.0)
    assert Step.parse("accept_drop") == Step.accept_drop()
    for step in (Step.error(503, delay_s=1.0), Step.drop(), Step.accept()):
        assert Step.parse(step.to_json()) == step
    script = Script(["drop"], default={"status": 500})
    assert [script.next_step(), script.next_step()] == [Step.drop(), Step.error(500)]


def test_thread_helper_serves_the_sync_sdk() -> None:
    with FakeTwilioThread() as fake:
        client = Client(ACCOUNT_SID, TOKEN, environment=NO_ENV)
        client.api.base_url = fake.url

        message = client.messages.create(to=TO, from_=FROM, body="sync")
        assert message.sid.startswith("SM")
        assert [(m.sid, m.body) for m in fake.messages] == [(message.sid, "sync")]

        fake.script(TO, [Step.error(503)])
        with pytest.raises(TwilioRestException) as info:
            client.messages.create(to=TO, from_=FROM, body="sync")
        assert info.value.status == 503
        assert fake.accepted_count(TO, "sync") == 1
        assert fake.stats()["requests"] == 2


def test_command_line_prints_its_url_and_stops_on_sigterm() -> None:
    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "smsrelay.testing.fake_twilio", "--port", "0"]
    with subprocess.Popen(cmd, cwd=root, stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            match = re.fullmatch(r"fake-twilio listening on (http://127\.0\.0\.1:\d+)\n", line)
            assert match, line
            client = Client(ACCOUNT_SID, TOKEN, environment=NO_ENV)
            client.api.base_url = match.group(1)
            assert client.messages.create(to=TO, from_=FROM, body="cli").status == "queued"
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
