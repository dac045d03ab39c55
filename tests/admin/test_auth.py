"""Who the caller is: named tokens with roles, and failed authentication logged and slowed."""

from __future__ import annotations

import hmac
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import Request
from structlog.testing import capture_logs

from smsrelay.admin import auth
from smsrelay.admin.app import create_app
from smsrelay.settings import Settings
from tests.admin.conftest import LIST, REPLAY, TOKEN, admin_client
from tests.conftest import make_settings

VIEWER = "test-viewer-token-4567"
OPERATOR = "test-operator-token-89"
WHOAMI = "/api/test/whoami"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def role_settings(
    redis_url: str, namespace: str, tmp_path: Path, fake_twilio: Any, database_url: str
) -> Settings:
    return make_settings(
        redis_url,
        namespace,
        tmp_path,
        fake_twilio.url,
        database_url=database_url,
        admin_token=TOKEN,
        admin_tokens=f"ops:viewer:{VIEWER}, ci:operator:{OPERATOR}",
    )


@pytest.fixture
async def app_client(role_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The app with one more route that answers the caller's identity as routes see it."""
    app = create_app(role_settings)

    @app.api_route(WHOAMI, methods=["GET", "POST"])
    async def whoami(request: Request) -> dict[str, str]:
        return {"actor": request.state.actor, "role": request.state.role}

    async with admin_client(role_settings, headers={}, app=app) as client:
        yield client


@pytest.mark.parametrize(
    ("token", "actor", "role"),
    [(TOKEN, "admin", "operator"), (VIEWER, "ops", "viewer"), (OPERATOR, "ci", "operator")],
)
async def test_routes_know_who_calls(
    app_client: httpx.AsyncClient, token: str, actor: str, role: str
) -> None:
    # Given each configured token, When a route reads request.state, Then it sees its name
    response = await app_client.get(WHOAMI, headers=bearer(token))
    assert response.json() == {"actor": actor, "role": role}


@pytest.mark.parametrize(
    ("method", "path", "kwargs"),
    [
        ("POST", LIST, {"json": {"id": str(uuid.uuid4())}}),
        ("DELETE", LIST, {"params": {"id": str(uuid.uuid4())}}),
        ("POST", REPLAY, {"json": {"reason": "poison"}}),
        ("PUT", LIST, {}),
        ("PATCH", "/api/nope", {}),
        ("POST", WHOAMI, {}),
    ],
)
async def test_a_viewer_changes_nothing(
    app_client: httpx.AsyncClient, method: str, path: str, kwargs: dict[str, Any]
) -> None:
    # Given the viewer's token, When it asks for any change, Then 403 before anything runs
    response = await app_client.request(method, path, headers=bearer(VIEWER), **kwargs)
    assert response.status_code == 403, response.text
    body = response.json()
    assert body["success"] is False and "viewer" in body["error"] and "'ops'" in body["error"]


async def test_a_viewer_reads_and_an_operator_changes(app_client: httpx.AsyncClient) -> None:
    assert (await app_client.get(LIST, headers=bearer(VIEWER))).status_code == 200
    for method in ("HEAD", "OPTIONS"):  # reads: past the guard (the routes answer 405)
        response = await app_client.request(method, LIST, headers=bearer(VIEWER))
        assert response.status_code == 405, (method, response.text)
    unknown = str(uuid.uuid4())
    for token in (OPERATOR, TOKEN):
        response = await app_client.delete(LIST, params={"id": unknown}, headers=bearer(token))
        assert response.status_code == 404, response.text  # reached the route


async def test_admin_tokens_alone_run_the_service(role_settings: Settings) -> None:
    settings = role_settings.model_copy(update={"admin_token": None})
    async with admin_client(settings, headers=bearer(VIEWER)) as client:
        assert (await client.get(LIST)).status_code == 200
        assert (await client.get(LIST, headers=bearer(TOKEN))).status_code == 401


def test_every_token_is_compared_whatever_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given three credentials, When a header matches the first, the last or none,
    # Then each is compared every time (no early exit that tells which one matched)
    calls: list[int] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append(1)
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    settings = Settings.load(
        admin_token=TOKEN, admin_tokens=f"ops:viewer:{VIEWER},ci:operator:{OPERATOR}"
    )
    tokens = auth.TokenTable(settings.require_admin_credentials())
    for header, expected in (
        (f"Bearer {TOKEN}", "admin"),
        (f"Bearer {OPERATOR}", "ci"),
        ("Bearer nope", None),
        ("", None),
    ):
        calls.clear()
        found = tokens.identify(header.encode())
        assert (found.name if found else None) == expected
        assert len(calls) == 3, (header, len(calls))


# -- failed authentication ---------------------------------------------------------------------
ATTACKER = ("203.0.113.7", 40000)
BYSTANDER = ("198.51.100.9", 40001)


async def test_repeated_failures_are_refused_for_a_while(role_settings: Settings) -> None:
    app = create_app(role_settings)
    limit = role_settings.admin_auth_max_failures
    assert limit == 10  # the default
    with capture_logs() as logs:
        async with (
            admin_client(role_settings, headers={}, client=ATTACKER, app=app) as attacker,
            admin_client(role_settings, headers={}, client=BYSTANDER, app=app) as bystander,
        ):
            # Given one client sending wrong tokens, as fast as it can
            statuses = [
                (await attacker.get(LIST, headers=bearer(f"guess-{n:016d}"))).status_code
                for n in range(3 * limit)
            ]
            # Then it is refused with 401 at first, then with 429 for the cool-down
            assert statuses[: limit - 1] == [401] * (limit - 1)
            assert set(statuses[limit - 1 :]) == {429}, statuses
            refused = await attacker.get(LIST, headers=bearer(TOKEN))  # even the right token
            assert refused.status_code == 429
            retry_after = int(refused.headers["Retry-After"])
            assert 0 < retry_after <= auth.COOLDOWN_SECONDS
            body = refused.json()
            assert body["success"] is False and "failed authentication" in body["error"]
            assert body["retryAfter"] == retry_after
            # And the unauthenticated routes still answer it
            assert (await attacker.get("/healthz")).status_code == 200
            # And another client is not affected
            assert (await bystander.get(LIST, headers=bearer(VIEWER))).status_code == 200
            assert (await bystander.get(LIST, headers=bearer("x" * 20))).status_code == 401
    # And the failures are logged, a few lines with counts, never the token
    failed = [entry for entry in logs if entry["event"] == "admin.auth_failed"]
    blocked = [entry for entry in logs if entry["event"] == "admin.auth_blocked"]
    assert 1 <= len(failed) <= 2, failed
    assert failed[0]["client"] == ATTACKER[0] and failed[0]["token_length"] == 22
    assert len(blocked) == 1 and blocked[0]["failures"] == limit
    assert blocked[0]["client"] == ATTACKER[0]
    assert not any("guess-" in repr(entry) or TOKEN in repr(entry) for entry in logs)


async def test_a_request_without_a_token_is_not_a_guess(role_settings: Settings) -> None:
    # Given a client (a browser, a probe) calling without any Authorization header
    async with admin_client(role_settings, headers={}, client=ATTACKER) as client:
        statuses = {(await client.get(LIST)).status_code for _ in range(30)}
        # Then it is told 401 every time, and is not locked out
        assert statuses == {401}
        assert (await client.get(LIST, headers=bearer(VIEWER))).status_code == 200


@pytest.mark.parametrize(("limit", "refused_after"), [(3, 3), (0, None)])
async def test_the_limit_is_a_setting(
    role_settings: Settings, limit: int, refused_after: int | None
) -> None:
    # Given SMSRELAY_ADMIN_AUTH_MAX_FAILURES (0: never refused, only logged)
    settings = role_settings.model_copy(update={"admin_auth_max_failures": limit})
    async with admin_client(settings, headers=bearer("y" * 20), client=ATTACKER) as client:
        statuses = [(await client.get(LIST)).status_code for _ in range(25)]
    if refused_after is None:
        assert set(statuses) == {401}
    else:
        assert statuses.index(429) == refused_after - 1 and set(statuses[refused_after:]) == {429}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_failures_age_out_and_the_cooldown_ends() -> None:
    clock = Clock()
    table = auth.FailedAuth(max_failures=3, window_s=60, cooldown_s=30, clock=clock)
    assert table.blocked("a") is None
    table.failed("a", 20)
    table.failed("a", 20)
    clock.now += 61  # the window passed: counting starts again
    table.failed("a", 20)
    table.failed("a", 20)
    assert table.blocked("a") is None
    table.failed("a", 20)
    assert table.blocked("a") == 30
    clock.now += 29.5
    assert table.blocked("a") == 1  # seconds, rounded up
    clock.now += 1
    assert table.blocked("a") is None


def test_the_log_is_one_line_per_client_per_period_with_a_count() -> None:
    clock = Clock()
    table = auth.FailedAuth(
        max_failures=1000, window_s=600, cooldown_s=30, log_period_s=60, clock=clock
    )
    with capture_logs() as logs:
        for _ in range(50):
            table.failed("a", 7)
            clock.now += 0.5
        table.failed("b", 9)
        clock.now += 60
        table.failed("a", 7)
    lines = [(e["client"], e["failures"]) for e in logs if e["event"] == "admin.auth_failed"]
    assert lines == [("a", 1), ("b", 1), ("a", 50)]


def test_the_failure_table_is_bounded() -> None:
    # Given a hostile client with many addresses, Then the table never grows past its bound
    table = auth.FailedAuth(max_failures=3, window_s=60, cooldown_s=30, max_clients=1000)
    with capture_logs():
        for n in range(20_000):
            table.failed(f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}", 20)
    assert len(table) <= 1000


def test_ipv6_clients_are_counted_by_their_64_prefix() -> None:
    # One host holds a whole /64: counting each address alone would not slow it down.
    assert auth.client_key("2001:db8:1:2:aaaa::1") == auth.client_key("2001:db8:1:2::ffff")
    assert auth.client_key("2001:db8:1:3::1") != auth.client_key("2001:db8:1:2::1")
    assert auth.client_key("203.0.113.7") == "203.0.113.7"
    assert auth.client_key(None) == "unknown"


async def test_a_root_path_does_not_open_a_way_around_the_guard(role_settings: Settings) -> None:
    # Given the app mounted under a root path (a proxy's prefix: the ASGI path then holds it)
    app = create_app(role_settings)
    transport = httpx.ASGITransport(app=app, root_path="/admin")
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://admin") as client,
    ):
        # Then the API still needs a token, and its answers are still not cached
        anonymous = await client.get(f"/admin{LIST}")
        assert anonymous.status_code == 401, anonymous.text
        assert anonymous.headers["Cache-Control"] == "no-store"
        viewer = await client.get(f"/admin{LIST}", headers=bearer(VIEWER))
        assert viewer.status_code == 200 and viewer.headers["Cache-Control"] == "no-store"
        assert (
            await client.delete(
                f"/admin{LIST}", params={"id": str(uuid.uuid4())}, headers=bearer(VIEWER)
            )
        ).status_code == 403
        # And /docs points at assets and a document under the prefix
        page = (await client.get("/admin/docs")).text
        assert 'src="/admin/docs/assets/swagger-init.js"' in page
        assert 'data-openapi-url="/admin/openapi.json"' in page
        assert (await client.get("/admin/docs/assets/swagger-init.js")).status_code == 200
