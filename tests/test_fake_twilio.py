"""The fake Twilio, driven through the real twilio SDK wherever the Messages API is concerned."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import time
from base64 import b64encode
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client

from smsrelay.testing.fake_twilio import FakeTwilio, FakeTwilioThread, Receipts
from smsrelay.testing.fake_twilio_script import Script, Step
from tests.support.wait import wait_until

ACCOUNT_SID = "AC" + "0" * 32
TOKEN = "token"  # the fake accepts any credentials unless told otherwise
FROM = "+15005550006"
TO = "+18761234567"
OTHER = "+18767654321"
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


def _auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": "Basic " + b64encode(f"{ACCOUNT_SID}:{token}".encode()).decode()}


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


async def test_delay_beyond_the_client_timeout_still_sends(fake: FakeTwilio, twilio: Any) -> None:
    fake.script(TO, [Step.delay(1.0)])

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(_send(twilio), timeout=0.1)
    # Twilio took the message when the request arrived: the phone gets it, the client cannot
    # know, and the Messages list already shows it while the answer is still on its way.
    [request] = fake.requests
    [message] = fake.messages
    assert (request.outcome, request.sid, request.status) == ("accepted", message.sid, None)
    [listed] = await twilio.messages.list_async(to=TO)
    assert (listed.sid, listed.status) == (message.sid, "delivered")
    await wait_until(lambda: request.status is not None)  # the late answer goes to nobody
    assert request.status == 201
    assert fake.accepted_count(TO, "Hi John") == 1


async def test_accept_then_drop_after_a_delay_records_the_message_first(
    fake: FakeTwilio, twilio: Any
) -> None:
    fake.script(TO, [Step.accept_drop(delay_s=0.6)])
    sending = asyncio.create_task(_send(twilio))

    [message] = await fake.wait_for_messages(1, timeout_s=5)
    assert not sending.done()  # accepted, the connection not dropped yet
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await sending
    since = datetime.now(UTC) - timedelta(minutes=1)
    found = await twilio.messages.list_async(to=TO, date_sent_after=since)
    assert [m.sid for m in found] == [message.sid]
    assert fake.stats()["dropped"] == 1


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
        ("/_fake/outage", {"seconds": -1}),
        ("/_fake/outage", {"status": 200}),
        ("/_fake/outage", {"action": "accept"}),
        ("/_fake/outage", {"status": 503, "retry_after": "soon"}),
        ("/_fake/outage", {"action": "drop", "retry_after": 1}),
        ("/_fake/outage", "not json"),
        ("/_fake/script", "not json"),
        ("/_fake/callbacks/wait", {"timeout": 0}),
    ],
)
async def test_control_endpoints_reject_bad_input(
    fake: FakeTwilio, path: str, payload: dict[str, Any] | str
) -> None:
    body = payload if isinstance(payload, str) else json.dumps(payload)
    async with aiohttp.ClientSession() as http, http.post(fake.url + path, data=body) as resp:
        assert resp.status == 400
        error = (await resp.json())["error"]
        assert error and "\n" not in error


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


# -- outages of every number ------------------------------------------------------------------


async def test_an_outage_fails_every_request_and_leaves_scripts_for_after(
    fake: FakeTwilio, twilio: Any
) -> None:
    earlier = await _send(twilio)
    fake.script(TO, [Step.error(400, 21610)])
    fake.start_outage(Step.error(503, 20503))

    for to in (TO, OTHER):
        error = await _send_error(twilio, to)
        assert (error.status, error.code) == (503, 20503)
    with pytest.raises(TwilioRestException) as fetched:
        await twilio.messages(earlier.sid).fetch_async()
    assert fetched.value.status == 503
    # The SDK's list reports a failed page as a bare TwilioException carrying the response.
    with pytest.raises(TwilioException, match="Unable to fetch page") as listed:
        await twilio.messages.list_async(to=TO)
    assert listed.value.args[1].status_code == 503
    assert fake.outage()["requests"] == 4
    assert fake.outage()["active"] is True

    fake.end_outage()
    assert (await _send_error(twilio)).code == 21610  # the script's step was kept for now
    assert (await _send(twilio, to=OTHER)).status == "queued"
    assert [m.sid for m in fake.messages] == [earlier.sid, fake.messages[1].sid]
    assert fake.outage() | {"started_at": 0, "ended_at": 0} == {
        "active": False,
        "step": None,
        "remaining_s": None,
        "requests": 4,
        "started_at": 0,
        "ended_at": 0,
    }


async def test_a_timed_outage_ends_by_itself(fake: FakeTwilio, twilio: Any) -> None:
    fake.start_outage("drop", seconds=0.3)

    with pytest.raises(aiohttp.ServerDisconnectedError):
        await _send(twilio)
    await asyncio.sleep(0.4)
    assert (await _send(twilio)).status == "queued"
    assert fake.outage()["active"] is False
    assert fake.outage()["requests"] == 1
    assert fake.stats()["dropped"] == 1


async def test_an_outage_of_lost_answers_sends_every_message(fake: FakeTwilio, twilio: Any) -> None:
    fake.start_outage(Step.accept_drop())

    for to in (TO, OTHER):
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await _send(twilio, to)
    fake.end_outage()
    assert sorted(m.to for m in fake.messages) == sorted([TO, OTHER])


# -- 429 with Retry-After ----------------------------------------------------------------------


async def test_429_carries_retry_after_like_twilio(fake: FakeTwilio, twilio: Any) -> None:
    fake.script(TO, [Step.rate_limited(retry_after_s=2)])

    error = await _send_error(twilio)
    assert (error.status, error.code) == (429, 20429)
    assert twilio.http_client._test_only_last_response.headers["Retry-After"] == "2"
    async with aiohttp.ClientSession() as http:
        await http.post(
            f"{fake.url}/_fake/outage",
            json={"status": 429, "code": 20429, "retry_after": 1.5, "seconds": 30},
        )
        path = f"{fake.url}/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"
        form = {"To": OTHER, "From": FROM, "Body": "x"}
        async with http.post(path, data=form, headers=_auth()) as resp:
            assert (resp.status, resp.headers["Retry-After"]) == (429, "1.5")
            assert (await resp.json())["code"] == 20429
    assert fake.messages == []


# -- the Messages list -------------------------------------------------------------------------


async def test_list_filters_and_pages_through_the_sdk(fake: FakeTwilio, twilio: Any) -> None:
    started = datetime.now(UTC).replace(microsecond=0)
    mine = [await _send(twilio, body=f"n{i}") for i in range(5)]
    await _send(twilio, to=OTHER)
    await _send(twilio, from_="+15005550007")

    listed = await twilio.messages.list_async(to=TO, from_=FROM, page_size=2)
    assert [m.sid for m in listed] == [m.sid for m in reversed(mine)]  # newest first
    first = listed[-1]
    assert (first.to, first.from_, first.body, first.status) == (TO, FROM, "n0", "delivered")
    assert first.num_segments == "1"
    assert abs(first.date_sent - started) < timedelta(seconds=5)
    assert abs(first.date_created - started) < timedelta(seconds=5)
    assert len(await twilio.messages.list_async(to=TO, limit=3)) == 3
    assert len(await twilio.messages.list_async()) == 7
    assert len(await twilio.messages.list_async(from_="+15005550007")) == 1

    async def count(**dates: Any) -> int:
        return len(await twilio.messages.list_async(to=TO, from_=FROM, **dates))

    hour = timedelta(hours=1)
    assert await count(date_sent_after=started) == 5
    assert await count(date_sent_after=started + hour) == 0
    assert await count(date_sent_before=started - hour) == 0
    assert await count(date_sent_before=started + hour, date_sent_after=started - hour) == 5
    assert await count(date_sent=started.date()) == 5
    assert await count(date_sent="2001-01-01") == 0


def test_the_sync_sdk_lists_and_pages_through_the_thread_helper() -> None:
    with FakeTwilioThread() as fake:
        client = Client(ACCOUNT_SID, TOKEN, environment=NO_ENV)
        client.api.base_url = fake.url
        sids = [client.messages.create(to=TO, from_=FROM, body=f"s{i}").sid for i in range(3)]

        listed = client.messages.list(to=TO, page_size=2)
        assert [m.sid for m in listed] == sids[::-1]
        assert [m.body for m in client.messages.list(to=TO, limit=1)] == ["s2"]


async def test_list_payload_is_twilios_page(fake: FakeTwilio, twilio: Any) -> None:
    sids = [(await _send(twilio, body=f"p{i}")).sid for i in range(3)]
    base = f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"
    async with aiohttp.ClientSession(base_url=fake.url, headers=_auth()) as http:
        async with http.get(base, params={"To": TO, "PageSize": "2"}) as resp:
            page = await resp.json()
        assert set(page) == {
            "end",
            "first_page_uri",
            "messages",
            "next_page_uri",
            "page",
            "page_size",
            "previous_page_uri",
            "start",
            "uri",
        }
        assert (page["page"], page["page_size"], page["start"], page["end"]) == (0, 2, 0, 1)
        assert [m["sid"] for m in page["messages"]] == [sids[2], sids[1]]
        assert page["previous_page_uri"] is None
        assert page["uri"] == f"{base}?To=%2B18761234567&PageSize=2&Page=0"
        assert page["next_page_uri"].endswith(f"&Page=1&PageToken=PA{sids[1]}")
        async with http.get(page["next_page_uri"]) as resp:
            second = await resp.json()
        assert [m["sid"] for m in second["messages"]] == [sids[0]]
        assert second["next_page_uri"] is None
        assert (second["page"], second["start"]) == (1, 2)
        async with http.get(second["previous_page_uri"]) as resp:
            assert [m["sid"] for m in (await resp.json())["messages"]] == [sids[2], sids[1]]
        for params in (
            {"PageSize": "0"},
            {"PageSize": "x"},
            {"DateSent>": "yesterday"},
            {"PageToken": "PASMnope"},
            {"Page": "-1"},
        ):
            async with http.get(base, params=params) as resp:
                error = await resp.json()
                assert (resp.status, error["code"]) == (400, 20001), params
                assert "Invalid parameter" in error["message"]
        async with http.get(base, headers={"Authorization": "Bearer x"}) as resp:
            assert resp.status == 401


async def test_a_message_not_sent_yet_has_no_date_sent(fake: FakeTwilio, twilio: Any) -> None:
    fake.script_receipts(TO, Receipts(delay_s=1.0))
    message = await _send(twilio)

    fetched = await twilio.messages(message.sid).fetch_async()
    assert (fetched.status, fetched.date_sent) == ("queued", None)
    assert len(await twilio.messages.list_async(to=TO)) == 1
    since = datetime.now(UTC) - timedelta(hours=1)
    assert await twilio.messages.list_async(to=TO, date_sent_after=since) == []
    await wait_until(lambda: fake.messages[0].status == "delivered")
    fetched = await twilio.messages(message.sid).fetch_async()
    assert fetched.status == "delivered"
    assert fetched.date_sent is not None
