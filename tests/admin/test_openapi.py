"""Schema-driven: schemathesis generates requests from /openapi.json and checks every answer
against the documented statuses and models (and that none is a 500)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.core.parameters import ParameterLocation
from schemathesis.core.result import Ok

from smsrelay.admin.app import create_app
from smsrelay.testing.fake_twilio import FakeTwilioThread
from tests.admin.conftest import AUTH, TOKEN
from tests.conftest import make_settings
from tests.support.clients import redis_client
from tests.support.servers import free_port

pytestmark = pytest.mark.slow
NO_INPUTS = {"/healthz", "/readyz", "/metrics"}


@pytest.fixture(scope="module")
def admin_url(
    redis_url: str, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A real admin server in a thread (its lifespan runs as in production)."""
    namespace = f"t{uuid.uuid4().hex[:10]}"
    tmp: Path = tmp_path_factory.mktemp("openapi")
    with FakeTwilioThread() as fake:
        # schemathesis tries wrong tokens on every operation (its ignored_auth check): with
        # the failed-auth limit on, its own valid requests would soon be refused (429).
        config = make_settings(
            redis_url,
            namespace,
            tmp,
            fake.url,
            database_url=database_url,
            admin_token=TOKEN,
            admin_auth_max_failures=0,
        )
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(
                create_app(config), host="127.0.0.1", port=port, log_config=None, access_log=False
            )
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "the admin did not start"
            time.sleep(0.05)
        yield url
        server.should_exit = True
        thread.join(timeout=20)
    client = redis_client(redis_url)
    keys = list(client.scan_iter(match=f"{{{namespace}:*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_every_answer_matches_the_openapi_document(admin_url: str, mode: GenerationMode) -> None:
    # Positive: valid requests are accepted (or 404/409/...: what the document lists).
    # Negative: invalid ones are refused with a documented 4xx, never a 500.
    schema = schemathesis.openapi.from_url(f"{admin_url}/openapi.json")
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result
        operations.append(result.ok())
    # the audit list (issue 17); a message's trace and a phone's messages (issue 15)
    assert len(operations) == 10

    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None
        )
        def check(case: schemathesis.Case[Any]) -> None:
            # A negative header case drops the bearer token on purpose: 401 is its answer.
            auth_mutated = case.meta is not None and case.meta.is_negative_at(
                ParameterLocation.HEADER
            )
            case.call_and_validate(headers=None if auth_mutated else AUTH)

        if mode is GenerationMode.NEGATIVE and operation.path in NO_INPUTS:
            continue  # nothing to get wrong: no request to generate
        check()
