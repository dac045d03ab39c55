"""`smsrelay admin | migrate | mirror | dlq ...` as an operator meets them (real processes)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest
import redis.asyncio as aioredis

from smsrelay.settings import Settings
from smsrelay.store.migrations import LATEST_VERSION
from tests.admin.conftest import TOKEN, seed
from tests.conftest import TEST_ACCOUNT_SID, TEST_AUTH_TOKEN, TEST_FROM
from tests.store.dlq import add_dead_letter, unique_phone
from tests.support.servers import free_port

pytestmark = pytest.mark.slow


def environment(settings: Settings, **env: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SMSRELAY_", "TWILIO_"))}
    base.update(
        {
            "SMSRELAY_REDIS_URL": settings.redis_url,
            "SMSRELAY_DATABASE_URL": settings.database_url,
            "SMSRELAY_NAMESPACE": settings.namespace,
            "SMSRELAY_SPOOL_DIR": str(settings.spool_dir),
            "SMSRELAY_TWILIO_BASE_URL": settings.twilio_base_url,
            "SMSRELAY_TWILIO_FROM": TEST_FROM,
            "TWILIO_ACCOUNT_SID": TEST_ACCOUNT_SID,
            "TWILIO_AUTH_TOKEN": TEST_AUTH_TOKEN,
            "SMSRELAY_ADMIN_TOKEN": TOKEN,
            "SMSRELAY_LOG_LEVEL": "warning",
            **env,
        }
    )
    return base


def smsrelay(settings: Settings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "smsrelay.cli", *args],
        env=environment(settings, **env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def one_line_error(result: subprocess.CompletedProcess[str], code: int, fragment: str) -> None:
    assert result.returncode == code, (result.stdout, result.stderr)
    assert result.stderr.startswith("smsrelay: "), result.stderr
    assert fragment in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr


async def test_dlq_list_retry_delete(admin_settings: Settings, rclient: aioredis.Redis) -> None:
    phone = unique_phone()
    first, _, _ = await seed(admin_settings, rclient, phone=phone, reason="rate_limited")
    second, _, _ = await seed(admin_settings, rclient, phone=phone)
    # list: a readable table, newest first, and the API's JSON
    table = smsrelay(admin_settings, "dlq", "list", "--phone", phone)
    assert table.returncode == 0, table.stderr
    header, *rows, footer = table.stdout.strip().splitlines()
    assert header.split()[:3] == ["ID", "CREATED", "(UTC)"]
    assert [row.split()[0] for row in rows] == [second, first]
    assert footer == "(1-2 of 2)"
    listed = json.loads(
        smsrelay(
            admin_settings, "dlq", "list", "--phone", phone, "--reason", "rate_limited", "--json"
        ).stdout
    )
    assert [r["id"] for r in listed["data"]] == [first]
    assert listed["pagination"] == {"total": 1, "limit": 50, "offset": 0, "hasMore": False}
    # retry: sent once; a second time is a conflict (exit 1, one line, JSON error too)
    sent = smsrelay(admin_settings, "dlq", "retry", second, "--json")
    assert sent.returncode == 0, sent.stderr
    assert json.loads(sent.stdout)["messageSid"].startswith("SM")
    again = smsrelay(admin_settings, "dlq", "retry", second, "--json")
    one_line_error(again, 1, "already resolved")
    assert json.loads(again.stdout)["success"] is False
    # delete, then it is gone
    deleted = smsrelay(admin_settings, "dlq", "delete", first)
    assert deleted.returncode == 0 and deleted.stdout.startswith(f"deleted: {first}")
    one_line_error(smsrelay(admin_settings, "dlq", "delete", first), 1, "no failed SMS")


async def test_dlq_replay_shows_progress(admin_settings: Settings, rclient: aioredis.Redis) -> None:
    phone = unique_phone()
    ids = [(await seed(admin_settings, rclient, phone=phone, reason="poison"))[0] for _ in range(3)]
    result = smsrelay(admin_settings, "dlq", "replay", "--ids", *ids)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "queued 3 dead letter(s) for replay"
    assert "replaying [" in result.stderr and "3/3" in result.stderr
    by_reason = smsrelay(
        admin_settings, "dlq", "replay", "--reason", "poison", "--limit", "5", "--json"
    )
    assert json.loads(by_reason.stdout) == {"success": True, "queued": 0, "skipped": 0}


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (("dlq", "retry", "not-a-uuid"), 2, "id: must be a UUID"),
        (("dlq", "list", "--phone", "12"), 2, "--phone must be an E.164 number"),
        (("dlq", "replay", "--ids", "abc"), 2, "ids.0: must be a UUID"),
        (("dlq", "replay", "--reason", "invalid_payload"), 2, "cannot be replayed"),
    ],
)
def test_bad_arguments_are_one_line(
    admin_settings: Settings, args: tuple[str, ...], code: int, fragment: str
) -> None:
    one_line_error(smsrelay(admin_settings, *args), code, fragment)


def test_postgres_down_is_one_line(admin_settings: Settings) -> None:
    down = {"SMSRELAY_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/postgres"}
    for args in (
        ("dlq", "list"),
        ("migrate",),
        ("dlq", "delete", "6f1c1f0e-6a1b-4b53-9a53-0f5b8ad3c6f1"),
    ):
        one_line_error(
            smsrelay(admin_settings, *args, **down),
            1,
            "Postgres unreachable at 127.0.0.1:1/postgres (connection refused)",
        )


def test_admin_refuses_to_start_without_a_token(admin_settings: Settings) -> None:
    one_line_error(
        smsrelay(admin_settings, "admin", SMSRELAY_ADMIN_TOKEN=""), 2, "SMSRELAY_ADMIN_TOKEN"
    )


async def test_migrate_and_mirror_once(admin_settings: Settings, rclient: aioredis.Redis) -> None:
    migrated = smsrelay(admin_settings, "migrate")
    assert migrated.returncode == 0, migrated.stderr
    assert migrated.stdout.startswith(f"Postgres schema at version {LATEST_VERSION}")
    await add_dead_letter(rclient, admin_settings)
    await add_dead_letter(rclient, admin_settings)
    mirrored = smsrelay(admin_settings, "mirror", "--once")
    assert (mirrored.returncode, mirrored.stdout.strip()) == (0, "mirrored 2 entries")


def test_admin_serves_http_and_stops_on_sigterm(admin_settings: Settings) -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "smsrelay.cli", "admin", "--port", str(port)],
        env=environment(admin_settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                health = httpx.get(f"{base}/healthz", timeout=1)
                break
            except httpx.TransportError:
                assert process.poll() is None, process.communicate()
                assert time.monotonic() < deadline, "the admin never answered"
                time.sleep(0.1)
        assert health.json() == {"status": "ok"}
        assert httpx.get(f"{base}/readyz").status_code == 200
        assert httpx.get(f"{base}/api/admin/retry-failed-sms").status_code == 401
        listed = httpx.get(
            f"{base}/api/admin/retry-failed-sms?limit=1",
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        assert listed.status_code == 200 and listed.json()["success"] is True
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=20)
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr
