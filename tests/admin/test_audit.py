"""The audit trail: every change through the API (and the CLI) is one `admin_audit` row with
who, what, which ids and how it ended; `GET /api/admin/audit` lists them newest first.

A viewer's refused change writes nothing (it changed nothing; the guard logs it)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import psycopg
import pytest
import redis.asyncio as aioredis
import structlog
from pydantic import SecretStr

from smsrelay.admin.audit import AuditTrail
from smsrelay.errors import ConflictError
from smsrelay.settings import Settings
from smsrelay.store.db import Database
from smsrelay.streams.keys import ShardKeys
from tests.admin.conftest import LIST, REPLAY, TOKEN, admin_client, get_record, seed

AUDIT = "/api/admin/audit"
ONCALL = "oncall-token-0123456789"
VIEWER = "grafana-token-0123456789"


@pytest.fixture
def roles_settings(admin_settings: Settings) -> Settings:
    tokens = SecretStr(f"oncall:operator:{ONCALL},grafana:viewer:{VIEWER}")
    return admin_settings.model_copy(update={"admin_tokens": tokens})


@pytest.fixture
async def roles_api(roles_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with admin_client(roles_settings) as client:
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def entries(api: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    response = await api.get(AUDIT, params=params, headers=bearer(TOKEN))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True
    data: list[dict[str, Any]] = body["data"]
    return data


async def test_a_retry_writes_one_row_with_the_token_name(
    roles_api: httpx.AsyncClient,
    roles_settings: Settings,
    rclient: aioredis.Redis,
    fake_twilio: Any,
) -> None:
    # Given a failed record, When the operator `oncall` retries it
    message_id, _, phone = await seed(roles_settings, rclient)
    response = await roles_api.post(LIST, json={"id": message_id}, headers=bearer(ONCALL))
    assert response.status_code == 200, response.text
    # Then one row: oncall, retry, the id, ok, with the new SID
    [row] = await entries(roles_api)
    [sent] = fake_twilio.messages_to(phone)
    assert {k: row[k] for k in ("actor", "action", "target", "outcome")} == {
        "actor": "oncall",
        "action": "retry",
        "target": message_id,
        "outcome": "ok",
    }
    assert sent.sid in row["detail"]
    assert row["at"].endswith("Z")


async def test_each_change_and_each_failure_is_one_row(
    api: httpx.AsyncClient, admin_settings: Settings, rclient: aioredis.Redis, fake_twilio: Any
) -> None:
    to_delete, _, _ = await seed(admin_settings, rclient)
    refused, _, refused_phone = await seed(admin_settings, rclient)
    replayed, _, _ = await seed(admin_settings, rclient, reason="retries_exhausted")
    fake_twilio.script(refused_phone, [{"status": 400, "code": 21610}])
    unknown = str(uuid.uuid4())
    # When: a delete, a provider refusal (502), an unknown id (404), a replay, and a retry of
    # a record a replay holds (409)
    assert (await api.delete(LIST, params={"id": to_delete})).status_code == 200
    assert (await api.post(LIST, json={"id": refused})).status_code == 502
    assert (await api.post(LIST, json={"id": unknown})).status_code == 404
    assert (await api.post(REPLAY, json={"ids": [replayed, unknown]})).status_code == 202
    assert (await api.post(LIST, json={"id": replayed})).status_code == 409
    # Then one row each, newest first, all by `admin`
    rows = await entries(api)
    assert [(r["action"], r["target"], r["outcome"]) for r in rows] == [
        ("retry", replayed, "conflict"),
        ("replay", f"{replayed},{unknown}", "ok"),
        ("retry", unknown, "not_found"),
        ("retry", refused, "provider_error"),
        ("delete", to_delete, "ok"),
    ]
    assert {r["actor"] for r in rows} == {"admin"}
    assert "21610" in rows[3]["detail"]
    assert rows[1]["detail"] == "1 queued for replay, 1 skipped"
    # and the refused provider attempt is counted on the record, as before
    assert (await get_record(api, refused_phone))["attempts"] == 2


async def test_a_rate_limited_retry_is_recorded_with_its_wait(
    admin_settings: Settings, rclient: aioredis.Redis
) -> None:
    settings = admin_settings.model_copy(update={"rate_limit_max": 1})
    message_id, _, phone = await seed(settings, rclient, reason="rate_limited", attempts=0)
    await rclient.zadd(
        ShardKeys(settings.namespace).rate_limit(phone),
        {"other-message": (await rclient.time())[0] * 1000},
    )
    async with admin_client(settings) as api:
        assert (await api.post(LIST, json={"id": message_id})).status_code == 429
        assert (await api.post(LIST, json={"id": message_id, "force": True})).status_code == 200
        rows = await entries(api)
    assert [(r["action"], r["outcome"]) for r in rows] == [
        ("retry_forced", "ok"),
        ("retry", "rate_limited"),
    ]
    assert rows[1]["detail"].startswith("retry after ")


async def test_a_replay_by_reason_names_the_reason(
    api: httpx.AsyncClient, admin_settings: Settings, rclient: aioredis.Redis
) -> None:
    for _ in range(2):
        await seed(admin_settings, rclient, reason="poison")
    assert (await api.post(REPLAY, json={"reason": "poison"})).status_code == 202
    [row] = await entries(api)
    assert (row["target"], row["outcome"], row["detail"]) == (
        "reason:poison",
        "ok",
        "2 queued for replay, 0 skipped",
    )


async def test_a_viewers_refused_change_writes_nothing(
    roles_api: httpx.AsyncClient, roles_settings: Settings, rclient: aioredis.Redis
) -> None:
    message_id, _, _ = await seed(roles_settings, rclient)
    with structlog.testing.capture_logs() as logs:
        for response in (
            await roles_api.post(LIST, json={"id": message_id}, headers=bearer(VIEWER)),
            await roles_api.delete(LIST, params={"id": message_id}, headers=bearer(VIEWER)),
            await roles_api.post(REPLAY, json={"ids": [message_id]}, headers=bearer(VIEWER)),
        ):
            assert response.status_code == 403
    # Then no row (nothing changed), but each attempt is logged with the viewer's name
    assert await entries(roles_api) == []
    refused = [e for e in logs if e["event"] == "admin.refused"]
    assert [e["actor"] for e in refused] == ["grafana"] * 3
    # and a viewer may read the trail
    response = await roles_api.get(AUDIT, headers=bearer(VIEWER))
    assert response.status_code == 200 and response.json()["data"] == []


async def test_the_list_pages_like_the_failed_sms_list(
    api: httpx.AsyncClient, admin_settings: Settings
) -> None:
    for _ in range(5):
        assert (await api.post(LIST, json={"id": str(uuid.uuid4())})).status_code == 404
    page = (await api.get(AUDIT, params={"limit": 2, "offset": 1})).json()
    assert len(page["data"]) == 2
    assert page["pagination"] == {"total": 5, "limit": 2, "offset": 1, "hasMore": True}
    everything = await entries(api)
    assert [r["target"] for r in page["data"]] == [r["target"] for r in everything[1:3]]
    ats = [r["at"] for r in everything]
    assert ats == sorted(ats, reverse=True)
    for bad in ({"limit": 0}, {"limit": 501}, {"offset": -1}, {"limit": "x"}):
        response = await api.get(AUDIT, params=bad)
        assert response.status_code == 400, bad
        assert response.json()["success"] is False
    assert (await api.get(AUDIT, headers=bearer("wrong-token-0123456789"))).status_code == 401


async def test_a_failing_audit_write_never_fails_the_change(
    api: httpx.AsyncClient, admin_settings: Settings, rclient: aioredis.Redis, database_url: str
) -> None:
    # Given the audit table cannot be written (renamed away: an insert fails, the rest works)
    message_id, _, phone = await seed(admin_settings, rclient)
    other, _, _ = await seed(admin_settings, rclient)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE public.admin_audit RENAME TO admin_audit_away")
    try:
        with structlog.testing.capture_logs() as logs:
            # When a delete (audited inside its transaction) and a conflict (audited after)
            deleted = await api.delete(LIST, params={"id": message_id})
            await api.post(REPLAY, json={"ids": [other]})
            conflict = await api.post(LIST, json={"id": other})
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("ALTER TABLE public.admin_audit_away RENAME TO admin_audit")
    # Then each change ends as it would have, and what could not be recorded is logged
    assert deleted.status_code == 200, deleted.text
    assert conflict.status_code == 409, conflict.text
    assert (await api.get(LIST, params={"phone": phone})).json()["data"] == []
    events = [e["event"] for e in logs]
    assert "admin.audit_write_failed" in events
    unrecorded = [e for e in logs if e["event"] == "admin.audit_unrecorded"]
    assert {(e["action"], e["outcome"]) for e in unrecorded} >= {("retry", "conflict")}


async def test_postgres_away_leaves_the_original_error_and_a_log_line() -> None:
    # Given an audit trail whose Postgres does not answer
    trail = AuditTrail(
        Database("postgresql://postgres@127.0.0.1:1/postgres", log_outages=False), "nsaway"
    )
    # When a change fails with its own error, Then that error is what the caller sees
    with structlog.testing.capture_logs() as logs, pytest.raises(ConflictError):
        async with trail.change("admin", "delete", "some-id"):
            raise ConflictError("busy")
    [line] = [e for e in logs if e["event"] == "admin.audit_unrecorded"]
    assert (line["actor"], line["action"], line["target"], line["outcome"]) == (
        "admin",
        "delete",
        "some-id",
        "conflict",
    )
    assert "Postgres unreachable" in line["error"]
    # and a change that succeeded still succeeds
    with structlog.testing.capture_logs() as logs:
        async with trail.change("admin", "delete", "other-id"):
            pass
    assert [e["outcome"] for e in logs if e["event"] == "admin.audit_unrecorded"] == ["ok"]


@pytest.mark.slow
async def test_cli_changes_name_the_os_user(
    api: httpx.AsyncClient, admin_settings: Settings, rclient: aioredis.Redis
) -> None:
    from smsrelay.cli_admin import cli_actor
    from tests.admin.test_cli import smsrelay

    message_id, _, _ = await seed(admin_settings, rclient)
    # When `smsrelay dlq delete` runs, and a retry of an unknown id fails
    assert smsrelay(admin_settings, "dlq", "delete", message_id, USER="mallory").returncode == 0
    missing = str(uuid.uuid4())
    assert smsrelay(admin_settings, "dlq", "retry", missing).returncode == 1
    # Then both are in the trail as `cli:<os user>`, even with $USER saying otherwise
    rows = await entries(api)
    assert [(r["actor"], r["action"], r["target"], r["outcome"]) for r in rows] == [
        (cli_actor(), "retry", missing, "not_found"),
        (cli_actor(), "delete", message_id, "ok"),
    ]
    assert cli_actor().startswith("cli:") and len(cli_actor()) > len("cli:")
