"""The console over HTTP as a browser speaks it: sign-in, the session cookie, CSRF, roles,
headers, and the pages' inputs. (The browser tests drive the same pages in Chromium.)"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import redis.asyncio as aioredis

from smsrelay.settings import Settings
from tests.admin.conftest import AUTH, LIST, TOKEN, get_record, seed
from tests.admin.test_security import Assets, csp
from tests.ui.conftest import ONCALL, VIEWER, browser_like, csrf_of, sign_in

AUDIT = "/api/admin/audit"


async def audit_rows(settings: Settings) -> list[dict[str, Any]]:
    from tests.admin.conftest import admin_client

    async with admin_client(settings) as api:
        data: list[dict[str, Any]] = (await api.get(AUDIT)).json()["data"]
        return data


async def test_the_sign_in_page_is_labelled_strict_and_self_contained(
    console_settings: Settings,
) -> None:
    async with browser_like(console_settings) as http:
        assert (await http.get("/ui/")).headers["location"] == "/ui/sign-in"
        page = await http.get("/ui/sign-in")
    assert page.status_code == 200
    assert '<label for="token">Admin token</label>' in page.text
    assert 'id="token" name="token" type="password"' in page.text
    assert '<button type="submit">Sign in</button>' in page.text
    assert 'method="post"' in page.text  # the token goes in a body, never a URL
    policy = csp(page)
    assert policy["script-src"] == "'self'" and policy["style-src"] == "'self'"
    assert policy["default-src"] == "'none'" and policy["frame-ancestors"] == "'none'"
    assert page.headers["Cache-Control"] == "no-store"
    assets = Assets()
    assets.feed(page.text)
    assert assets.inline_scripts == [] and assets.inline_handlers == []
    assert all(url.startswith(("/ui/", "#")) for url in assets.urls), assets.urls
    assert "style=" not in page.text


async def test_a_session_cookie_not_the_token(console_settings: Settings) -> None:
    async with browser_like(console_settings) as http:
        response = await http.post("/ui/sign-in", data={"token": ONCALL})
        assert response.status_code == 303 and response.headers["location"] == "/ui/"
        cookie = response.headers["set-cookie"]
        value = cookie.split(";")[0].split("=", 1)[1]
        assert ONCALL not in cookie and len(value) >= 40
        attributes = {a.strip().lower() for a in cookie.split(";")[1:]}
        assert {"httponly", "samesite=strict", "path=/ui"} <= attributes
        assert "secure" not in attributes  # plain http here
        assert not any(a.startswith(("max-age", "expires")) for a in attributes)
        # The page says who is signed in; the cookie does not open the API
        assert "Signed in as <strong>oncall</strong>" in (await http.get("/ui/")).text
        assert (await http.get(LIST)).status_code == 401
        # Behind a TLS proxy the cookie is Secure
        https = await http.post(
            "/ui/sign-in", data={"token": ONCALL}, headers={"X-Forwarded-Proto": "https"}
        )
        assert "secure" in https.headers["set-cookie"].lower()


async def test_a_bad_token_is_refused_and_counts_as_a_failed_attempt(
    console_settings: Settings,
) -> None:
    settings = console_settings.model_copy(update={"admin_auth_max_failures": 3})
    async with browser_like(settings, client=("10.9.8.7", 4000)) as http:
        for _ in range(2):
            refused = await http.post("/ui/sign-in", data={"token": "not-the-token-000000"})
            assert refused.status_code == 401
            assert "That admin token is not valid." in refused.text
            assert "set-cookie" not in refused.headers
        empty = await http.post("/ui/sign-in", data={"token": "  "})
        assert empty.status_code == 400 and "Enter an admin token." in empty.text
        # The third failure reaches the limit the API shares: the address is refused there too
        blocked = await http.post("/ui/sign-in", data={"token": "still-not-it-00000"})
        assert blocked.status_code == 429 and "try again in" in blocked.text
        assert int(blocked.headers["Retry-After"]) > 0
        assert (await http.get(LIST, headers=AUTH)).status_code == 429
        right = await http.post("/ui/sign-in", data={"token": TOKEN})
        assert right.status_code == 429


async def test_changes_need_this_sessions_csrf_token_and_a_same_site_form(
    console_settings: Settings, rclient: aioredis.Redis, fake_twilio: Any
) -> None:
    message_id, _, phone = await seed(console_settings, rclient)
    async with browser_like(console_settings) as http:
        csrf = await sign_in(http)
        for data, headers in (
            ({"id": message_id}, {}),
            ({"id": message_id, "csrf": "x" * 43}, {}),
            ({"id": message_id, "csrf": csrf}, {"Sec-Fetch-Site": "cross-site"}),
            ({"id": message_id, "csrf": csrf}, {"Sec-Fetch-Site": "same-site"}),
        ):
            response = await http.post("/ui/failed/retry", data=data, headers=headers)
            assert response.status_code == 403, (data, headers)
        json_body = await http.post("/ui/failed/retry", json={"id": message_id, "csrf": csrf})
        assert json_body.status_code == 400
        # Then nothing was sent or recorded
        assert fake_twilio.messages_to(phone) == []
        assert await audit_rows(console_settings) == []
        # With the token: sent, and the page says the SID
        done = await http.post(
            "/ui/failed/retry", data={"id": message_id, "csrf": csrf, "back": "reason=poison"}
        )
        assert done.status_code == 303
        assert done.headers["location"] == "/ui/failed?reason=poison"
        page = await http.get(done.headers["location"])
    [sent] = fake_twilio.messages_to(phone)
    assert f"message SID {sent.sid}" in page.text
    [row] = await audit_rows(console_settings)
    assert (row["actor"], row["action"], row["target"]) == ("admin", "retry", message_id)


async def test_the_back_field_cannot_send_the_browser_elsewhere(
    console_settings: Settings,
) -> None:
    async with browser_like(console_settings) as http:
        csrf = await sign_in(http)
        for back in ("https://evil.example/", "//evil.example", "phone=%2B1&x=//evil", "@evil"):
            response = await http.post(
                "/ui/failed/retry", data={"id": str(uuid.uuid4()), "csrf": csrf, "back": back}
            )
            assert response.status_code == 303
            assert response.headers["location"].startswith("/ui/failed"), back
            assert "evil" not in response.headers["location"]


async def test_a_viewer_sees_no_change_control_and_changes_nothing(
    console_settings: Settings, rclient: aioredis.Redis, fake_twilio: Any
) -> None:
    message_id, _, phone = await seed(console_settings, rclient)
    async with browser_like(console_settings) as http:
        csrf = await sign_in(http, VIEWER)
        page = (await http.get("/ui/failed")).text
        assert phone in page and message_id in page
        for control in (">Retry<", ">Delete<", ">Replay<", "Count and replay", 'name="ids"'):
            assert control not in page, control
        for path, data in (
            ("/ui/failed/retry", {"id": message_id}),
            ("/ui/failed/delete", {"id": message_id}),
            ("/ui/failed/replay", {"ids": message_id}),
            ("/ui/failed/replay-reason", {"reason": "permanent_error", "limit": "1"}),
        ):
            refused = await http.post(path, data={**data, "csrf": csrf})
            assert refused.status_code == 403, path
            assert "viewer" in refused.text
        assert (await http.get("/ui/failed/delete", params={"id": message_id})).status_code == 403
        assert (
            await http.get("/ui/failed/replay-reason", params={"reason": "poison"})
        ).status_code == 403
        # A viewer still signs out (no change to any record)
        assert (await http.post("/ui/sign-out", data={"csrf": csrf})).status_code == 303
    assert fake_twilio.messages_to(phone) == []
    assert await audit_rows(console_settings) == []
    async with browser_like(console_settings) as http:
        await sign_in(http, ONCALL)
        assert "Select every row" in (await http.get("/ui/failed")).text


async def test_sign_out_ends_the_session(console_settings: Settings) -> None:
    async with browser_like(console_settings) as http:
        csrf = await sign_in(http)
        old = http.cookies.get("smsrelay_console")
        out = await http.post("/ui/sign-out", data={"csrf": csrf})
        assert out.status_code == 303 and out.headers["location"] == "/ui/sign-in"
        assert 'smsrelay_console=""' in out.headers["set-cookie"]
        # The old cookie, sent again, opens nothing
        http.cookies.set("smsrelay_console", str(old), domain="admin.local", path="/ui")
        assert (await http.get("/ui/failed")).headers["location"] == "/ui/sign-in"
        assert (await http.get("/ui/overview/panel")).status_code == 401
        ended = await http.post("/ui/failed/retry", data={"csrf": csrf, "id": "x"})
        assert ended.headers["location"] == "/ui/sign-in?ended=1"


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("phone=12", "Phone: must be an E.164 number like +14155552671"),
        ("reason=bogus", "Reason: must be one of rate_limited"),
        ("status=gone", "Status: must be one of failed, replayed, resolved"),
        ("offset=-3", "Offset: must be a whole number"),
        ("limit=7", "Per page: must be one of 25, 50, 100"),
    ],
)
async def test_bad_filters_are_one_line_each(
    console_settings: Settings, query: str, message: str
) -> None:
    async with browser_like(console_settings) as http:
        await sign_in(http)
        page = await http.get(f"/ui/failed?{query}")
    assert page.status_code == 400
    assert message in page.text


async def test_filters_and_pages(console_settings: Settings, rclient: aioredis.Redis) -> None:
    phones = [(await seed(console_settings, rclient, reason="poison"))[2] for _ in range(27)]
    other = (await seed(console_settings, rclient))[2]
    async with browser_like(console_settings) as http:
        await sign_in(http)
        first = (await http.get("/ui/failed", params={"reason": "poison", "limit": 25})).text
        assert "Showing 1\u201325 of 27" in first and other not in first
        assert 'rel="next" href="/ui/failed?reason=poison&amp;offset=25&amp;limit=25"' in first
        second = (await http.get("/ui/failed?reason=poison&offset=25&limit=25")).text
        assert "Showing 26\u201327 of 27" in second and 'rel="prev"' in second
        assert sum(phone in first + second for phone in phones) == 27
        one = (await http.get("/ui/failed", params={"phone": other})).text
        assert "Showing 1\u20131 of 1" in one


async def test_delete_asks_first_and_replay_by_reason_counts_first(
    console_settings: Settings, rclient: aioredis.Redis
) -> None:
    message_id, _, phone = await seed(console_settings, rclient)
    for _ in range(3):
        await seed(console_settings, rclient, reason="retries_exhausted")
    async with browser_like(console_settings) as http:
        csrf = await sign_in(http)
        confirm = await http.get("/ui/failed/delete", params={"id": message_id})
        assert confirm.status_code == 200 and "Delete a failed SMS?" in confirm.text
        assert phone in confirm.text and csrf_of(confirm.text) == csrf
        count = await http.get("/ui/failed/replay-reason", params={"reason": "retries_exhausted"})
        assert "<strong>3</strong> failed SMS records have reason" in count.text
        assert 'name="limit" value="3"' in count.text
        done = await http.post(
            "/ui/failed/replay-reason",
            data={"csrf": csrf, "reason": "retries_exhausted", "limit": "3"},
        )
        assert "Queued 3 for replay" in (await http.get(done.headers["location"])).text
        gone = await http.post("/ui/failed/delete", data={"csrf": csrf, "id": message_id})
        assert "Deleted " + message_id in (await http.get(gone.headers["location"])).text
    async with browser_like(console_settings) as http:
        await sign_in(http)
        page = await http.get("/ui/failed", params={"phone": phone})
        assert "No failed SMS match these filters." in page.text


async def test_overview_panel_and_assets(
    console_settings: Settings, rclient: aioredis.Redis
) -> None:
    await seed(console_settings, rclient, reason="poison")
    async with browser_like(console_settings) as http:
        assert (await http.get("/ui/overview/panel")).status_code == 401
        await sign_in(http)
        page = await http.get("/ui/")
        assert page.status_code == 200
        for heading in (
            "Request streams",
            "Dead letters by reason",
            "Consumers",
            "Provider breaker",
            "Sends and failures per minute",
            "Delivery receipts",
        ):
            assert heading in page.text
        assert 'data-refresh="/ui/overview/panel"' in page.text
        panel = await http.get("/ui/overview/panel")
        assert panel.status_code == 200 and "<html" not in panel.text
        assert 'href="/ui/failed?reason=poison&amp;status=failed">poison</a>' in panel.text
        for name, kind in (("console.js", "text/javascript"), ("console.css", "text/css")):
            asset = await http.get(f"/ui/static/{name}")
            assert asset.status_code == 200 and asset.headers["content-type"].startswith(kind)
            assert "http" not in asset.text.replace("https", "")  # nothing from elsewhere
        assert (await http.get("/ui/static/../app.py")).status_code == 404
        assert (await http.get("/ui/static/nothing.js")).status_code == 404


async def test_audit_page_lists_the_console_s_own_changes(
    console_settings: Settings, rclient: aioredis.Redis
) -> None:
    message_id, _, _ = await seed(console_settings, rclient)
    async with browser_like(console_settings) as http:
        csrf = await sign_in(http, ONCALL)
        await http.post("/ui/failed/delete", data={"csrf": csrf, "id": message_id})
        page = await http.get("/ui/audit")
        assert page.status_code == 200
        assert "oncall" in page.text and message_id in page.text and ">delete<" in page.text
        assert (await http.get("/ui/audit?offset=x")).status_code == 400


async def test_record_state_is_unchanged_by_a_refused_post(
    console_settings: Settings, rclient: aioredis.Redis
) -> None:
    message_id, _, phone = await seed(console_settings, rclient)
    async with browser_like(console_settings) as http:
        await sign_in(http)
        await http.post("/ui/failed/delete", data={"id": message_id, "csrf": "forged"})
    from tests.admin.conftest import admin_client

    async with admin_client(console_settings) as api:
        assert (await get_record(api, phone))["status"] == "failed"


async def test_stores_away_are_said_on_the_page_not_a_500(console_settings: Settings) -> None:
    away = console_settings.model_copy(
        update={
            "database_url": "postgresql://postgres@127.0.0.1:1/postgres",
            "redis_url": "redis://127.0.0.1:1/0",
        }
    )
    async with browser_like(away) as http:
        csrf = await sign_in_anyway(http)
        overview = await http.get("/ui/")
        assert overview.status_code == 200
        assert "Redis unavailable" in overview.text and "Postgres unreachable" in overview.text
        listing = await http.get("/ui/failed")
        assert listing.status_code == 503 and "Unavailable: Postgres unreachable" in listing.text
        assert (await http.get("/ui/audit")).status_code == 503
        retried = await http.post("/ui/failed/retry", data={"csrf": csrf, "id": str(uuid.uuid4())})
        page = await http.get(retried.headers["location"])
        assert "Unavailable (503)" in page.text


async def sign_in_anyway(http: Any) -> str:
    """Sign in when the failed-SMS list cannot load: the CSRF token from the overview."""
    assert (await http.post("/ui/sign-in", data={"token": TOKEN})).status_code == 303
    return csrf_of((await http.get("/ui/")).text)
