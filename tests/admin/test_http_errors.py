"""Auth and bad input: every one a 4xx in the `{"success": false, "error": ...}` shape.

The ASGI transport re-raises any exception that reaches the server's last-resort handler, so
these tests also show that no bad input ever becomes a 500.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from smsrelay.admin.app import create_app
from smsrelay.errors import ConfigError
from smsrelay.settings import Settings
from tests.admin.conftest import LIST, REPLAY, TOKEN, admin_client


def assert_error(response: httpx.Response, status: int, *fragments: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["success"] is False
    assert isinstance(body["error"], str) and body["error"]
    for fragment in fragments:
        assert fragment in body["error"], body["error"]


@pytest.fixture
async def anonymous(admin_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with admin_client(admin_settings, headers={}) as client:
        yield client


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        f"Basic {TOKEN}",
        f"Bearer {TOKEN}x",
        f"Bearer {TOKEN[:-1]}",
        "Bearer wrong-token-entirely",
        f"{TOKEN}",
    ],
)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", LIST),
        ("POST", LIST),
        ("DELETE", LIST),
        ("POST", REPLAY),
        ("GET", "/api/nope"),
    ],
)
async def test_api_routes_need_the_bearer_token(
    anonymous: httpx.AsyncClient, header: str | None, method: str, path: str
) -> None:
    headers = {"Authorization": header} if header is not None else {}
    # Malformed bodies too: auth is checked before anything is parsed.
    response = await anonymous.request(method, path, headers=headers, content=b"{nope")
    assert_error(response, 401, "bearer token")
    assert response.headers["WWW-Authenticate"] == "Bearer"


async def test_the_scheme_word_is_case_insensitive(anonymous: httpx.AsyncClient) -> None:
    response = await anonymous.get(LIST, headers={"Authorization": f"bearer {TOKEN}"})
    assert response.status_code == 200


async def test_ops_routes_need_no_token(anonymous: httpx.AsyncClient) -> None:
    assert (await anonymous.get("/healthz")).json() == {"status": "ok"}
    assert (await anonymous.get("/readyz")).json() == {
        "status": "ready",
        "redis": "ok",
        "postgres": "ok",
    }
    assert (await anonymous.get("/metrics")).status_code == 200
    assert (await anonymous.get("/openapi.json")).status_code == 200
    assert "swagger" in (await anonymous.get("/docs")).text.lower()


def test_the_app_refuses_to_exist_without_a_token(admin_settings: Settings) -> None:
    with pytest.raises(ConfigError, match="SMSRELAY_ADMIN_TOKEN"):
        create_app(admin_settings.model_copy(update={"admin_token": None}))


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        ("limit=0", "limit:"),
        ("limit=501", "limit:"),
        ("limit=-1", "limit:"),
        ("limit=abc", "limit:"),
        ("limit=1.5", "limit:"),
        ("limit=", "limit:"),
        ("offset=-1", "offset:"),
        ("offset=abc", "offset:"),
        ("offset=99999999999999999999", "offset:"),
        ("status=lost", "status:"),
        ("reason=bored", "reason:"),
        ("phone=12", "phone:"),
        ("phone=%2B1abc", "phone:"),
        ("phone=" + "1" * 50, "phone:"),
    ],
)
async def test_bad_list_parameters_are_400(
    api: httpx.AsyncClient, query: str, fragment: str
) -> None:
    assert_error(await api.get(f"{LIST}?{query}"), 400, fragment)


@pytest.mark.parametrize(("limit", "offset"), [(1, 0), (500, 0), (50, 2**31 - 1)])
async def test_list_accepts_the_edges(api: httpx.AsyncClient, limit: int, offset: int) -> None:
    response = await api.get(LIST, params={"limit": limit, "offset": offset})
    assert response.status_code == 200, response.text
    assert response.json()["pagination"]["limit"] == limit


JSON = {"Content-Type": "application/json"}


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"content": b"{not json", "headers": JSON}, "malformed JSON"),
        ({"content": b"", "headers": JSON}, "required"),
        ({"content": b'{"id": "x"}'}, "JSON object"),  # no Content-Type
        ({"content": b'{"id": "x"}', "headers": {"Content-Type": "text/plain"}}, "JSON object"),
        ({"json": []}, "JSON object"),
        ({"json": "id"}, "JSON object"),
        ({"json": {}}, "id: required"),
        ({"json": {"id": "not-a-uuid"}}, "id: must be a UUID"),
        ({"json": {"id": 42}}, "id: must be a UUID"),
        ({"json": {"id": None}}, "id: must be a UUID"),
        ({"json": {"id": str(uuid.uuid4()), "force": "yes"}}, "force:"),
        ({"json": {"id": str(uuid.uuid4()), "force": 1}}, "force:"),
        ({"json": {"id": str(uuid.uuid4()), "forse": True}}, "forse: unknown field"),
        ({"json": {"id": str(uuid.uuid4()), "force": "true"}}, "force:"),
        ({"json": {"id": str(uuid.uuid4()), "force": 0}}, "force:"),
        ({"json": {"id": [str(uuid.uuid4())]}}, "id: must be a UUID"),
    ],
)
async def test_bad_retry_bodies_are_400(
    api: httpx.AsyncClient, kwargs: dict[str, Any], fragment: str
) -> None:
    assert_error(await api.post(LIST, **kwargs), 400, fragment)


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        ("", "id: required"),
        ("id=", "id: must be a UUID"),
        ("id=123", "id: must be a UUID"),
        ("id=%00", "id: must be a UUID"),
    ],
)
async def test_bad_delete_ids_are_400(api: httpx.AsyncClient, query: str, fragment: str) -> None:
    assert_error(await api.delete(f"{LIST}?{query}"), 400, fragment)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({}, "either 'ids' or 'reason'"),
        ({"ids": [str(uuid.uuid4())], "reason": "poison"}, "either 'ids' or 'reason'"),
        ({"ids": []}, "ids:"),
        ({"ids": ["nope"]}, "ids.0: must be a UUID"),
        ({"ids": "abc"}, "ids:"),
        ({"ids": [str(uuid.uuid4())] * 1001}, "ids:"),
        ({"ids": [str(uuid.uuid4())], "limit": 3}, "'limit' goes with 'reason'"),
        ({"reason": "sleepy"}, "reason:"),
        ({"reason": "poison", "limit": 0}, "limit:"),
        ({"reason": "poison", "limit": 10001}, "limit:"),
        ({"reason": "poison", "limit": "many"}, "limit:"),
        ({"reason": "poison", "limit": None}, "limit: must not be null"),
        ({"ids": None, "reason": "poison"}, "ids: must not be null"),
        ({"reason": "poison", "limit": True}, "limit: must be a JSON integer"),
        ({"reason": "poison", "limit": "5"}, "limit: must be a JSON integer"),
        ({"reason": "poison", "limit": 5.5}, "limit: must be a JSON integer"),
        ({"reason": "poison", "limit": [5]}, "limit: must be a JSON integer"),
        ({"reason": 1}, "reason:"),
        ({"reason": ["poison"]}, "reason:"),
        ({"reason": "POISON"}, "reason:"),
        ({"ids": [1]}, "ids.0: must be a UUID"),
        ({"ids": [True]}, "ids.0: must be a UUID"),
        ({"ids": {"a": str(uuid.uuid4())}}, "ids:"),
        ({"reason": "invalid_payload"}, "cannot be replayed"),
        ({"reason": "poison", "extra": 1}, "extra: unknown field"),
    ],
)
async def test_bad_replay_bodies_are_400(api: httpx.AsyncClient, body: Any, fragment: str) -> None:
    assert_error(await api.post(REPLAY, json=body), 400, fragment)


async def test_oversize_bodies_are_413(api: httpx.AsyncClient) -> None:
    big = b'{"ids": [' + b'"x",' * 20_000 + b'"x"]}'
    assert_error(
        await api.post(REPLAY, content=big, headers={"Content-Type": "application/json"}),
        413,
        "64 KiB",
    )

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
        for _ in range(100):
            yield b" " * 1024

    assert_error(
        await api.post(REPLAY, content=chunks(), headers={"Content-Type": "application/json"}), 413
    )


async def test_unknown_routes_and_methods(api: httpx.AsyncClient) -> None:
    assert_error(await api.get("/api/admin/nothing-here"), 404, "no such route")
    assert_error(await api.get("/nothing-here"), 404, "no such route")
    assert_error(await api.put(LIST), 405, "not allowed")
    assert_error(await api.get(REPLAY), 405, "not allowed")


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PUT", LIST, {"GET", "POST", "DELETE"}),
        ("PATCH", LIST, {"GET", "POST", "DELETE"}),
        ("GET", REPLAY, {"POST"}),
        ("POST", "/healthz", {"GET"}),
        ("DELETE", "/openapi.json", {"GET", "HEAD"}),
    ],
)
async def test_405_names_every_method_of_the_path(
    api: httpx.AsyncClient, method: str, path: str, allowed: set[str]
) -> None:
    # Given a path with several routes (GET, POST, DELETE), When another method is used,
    # Then Allow lists them all (not only the first route's)
    response = await api.request(method, path)
    assert_error(response, 405, "not allowed")
    assert set(response.headers["Allow"].split(", ")) == allowed
