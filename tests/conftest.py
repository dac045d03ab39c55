"""Shared fixtures: real Redis and Postgres from the environment (testcontainers where a
Docker engine runs), a namespace per test, and the fake Twilio spoken to by the real SDK
(the `fake_twilio` fixture of smsrelay's pytest plugin).

Services: SMSRELAY_TEST_REDIS_URL (default redis://127.0.0.1:6379/0) and
SMSRELAY_TEST_DATABASE_URL (default postgresql://postgres@127.0.0.1:5432/postgres). A service
that cannot be reached fails the tests that need it with a message saying how to start it.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from smsrelay.settings import Settings
from tests.support.clients import close_test_clients, redis_client
from tests.support.servers import PG_BIN, PrivateRedis, ThrowawayPostgres, require_tool

REDIS_URL_VAR = "SMSRELAY_TEST_REDIS_URL"
DATABASE_URL_VAR = "SMSRELAY_TEST_DATABASE_URL"
TEST_ACCOUNT_SID = "AC" + "0" * 32
TEST_AUTH_TOKEN = "test-auth-token"  # the fake Twilio's credentials
TEST_FROM = "+15005550006"


def _docker_available() -> bool:
    return shutil.which("docker") is not None and Path("/var/run/docker.sock").exists()


def _redis_reachable(url: str) -> str | None:
    try:
        redis_client(url, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        return str(exc)
    return None


@pytest.fixture(autouse=True)
def _close_test_clients() -> Iterator[None]:
    """Close the sync Redis clients the test made (tests/support/clients.py says why)."""
    yield
    close_test_clients()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    url = os.environ.get(REDIS_URL_VAR, "redis://127.0.0.1:6379/0")
    problem = _redis_reachable(url)
    if problem is None:
        yield url
        return
    if os.environ.get(REDIS_URL_VAR) is None and _docker_available():
        from testcontainers.redis import RedisContainer

        with RedisContainer("redis:7") as container:
            host = container.get_container_host_ip()
            yield f"redis://{host}:{container.get_exposed_port(6379)}/0"
        return
    pytest.fail(
        f"Redis is not reachable at {url} ({problem}). Start it (e.g. `redis-server "
        f"--daemonize yes`) or set {REDIS_URL_VAR}.",
        pytrace=False,
    )


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """The server's maintenance database; tests use `database_url`, a fresh one per session."""
    url = os.environ.get(DATABASE_URL_VAR, "postgresql://postgres@127.0.0.1:5432/postgres")
    try:
        with psycopg.connect(url, connect_timeout=3):
            pass
    except psycopg.Error as exc:
        if os.environ.get(DATABASE_URL_VAR) is None and _docker_available():
            from testcontainers.postgres import PostgresContainer

            with PostgresContainer("postgres:16", driver=None) as container:
                yield container.get_connection_url()
            return
        pytest.fail(
            f"Postgres is not reachable at {url} ({exc}). Start it or set {DATABASE_URL_VAR}.",
            pytrace=False,
        )
    yield url


@pytest.fixture(scope="session")
def database_url(postgres_url: str) -> Iterator[str]:
    name = f"smsrelay_test_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = postgres_url.rpartition("/")
    yield f"{base}/{name}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def namespace(redis_url: str) -> Iterator[str]:
    ns = f"t{uuid.uuid4().hex[:10]}"
    yield ns
    client = redis_client(redis_url)
    # The shards' keys `{ns:N}:...` and the namespace's fleet keys `{ns}:...`; nothing else.
    keys = [
        *client.scan_iter(match=f"{{{ns}:*", count=1000),
        *client.scan_iter(match=f"{{{ns}}}:*", count=1000),
    ]
    if keys:
        client.delete(*keys)
    client.close()


# `fake_twilio` (and `sms_outbox`) come from smsrelay's own pytest plugin
# (smsrelay/testing/pytest_plugin.py, registered by the package's `pytest11` entry point):
# these tests use the fixture applications get.


def make_settings(
    redis_url: str,
    namespace: str,
    tmp_path: Path,
    twilio_url: str,
    database_url: str = "postgresql://localhost/postgres",
    **overrides: Any,
) -> Settings:
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "database_url": database_url,
        "namespace": namespace,
        "twilio_account_sid": TEST_ACCOUNT_SID,
        "twilio_auth_token": TEST_AUTH_TOKEN,
        "twilio_from": TEST_FROM,
        "twilio_base_url": twilio_url,
        "twilio_timeout_seconds": 2,
        "backoff_base_seconds": 0.05,
        "backoff_jitter": 0,
        "claim_idle_seconds": 2,
        "metrics_port": 0,
        "spool_dir": tmp_path / "spool",
        "shutdown_grace_seconds": 5,
        "log_format": "console",
        "log_level": "warning",
    }
    values.update(overrides)
    return Settings.load(**values)


@pytest.fixture
def settings(redis_url: str, namespace: str, tmp_path: Path, fake_twilio: Any) -> Settings:
    return make_settings(redis_url, namespace, tmp_path, fake_twilio.url)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A redis-server of the test's own (AOF always), to kill, pause or fill."""
    require_tool("redis-server", "apt-get install redis-server")
    server = PrivateRedis(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def throwaway_postgres() -> Iterator[ThrowawayPostgres]:
    """A Postgres cluster of the test's own, to stop and start."""
    require_tool(str(PG_BIN / "initdb"), "apt-get install postgresql-15")
    require_tool("runuser", "apt-get install util-linux")
    server = ThrowawayPostgres()
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.close()
