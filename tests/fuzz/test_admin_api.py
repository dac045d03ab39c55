"""The admin service as it is deployed (`smsrelay admin`, a real process) under generated and
hostile requests: schemathesis from its own OpenAPI document with the bearer token, the same
with Postgres gone, oversized and malformed bodies, every way to get the token wrong, and a
client guessing tokens as fast as it can.

Every answer must be documented (status, content type, body schema) and none may be a 5xx,
except the documented 503 while a store is down.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import given
from schemathesis import GenerationMode
from schemathesis.core.parameters import ParameterLocation
from schemathesis.core.result import Ok

from tests.conftest import make_settings
from tests.faults.support import (
    ADMIN_TOKEN,
    Managed,
    Processes,
    phone,
    publish_all,
    record_figure,
    start_admin,
    start_worker,
)
from tests.fuzz.strategies import fuzz_settings
from tests.support.servers import LOOPBACK, free_port
from tests.support.wait import wait_for

pytestmark = [pytest.mark.faults, pytest.mark.slow]

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
LIST = "/api/admin/retry-failed-sms"
REPLAY = "/api/admin/dead-letters/replay"
NOWHERE_PG = f"postgresql://postgres@{LOOPBACK}:1/postgres"
NO_INPUTS = {"/healthz", "/readyz", "/metrics"}  # nothing to get wrong in a request
# schemathesis sends wrong tokens on every operation (its ignored_auth check): with the
# failed-auth limit on, its valid requests would soon be refused too.
NO_AUTH_LIMIT = {"SMSRELAY_ADMIN_AUTH_MAX_FAILURES": "0"}


@pytest.fixture
def admin(
    redis_url: str,
    namespace: str,
    tmp_path: Path,
    fake_twilio: Any,
    database_url: str,
    procs: Processes,
) -> str:
    """`smsrelay admin` with a few real failed-SMS records (dead-lettered by a real worker)."""
    settings = make_settings(
        redis_url, namespace, tmp_path, fake_twilio.url, database_url=database_url
    )
    for n in range(6):
        fake_twilio.script(phone(300 + n), [], default={"status": 400, "code": 21610})
    start_worker(procs, settings, "worker", mirror=True)
    publish_all(settings, [(phone(300 + n), f"refused-{n}") for n in range(6)])
    port = free_port()
    start_admin(procs, settings, port, **NO_AUTH_LIMIT)
    url = f"http://{LOOPBACK}:{port}"
    with httpx.Client(base_url=url, headers=AUTH, timeout=15) as api:
        wait_for(
            lambda: (
                api.get(LIST, params={"reason": "permanent_error"})
                .json()
                .get("pagination", {})
                .get("total", 0)
                >= 6
            ),
            30,
            "6 records mirrored",
        )
    return url


@pytest.fixture
def admin_without_postgres(
    redis_url: str, namespace: str, tmp_path: Path, fake_twilio: Any, procs: Processes
) -> str:
    settings = make_settings(
        redis_url, namespace, tmp_path, fake_twilio.url, database_url=NOWHERE_PG
    )
    port = free_port()
    start_admin(procs, settings, port, **NO_AUTH_LIMIT)
    return f"http://{LOOPBACK}:{port}"


@pytest.fixture
def guarded_admin(
    redis_url: str,
    namespace: str,
    tmp_path: Path,
    fake_twilio: Any,
    database_url: str,
    procs: Processes,
) -> tuple[str, Managed]:
    """`smsrelay admin` as deployed: the failed-authentication limit on (its default)."""
    settings = make_settings(
        redis_url, namespace, tmp_path, fake_twilio.url, database_url=database_url
    )
    port = free_port()
    child = start_admin(procs, settings, port)
    return f"http://{LOOPBACK}:{port}", child


def from_address(url: str, address: str) -> httpx.Client:
    """A client whose connections come from `address` (any 127.x.y.z is this machine)."""
    return httpx.Client(
        base_url=url, timeout=15, transport=httpx.HTTPTransport(local_address=address)
    )


def _name(operation: Any) -> str:
    return f"{operation.method.upper()} {operation.path}"


def _run_schema(url: str, mode: GenerationMode, examples: int, *, store_down: bool = False) -> int:
    """Every operation of the document, `examples` generated requests each; returns calls.

    With `store_down`, a 5xx is allowed when the document lists it (the 503s), never a 500.
    Fails when an operation got no request at all (a generator that produced nothing would
    otherwise pass for a clean run).
    """
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    excluded: list[Any] = [schemathesis.checks.not_a_server_error] if store_down else []
    calls: dict[str, int] = {}
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result
        operation = result.ok()
        if mode is GenerationMode.NEGATIVE and operation.path in NO_INPUTS:
            continue
        calls[_name(operation)] = 0

        @fuzz_settings(examples)
        @given(case=operation.as_strategy(generation_mode=mode))
        def check(case: schemathesis.Case[Any]) -> None:
            # A negative header case drops the bearer token on purpose: 401 is its answer.
            dropped = case.meta is not None and case.meta.is_negative_at(ParameterLocation.HEADER)
            response = case.call_and_validate(
                headers=None if dropped else AUTH, excluded_checks=excluded
            )
            assert response.status_code != 500, response.text
            calls[_name(case.operation)] += 1

        check()
    assert calls, "the document lists no operation"
    assert all(calls.values()), f"operations that got no request: {calls}"
    return sum(calls.values())


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_generated_requests_get_documented_answers(admin: str, mode: GenerationMode) -> None:
    # Given the running admin, When schemathesis sends what its document allows (positive)
    # and what it forbids (negative), Then every answer is documented and none is a 5xx
    calls = _run_schema(admin, mode, 40)
    record_figure("admin-api", f"schemathesis {mode.value} requests, all conforming", calls)


def test_generated_requests_get_documented_503s_while_postgres_is_gone(
    admin_without_postgres: str,
) -> None:
    # Given an admin whose Postgres is unreachable
    # When schemathesis sends valid requests, Then each answer is documented (a 503 is)
    calls = _run_schema(admin_without_postgres, GenerationMode.POSITIVE, 15, store_down=True)
    record_figure("admin-api", "schemathesis requests with Postgres gone, all conforming", calls)


def _raw(url: str, request: bytes) -> bytes:
    """Send raw bytes, return the raw answer (to send what httpx would refuse to)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=15) as sock:
        sock.sendall(request)
        chunks: list[bytes] = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_oversized_and_malformed_bodies_are_refused_with_a_4xx(admin: str) -> None:
    some_id = str(uuid.uuid4())
    with httpx.Client(base_url=admin, headers=AUTH, timeout=30) as api:
        # Given bodies over the limit: declared, chunked (no length), a huge id list
        big = b'{"id": "' + b"x" * (1 << 20) + b'"}'
        declared = api.post(LIST, content=big, headers={"Content-Type": "application/json"})

        def chunks() -> Iterator[bytes]:
            for _ in range(40):
                yield b" " * 4096

        chunked = api.post(REPLAY, content=chunks(), headers={"Content-Type": "application/json"})
        many_ids = api.post(REPLAY, json={"ids": [some_id] * 5000})
        # Then 413 (or 400 for a body the schema bounds)
        assert declared.status_code == 413, declared.text
        assert chunked.status_code == 413, chunked.text
        assert many_ids.status_code in (400, 413), many_ids.text
        # Given malformed bodies, Then 400 with the error body, never a 5xx
        malformed = [
            api.post(LIST, content=b"[" * 30_000, headers={"Content-Type": "application/json"}),
            api.post(LIST, content=b"\xff\xfe{", headers={"Content-Type": "application/json"}),
            api.post(
                LIST,
                content=b'{"id": "' + some_id.encode() + b'"',
                headers={"Content-Type": "application/json"},
            ),
            api.post(
                LIST,
                content=b"id=" + some_id.encode(),
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            ),
            api.post(LIST, json=[some_id]),
            api.post(LIST, json={"id": some_id, "force": "yes"}),
            api.post(REPLAY, json={"reason": "invalid_payload"}),
            api.delete(LIST, params={"id": "x" * 10_000}),
            api.get(LIST, params={"phone": "+1" * 5000}),
            api.get(LIST, params={"limit": "9" * 400}),
        ]
        for response in malformed:
            assert response.status_code in (400, 404, 413, 414, 431), (
                response.request.url,
                response.status_code,
                response.text[:200],
            )
            if response.status_code in (400, 413):
                assert response.json()["success"] is False and response.json()["error"]
    # A request line too big for the server is refused by it (a 4xx, or the connection
    # closed), and the service goes on
    try:
        answer = _raw(
            admin,
            b"GET "
            + LIST.encode()
            + b"?phone="
            + b"1" * 200_000
            + b" HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer "
            + ADMIN_TOKEN.encode()
            + b"\r\n\r\n",
        )
    except ConnectionResetError:
        answer = b""
    assert answer == b"" or answer.startswith(b"HTTP/1.1 4"), answer[:100]
    assert httpx.get(f"{admin}/healthz", timeout=5).status_code == 200


