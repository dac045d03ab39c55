"""Redis at `maxmemory` with `noeviction` refuses writes (issue 10, defects 10 and 11): what
the provider accepted meanwhile is recorded once Redis takes writes again, never sent twice;
the refusal is said once, shown by /readyz and a metric; an evicting policy is refused."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from smsrelay.consumers.worker import Worker
from smsrelay.errors import ConfigError
from smsrelay.producers.publish import Producer
from smsrelay.settings import Settings
from smsrelay.streams.keys import ShardKeys
from tests.admin.conftest import TOKEN, admin_client
from tests.conftest import make_settings
from tests.faults.support import Processes, phone, record_figure, start_worker
from tests.support.servers import PrivateRedis
from tests.support.wait import wait_for, wait_until
from tests.support.worker import running_worker, stream_state

pytestmark = [pytest.mark.faults, pytest.mark.slow]


def _settings(
    server: PrivateRedis, namespace: str, tmp_path: Path, fake: Any, **overrides: Any
) -> Settings:
    return make_settings(
        server.url, namespace, tmp_path, fake.url, claim_idle_seconds=1, **overrides
    )


def _publish(settings: Settings, count: int) -> None:
    with Producer(settings) as producer:
        for n in range(count):
            assert producer.publish(phone(n), f"oom-{n}").status == "queued"


def _refuse_writes(server: PrivateRedis, refuse: bool) -> None:
    # maxmemory 1 byte: every write that may grow memory is refused with OOM; 0: no limit
    client = server.client()
    client.config_set("maxmemory", "1" if refuse else "0")
    client.close()


@pytest.fixture
def server(private_redis: PrivateRedis) -> PrivateRedis:
    return private_redis


@pytest.mark.timeout(120)
def test_sends_accepted_while_redis_refuses_writes_are_recorded_once(
    server: PrivateRedis, namespace: str, tmp_path: Path, fake_twilio: Any, procs: Processes
) -> None:
    # The provider's timeout outlasts the test's waits: a send that timed out before Redis
    # refused writes would be retried (an ambiguous attempt, rightly), which is not the case
    # this test is about (and, under load, the refusal may come later than the fake's 2 s).
    settings = _settings(
        server, namespace, tmp_path, fake_twilio, worker_concurrency=80, twilio_timeout_seconds=30
    )
    _publish(settings, 80)
    fake_twilio.set_latency(10)  # long enough for both workers to start and Redis to fill
    workers = [start_worker(procs, settings, f"worker-{n}", mirror=True) for n in range(2)]
    # Given 80 sends in flight at the provider (taken by either worker)
    wait_for(lambda: len(fake_twilio.requests) == 80, 60, "80 sends in flight")
    assert fake_twilio.fake.stats()["accepted"] == 0, "answered before Redis filled up"
    # When Redis fills up before their sent markers are written
    _refuse_writes(server, True)
    wait_for(
        lambda: any("redis.writes_refused" in w.log_text() for w in workers), 30, "the refusal said"
    )
    time.sleep(3)  # three claim idle times: nothing may be taken over and resent
    assert len(fake_twilio.requests) == 80
    # Then once memory is there again, each is recorded as sent: 80 SMS, not 160
    _refuse_writes(server, False)
    wait_for(lambda: stream_state(settings) == (0, 0), 40, "drained")
    assert len(fake_twilio.messages) == 80
    assert sum(fake_twilio.fake.duplicates().values()) == 0
    # and each worker said it once, with the cause, however many writes it retried
    for worker in workers:
        assert worker.event_names()["redis.writes_refused"] <= 1
    said = "".join(w.log_text() for w in workers)
    assert "Redis refuses writes: OOM, maxmemory reached" in said
    assert all(w.alive() for w in workers)
    record_figure("oom", "sends in flight when Redis refused writes / SMS sent", "80 / 80")


async def test_a_worker_started_while_redis_refuses_writes_sends_once_it_accepts_them(
    server: PrivateRedis, namespace: str, tmp_path: Path, fake_twilio: Any
) -> None:
    # Given the group already there, 39 messages queued, and Redis refusing writes
    settings = _settings(server, namespace, tmp_path, fake_twilio)
    client = server.client()
    client.xgroup_create(ShardKeys(namespace).requests, "workers", id="0", mkstream=True)
    client.close()
    _publish(settings, 39)
    _refuse_writes(server, True)
    async with running_worker(settings) as worker:
        await wait_until(lambda: worker.outages.redis_writes.down, what="the refusal noticed")
        [gauge] = worker.metrics.redis_writes_refused.collect()
        assert gauge.samples[0].value == 1
        await asyncio.sleep(1)
        assert fake_twilio.requests == []  # a begin that cannot be written sends nothing
        # When memory is freed, Then they go out within seconds, once each
        _refuse_writes(server, False)
        await wait_until(lambda: len(fake_twilio.messages) == 39, timeout=10, what="39 sent")
        await wait_until(lambda: stream_state(settings) == (0, 0), what="drained")
    assert sum(fake_twilio.fake.duplicates().values()) == 0


async def test_readyz_says_redis_refuses_writes(
    server: PrivateRedis, namespace: str, tmp_path: Path, fake_twilio: Any, database_url: str
) -> None:
    settings = _settings(
        server, namespace, tmp_path, fake_twilio, database_url=database_url, admin_token=TOKEN
    )
    async with admin_client(settings) as api:
        assert (await api.get("/readyz")).status_code == 200
        _refuse_writes(server, True)
        answer = await api.get("/readyz")
        assert answer.status_code == 503
        assert answer.json()["redis"] == "refuses writes (OOM, maxmemory reached)"
        _refuse_writes(server, False)
        assert isinstance(api, httpx.AsyncClient)
        assert (await api.get("/readyz")).status_code == 200


async def test_an_evicting_policy_is_refused_at_start(
    server: PrivateRedis, namespace: str, tmp_path: Path, fake_twilio: Any
) -> None:
    settings = _settings(server, namespace, tmp_path, fake_twilio)
    client = server.client()
    client.config_set("maxmemory-policy", "volatile-lru")
    client.close()
    with pytest.raises(ConfigError, match="maxmemory-policy is volatile-lru"):
        await asyncio.wait_for(Worker(settings).run(), timeout=10)
