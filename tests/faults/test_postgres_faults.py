"""Postgres stops while messages are being dead-lettered: nothing is lost, everything is
mirrored once it returns, and the admin answers 503 meanwhile (and reconnects by itself).

Real processes: `smsrelay worker` (mirroring) and `smsrelay admin`, a Postgres server of the
test's own (stopped with `pg_ctl stop -m immediate`, a crash), the shared Redis.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.conftest import make_settings
from tests.faults.support import (
    ADMIN_TOKEN,
    Pipeline,
    Processes,
    phone,
    publish_all,
    record_figure,
    start_admin,
    start_worker,
)
from tests.support.clients import redis_client
from tests.support.servers import ThrowawayPostgres, free_port
from tests.support.wait import wait_for

pytestmark = [pytest.mark.faults, pytest.mark.slow]

LIST = "/api/admin/retry-failed-sms"
STOPPED = {"status": 400, "code": 21610}  # the recipient replied STOP: a permanent error


def refused(n: int) -> str:
    return phone(100 + n)


@pytest.fixture
def admin_http() -> Iterator[tuple[httpx.Client, int]]:
    port = free_port()
    with httpx.Client(
        base_url=f"http://127.0.0.1:{port}",
        timeout=15,
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    ) as client:
        yield client, port


def _total(api: httpx.Client) -> int | None:
    """Records the admin lists; None when it does not answer 200."""
    try:
        response = api.get(LIST, params={"limit": 1})
    except httpx.HTTPError:
        return None
    return int(response.json()["pagination"]["total"]) if response.status_code == 200 else None


def _rows(url: str) -> dict[str, str]:
    with psycopg.connect(url, connect_timeout=3) as conn:
        rows = conn.execute("SELECT id::text, reason FROM public.failed_sms").fetchall()
    return {str(r[0]): str(r[1]) for r in rows}


def test_postgres_stopped_while_dead_lettering_loses_nothing_and_admin_says_503(
    redis_url: str,
    namespace: str,
    tmp_path: Path,
    fake_twilio: Any,
    procs: Processes,
    throwaway_postgres: ThrowawayPostgres,
    admin_http: tuple[httpx.Client, int],
) -> None:
    api, port = admin_http
    settings = make_settings(
        redis_url,
        namespace,
        tmp_path,
        fake_twilio.url,
        database_url=throwaway_postgres.url,
        rate_limit_max=2,
        claim_idle_seconds=1,
    )
    pipeline = Pipeline(redis_client(redis_url), namespace)
    try:
        # Given a mirroring worker and the admin, with Postgres up
        for n in range(23):
            fake_twilio.script(refused(n), [], default=STOPPED)
        worker = start_worker(procs, settings, "worker", mirror=True)
        admin = start_admin(procs, settings, port)
        before = publish_all(settings, [(refused(i), f"before-{i}") for i in range(3)])
        wait_for(lambda: _total(api) == 3, 30, "3 dead letters mirrored")
        # When Postgres stops (immediate: a crash)
        throwaway_postgres.stop("immediate")
        # Then the admin answers 503 with a clear error (not 500, not a hang)
        started = time.monotonic()
        response = api.get(LIST)
        answered_in = time.monotonic() - started
        assert response.status_code == 503, response.text
        assert response.json() == {
            "success": False,
            "error": "database unavailable",
            "service": "postgres",
        }
        ready = api.get("/readyz")
        assert ready.status_code == 503 and ready.json()["postgres"] == "unavailable"
        assert api.get("/healthz").status_code == 200
        # When messages are dead-lettered meanwhile: permanent errors, rate limits, junk
        during = publish_all(
            settings,
            [(refused(3 + i), f"during-{i}") for i in range(20)]
            + [(phone(42), f"limited-{i}") for i in range(6)]
            + [(phone(i), f"healthy-{i}") for i in range(10)],
        )
        junk = [
            pipeline.add(fields)
            for fields in (
                {b"v": b"1", b"body": b"\x00\xff"},
                {b"\xfe": b"\x00"},
                {b"v": b"1", b"id": b"not-a-uuid", b"to": b"+1"},
            )
        ]
        expected_dead = 3 + 20 + 4 + len(junk)
        wait_for(
            lambda: len(pipeline.dead_letters()) == expected_dead,
            30,
            "every dead letter in the dead-letter stream",
        )
        # Then the worker keeps sending what it can, and the admin still says 503
        wait_for(lambda: len(fake_twilio.messages) >= 12, 20, "healthy messages sent")
        assert api.get(LIST).status_code == 503
        assert worker.alive() and admin.alive()
        # (the mirror has met the outage, and backs off to its cap: 5 s)
        wait_for(
            lambda: worker.event_names()["postgres.unavailable"] >= 1,
            10,
            "the mirror to meet the outage",
        )
        time.sleep(max(0.0, 8.0 - (time.monotonic() - started)))  # the outage, not a check
        # When Postgres comes back
        down_for = time.monotonic() - started
        throwaway_postgres.start()
        # Then every dead letter is mirrored, and the admin answers again by itself
        mirrored_in = wait_for(
            lambda: _total(api) == expected_dead,
            60,
            "every dead letter mirrored after Postgres returned",
        )
        assert api.get("/readyz").status_code == 200
        rows = _rows(throwaway_postgres.url)
        dead = pipeline.dead_letters()
        worker_events = worker.event_names()
    finally:
        pipeline.client.close()
    assert worker.alive() and admin.alive()
    reasons = Counter(rows.values())
    assert reasons == {"permanent_error": 23, "rate_limited": 4, "invalid_payload": 3}, reasons
    ids = {d["id"] for d in dead if d["reason"] != "invalid_payload"}
    assert ids <= set(rows)
    assert {before[f"before-{i}"] for i in range(3)} | {
        during[f"during-{i}"] for i in range(20)
    } <= set(rows)
    assert all(uuid.UUID(i) for i in rows)
    # an outage is said once, not once per attempt
    assert 1 <= worker_events["postgres.unavailable"] <= 2, worker_events
    record_figure("postgres-down", "admin answer while Postgres is down", answered_in, "s")
    record_figure(
        "postgres-down", "dead letters during the outage, all mirrored", expected_dead - 3
    )
    record_figure("postgres-down", "mirrored after Postgres returned", mirrored_in, "s")
    record_figure("postgres-down", "outage length", down_for, "s")