WRONG_AUTH: list[dict[str, str]] = [
    {},
    {"Authorization": ""},
    {"Authorization": "Bearer"},
    {"Authorization": f"Basic {ADMIN_TOKEN}"},
    {"Authorization": f"Bearer {ADMIN_TOKEN}x"},
    {"Authorization": f"Bearer {ADMIN_TOKEN[:-1]}"},
    {"Authorization": ADMIN_TOKEN},
    {"Authorization": f"Bearer {ADMIN_TOKEN.upper()}"},
    {"Authorization": "Bearer " + "A" * 10_000},
]


def test_every_wrong_token_is_401_on_every_api_route_and_health_needs_none(
    guarded_admin: tuple[str, Managed],
) -> None:
    url, _ = guarded_admin
    some_id = str(uuid.uuid4())
    # Given every way to get the bearer token wrong (each from an address of its own: five
    # failures each stay under the failed-auth limit), When any /api/ route is called,
    # Then 401 with the error body, before any validation
    for n, headers in enumerate(WRONG_AUTH):
        with from_address(url, f"127.0.1.{n + 1}") as api:
            for response in (
                api.get(LIST, headers=headers),
                api.post(LIST, json={"id": some_id}, headers=headers),
                api.delete(LIST, params={"id": some_id}, headers=headers),
                api.post(REPLAY, json={"ids": [some_id]}, headers=headers),
                api.get("/api/anything", headers=headers),
            ):
                assert response.status_code == 401, (headers.keys(), response.status_code)
                assert response.json() == {
                    "success": False,
                    "error": "missing or invalid bearer token",
                }
                assert response.headers["Cache-Control"] == "no-store"
    with httpx.Client(base_url=url, timeout=15) as api:
        # And the token is compared exactly, except the word Bearer; health needs none
        assert api.get(LIST, headers={"Authorization": f"bearer {ADMIN_TOKEN}"}).status_code == 200
        for path in ("/healthz", "/readyz", "/metrics"):
            assert api.get(path).status_code == 200, path


