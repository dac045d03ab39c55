"""Who may post a receipt: only Twilio, proven by `X-Twilio-Signature` over the configured
public URL. A missing or wrong signature, or one for another URL, is 403 and changes nothing;
a valid one for a SID nobody sent is 2xx and changes nothing; what is no status callback at all
(10,000 fields, 1 MB, a 5,000-character SID, a status word nobody knows, bytes that are not
UTF-8) is a one-line 4xx, never a 500, and nothing of it is stored."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from urllib.parse import urlencode

import httpx
import pytest
import redis.asyncio as aioredis

from smsrelay.settings import Settings
from smsrelay.store.db import Database
from smsrelay.testing.fake_twilio import FakeTwilioThread, Receipts
from tests.admin.conftest import LIST, admin_client
from tests.receipts.conftest import (
    CALLBACK_PATH,
    FORM,
    SIGNATURE,
    admin_http,
    callback_form,
    mirror,
    post_callback,
    read_sent,
    receipts_waiting,
    send_all,
    sid_of,
    signature,
    trace_events,
)
from tests.store.dlq import unique_phone

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]


@dataclass(frozen=True)
class Sent:
    """One SMS a worker sent, whose only receipt so far said `sent`."""

    message_id: str
    phone: str
    sid: str


@dataclass(frozen=True)
class Snapshot:
    receipts_queued: int
    delivery: tuple[str | None, str | None, str | None]
    records: list[dict[str, object]]
    trace: list[str]
    parked: int


async def snapshot(
    settings: Settings, client: aioredis.Redis, http: httpx.AsyncClient, sent: Sent, sid: str
) -> Snapshot:
    row = await read_sent(settings, sent.message_id)
    assert row is not None
    records = (await http.get(LIST, params={"phone": sent.phone})).json()["data"]
    async with Database(settings.database_url).connection() as conn:
        cur = await conn.execute(
            "SELECT count(*) AS n FROM public.unmatched_receipts WHERE message_sid = %s", [sid]
        )
        found = await cur.fetchone()
    assert found is not None
    return Snapshot(
        await receipts_waiting(client, settings),
        (row.message_sid, row.delivery_status, row.error),
        records,
        await trace_events(client, settings, sent.phone, sent.message_id),
        int(found["n"]),
    )


@pytest.fixture
async def sent(receipt_settings: Settings, fake_twilio: FakeTwilioThread, live_admin: str) -> Sent:
    phone = unique_phone()
    fake_twilio.script_receipts(phone, Receipts(("sent",)))
    [message_id] = await send_all(receipt_settings, fake_twilio, [phone])
    await mirror(receipt_settings)
    return Sent(message_id, phone, sid_of(fake_twilio, phone))


async def test_a_bad_missing_or_misdirected_signature_is_403_and_changes_nothing(
    receipt_settings: Settings, live_admin: str, rclient: aioredis.Redis, sent: Sent
) -> None:
    url = receipt_settings.twilio_status_callback
    assert url is not None
    form = callback_form(sent.sid, "undelivered", 30003)
    async with admin_http(live_admin) as http:
        before = await snapshot(receipt_settings, rclient, http, sent, sent.sid)
        assert before.delivery == (sent.sid, "sent", None) and before.records == []
        forged = {
            "missing": await post_callback(http, form, signed_for="", settings=receipt_settings),
            "another URL": await post_callback(
                http, form, signed_for="https://attacker.example/hook", settings=receipt_settings
            ),
            "another path": await post_callback(
                http, form, signed_for=url + "/x", settings=receipt_settings
            ),
        }
        headers = {**FORM, "Authorization": ""}
        forged["wrong token"] = await http.post(
            CALLBACK_PATH,
            data=form,
            headers={**headers, SIGNATURE: signature(url, form, token="not-the-token")},
        )
        # Signed for one form, sent with another (the status changed in flight)
        signed = signature(url, callback_form(sent.sid, "delivered"))
        forged["another form"] = await http.post(
            CALLBACK_PATH, data=form, headers={**headers, SIGNATURE: signed}
        )
        forged["garbage"] = await http.post(
            CALLBACK_PATH, data=form, headers={**headers, SIGNATURE: "x" * 5000}
        )
        for what, response in forged.items():
            assert response.status_code == 403, (what, response.text)
            assert response.json() == {
                "success": False,
                "error": "invalid or missing X-Twilio-Signature",
            }, what
        # Nothing was queued, and the mirror finds nothing to change
        assert await receipts_waiting(rclient, receipt_settings) == 0
        await mirror(receipt_settings)
        assert await snapshot(receipt_settings, rclient, http, sent, sent.sid) == before


async def test_an_unknown_sid_with_a_valid_signature_is_2xx_and_changes_nothing(
    receipt_settings: Settings, live_admin: str, rclient: aioredis.Redis, sent: Sent
) -> None:
    stranger = "SM" + uuid.uuid4().hex
    async with admin_http(live_admin) as http:
        before = await snapshot(receipt_settings, rclient, http, sent, stranger)
        for status in ("sent", "undelivered"):
            response = await post_callback(
                http,
                callback_form(stranger, status, 30003 if status == "undelivered" else None),
                signed_for=None,
                settings=receipt_settings,
            )
            assert response.status_code == 204, response.text
        assert await receipts_waiting(rclient, receipt_settings) == 2
        await mirror(receipt_settings)
        after = await snapshot(receipt_settings, rclient, http, sent, stranger)
        # No message, record or trace changed; the receipts are parked for a row that may
        # still come (the mirror reads the outcome and receipt streams in no fixed order),
        # and forgotten after SMSRELAY_SENT_SMS_RETENTION_DAYS
        assert (after.delivery, after.records, after.trace) == (
            before.delivery,
            before.records,
            before.trace,
        )
        assert (after.receipts_queued, before.parked, after.parked) == (0, 0, 2)
        every = (await http.get(LIST, params={"reason": "undelivered"})).json()["data"]
        assert every == []


async def test_behind_a_proxy_the_public_url_is_what_is_signed(
    receipt_settings: Settings,
) -> None:
    public = "https://sms.example.com/hooks/twilio/status-callback?route=eu"
    settings = receipt_settings.model_copy(update={"twilio_status_callback": public})
    form = callback_form("SM" + uuid.uuid4().hex, "delivered")
    async with admin_client(settings, headers={}) as http:
        as_seen_here = await post_callback(
            http, form, signed_for="http://admin/twilio/status-callback", settings=settings
        )
        as_twilio_signs = await post_callback(http, form, signed_for=None, settings=settings)
    assert as_seen_here.status_code == 403
    assert as_twilio_signs.status_code == 204, as_twilio_signs.text


async def test_without_a_callback_url_the_route_is_404(receipt_settings: Settings) -> None:
    settings = receipt_settings.model_copy(update={"twilio_status_callback": None})
    form = callback_form("SM" + uuid.uuid4().hex, "delivered")
    async with admin_client(settings, headers={}) as http:
        response = await http.post(
            CALLBACK_PATH,
            data=form,
            headers={**FORM, SIGNATURE: signature("http://admin/twilio/status-callback", form)},
        )
    assert response.status_code == 404
    assert "SMSRELAY_TWILIO_STATUS_CALLBACK" in response.json()["error"]


def _signed_body(url: str, form: dict[str, str]) -> tuple[bytes, dict[str, str]]:
    return urlencode(form).encode(), {**FORM, SIGNATURE: signature(url, form)}


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
async def test_hostile_callbacks_are_a_clear_4xx_and_store_nothing(
    receipt_settings: Settings,
    live_admin: str,
    rclient: aioredis.Redis,
    sent: Sent,
    signed: bool,
) -> None:
    url = receipt_settings.twilio_status_callback
    assert url is not None
    many = callback_form(sent.sid, "undelivered", 30003) | {f"{n:x}": "" for n in range(10_000)}
    huge = callback_form(sent.sid, "undelivered", 30003) | {"Body": "x" * 1_048_576}
    long_sid = callback_form("SM" + "a" * 4_998, "undelivered", 30003)
    odd_status = callback_form(sent.sid, "teleported")
    cases: dict[str, tuple[bytes, dict[str, str], int, str]] = {}
    for name, form, status, words in (
        ("10,000 fields", many, 400, "more than 200 form fields"),
        ("1 MB", huge, 413, "request body larger than 64 KiB"),
        ("5,000-character SID", long_sid, 400, "MessageSid is not a message SID"),
        ("unknown status", odd_status, 400, "unknown MessageStatus 'teleported'"),
    ):
        body, headers = _signed_body(url, form)
        if not signed:
            headers = {**headers, SIGNATURE: "bm90IGEgc2lnbmF0dXJl"}
        # Unsigned, a well-formed callback is refused for its signature
        expected = status if signed or status != 400 or name == "10,000 fields" else 403
        cases[name] = (body, headers, expected, words)
    latin1 = f"MessageSid={sent.sid}&MessageStatus=delivered&To=M\xfcller"
    cases["not UTF-8 bytes"] = (
        latin1.encode("latin-1"),
        {**FORM, SIGNATURE: signature(url, {"MessageSid": sent.sid})},
        400,
        "the body is not UTF-8 form data",
    )
    cases["not UTF-8 escapes"] = (
        f"MessageSid={sent.sid}&MessageStatus=%FF%FE".encode(),
        {**FORM, SIGNATURE: signature(url, {"MessageSid": sent.sid})},
        400,
        "the body is not UTF-8 form data",
    )
    async with admin_http(live_admin) as http:
        before = await snapshot(receipt_settings, rclient, http, sent, sent.sid)
        for name, (body, headers, status, words) in cases.items():
            response = await http.post(
                CALLBACK_PATH, content=body, headers={**headers, "Authorization": ""}
            )
            assert response.status_code == status, (name, response.text[:300])
            error = response.json()["error"]
            if status != 403:
                assert words in error, (name, error)
            assert "\n" not in error and len(error) < 200, (name, error)
        assert await receipts_waiting(rclient, receipt_settings) == 0
        await mirror(receipt_settings)
        assert await snapshot(receipt_settings, rclient, http, sent, sent.sid) == before
        health = await http.get("/healthz")
    assert health.status_code == 200  # and the service still answers