def test_a_client_guessing_tokens_is_refused_and_others_are_not(
    guarded_admin: tuple[str, Managed],
) -> None:
    url, child = guarded_admin
    guesses = [f"guess-{n:020d}" for n in range(40)]
    with from_address(url, "127.0.2.1") as attacker, from_address(url, "127.0.2.2") as other:
        # Given a client sending wrong tokens as fast as it can
        answers = [
            attacker.get(LIST, headers={"Authorization": f"Bearer {guess}"}) for guess in guesses
        ]
        statuses = [answer.status_code for answer in answers]
        # Then after a few 401s it is refused with 429 and Retry-After, for a cool-down,
        # even with the right token
        assert statuses[0] == 401 and 429 in statuses, statuses
        assert set(statuses[statuses.index(429) :]) == {429}, statuses
        refused = attacker.get(LIST, headers=AUTH)
        assert refused.status_code == 429
        assert int(refused.headers["Retry-After"]) >= 1
        assert refused.json()["success"] is False and refused.json()["error"]
        # And another client is not affected
        assert other.get(LIST, headers=AUTH).status_code == 200
    # And the failures are in the log, a few lines, never a token
    wait_for(lambda: "admin.auth_blocked" in child.log_text(), 10, "the blocked line")
    log = child.log_text()
    assert log.count("admin.auth_failed") <= 2, log
    assert '"client": "127.0.2.1"' in log
    assert not any(guess in log for guess in guesses) and ADMIN_TOKEN not in log


def test_x_forwarded_for_does_not_make_a_new_client(guarded_admin: tuple[str, Managed]) -> None:
    url, _ = guarded_admin
    with from_address(url, LOOPBACK) as guesser:
        # Given a client (on the same host as the service, as a local proxy would be) naming a
        # new address in X-Forwarded-For with each wrong token
        statuses = [
            guesser.get(
                LIST,
                headers={
                    "Authorization": f"Bearer guess-{n:020d}",
                    "X-Forwarded-For": f"203.0.113.{n}",
                },
            ).status_code
            for n in range(1, 41)
        ]
    # Then its failures are still counted as its own: refused
    assert 429 in statuses, statuses
