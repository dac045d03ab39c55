"""Redis dies, restarts, hangs or is away: acknowledged publishes are delivered, once.

Each test runs its own redis-server (AOF on, `appendfsync always`), kills it with SIGKILL and
starts it again on the same port and directory, as a crashed production server restarts.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, cast

import httpx
import pytest

from smsrelay.producers.publish import AsyncProducer, Producer, PublishResult
from smsrelay.settings import Settings
from tests.conftest import make_settings
from tests.faults.support import (
    ADMIN_TOKEN,
    Pipeline,
    Processes,
    child_env,
    phone,
    record_figure,
    start_admin,
    start_worker,
)
from tests.support.servers import PrivateRedis, free_port
from tests.support.wait import wait_for

pytestmark = [pytest.mark.faults, pytest.mark.slow]


def _settings(
    server: PrivateRedis, namespace: str, tmp_path: Path, fake: Any, **overrides: Any
) -> Settings:
    values: dict[str, Any] = {
        "claim_idle_seconds": 1,
        "rate_limit_max": 1000,
        "worker_concurrency": 16,
    }
    values.update(overrides)
    return make_settings(server.url, namespace, tmp_path, fake.url, **values)


def _sends(fake: Any) -> Counter[str]:
    return Counter(str(m.body) for m in fake.messages)


class Publisher(threading.Thread):
    """Publishes `count` messages at a steady pace, noting each result and how long it took;
    then keeps its producer open until the spool is flushed."""

    def __init__(self, settings: Settings, count: int, prefix: str, pace_s: float = 0.004) -> None:
        super().__init__(name="publisher", daemon=True)
        self.settings = settings
        self.pace_s = pace_s
        self.count = count
        self.prefix = prefix
        self.results: list[tuple[str, PublishResult, float]] = []
        self.spool_left = -1
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with Producer(self.settings) as producer:
                for i in range(self.count):
                    body = f"{self.prefix}-{i:04d}"
                    started = time.monotonic()
                    result = producer.publish(phone(i), body)
                    self.results.append((body, result, time.monotonic() - started))
                    time.sleep(self.pace_s)
                deadline = time.monotonic() + 60
                while producer.spooled() and time.monotonic() < deadline:
                    time.sleep(0.05)
                self.spool_left = producer.spooled()
        except BaseException as exc:  # handed to the test thread
            self.error = exc


def test_redis_killed_and_restarted_delivers_every_acknowledged_publish(
    private_redis: PrivateRedis, namespace: str, tmp_path: Path, fake_twilio: Any, procs: Processes
) -> None:
    # Entries idle 1 s are claimed; the outage (2 s) is longer than that, as a 60 s outage
    # is longer than the default 30 s. Sends finish while Redis is away: their workers keep
    # trying to record them, and nobody else may send them meanwhile.
    settings = _settings(private_redis, namespace, tmp_path, fake_twilio, claim_idle_seconds=1)
    pipeline = Pipeline(private_redis.client(), namespace)
    fake_twilio.set_latency(0.02)
    # Given two workers and a producer publishing steadily
    workers = [start_worker(procs, settings, f"worker-{n}") for n in range(2)]
    publisher = Publisher(settings, 1200, "restart")
    publisher.start()
    try:
        wait_for(lambda: len(fake_twilio.messages) >= 100, 30, "the pipeline flowing")
        # When Redis is killed (SIGKILL) mid-flow and restarted 2 s later from its AOF
        private_redis.kill()
        killed_at = len(publisher.results)
        time.sleep(2.0)  # the outage itself, not an assertion
        private_redis.start()
        publisher.join(timeout=120)
        assert not publisher.is_alive() and publisher.error is None, publisher.error
        statuses = Counter(r.status for _, r, _ in publisher.results)
        acknowledged = {
            body for body, r, _ in publisher.results if r.status in ("queued", "spooled")
        }
        # Then every acknowledged publish (queued, or spooled and flushed) is delivered
        assert publisher.spool_left == 0
        wait_for(
            lambda: set(_sends(fake_twilio)) >= acknowledged, 60, "every acknowledged publish sent"
        )
        wait_for(pipeline.drained, 30, "drained")
        sends = _sends(fake_twilio)
        # And the workers reconnected by themselves: the same processes, alive, said so
        for worker in workers:
            assert worker.alive(), worker.tail()
            events = worker.event_names()
            assert events["redis.unavailable"] >= 1 and events["redis.recovered"] >= 1
            # an outage is said once (per client of the worker), not once per failed call
            assert events["redis.unavailable"] <= 3, events
        dead = pipeline.dead_letters()
    finally:
        pipeline.client.close()
    slowest = max(t for _, _, t in publisher.results)
    record_figure("redis-restart", "publishes", len(publisher.results))
    record_figure(
        "redis-restart",
        "queued / spooled / rejected",
        f"{statuses['queued']} / {statuses['spooled']} / {statuses['rejected']}",
    )
    record_figure("redis-restart", "slowest publish", slowest, "s")
    record_figure("redis-restart", "duplicate SMS", sum(n - 1 for n in sends.values()))
    assert statuses["rejected"] == 0
    assert statuses["spooled"] > 0, f"the outage (at publish {killed_at}) spooled nothing"
    assert set(sends) == acknowledged
    assert max(sends.values()) == 1, {b: n for b, n in sends.items() if n > 1}
    assert dead == []
    assert slowest < 2.5, "publish blocked its caller"


_PUBLISH_SCRIPT = """
import json, sys, time
from smsrelay import Producer
producer = Producer.from_env()
for i in range(int(sys.argv[1])):
    started = time.monotonic()
    r = producer.publish(f"+1415555{i:04d}", f"spool-{i:04d}")
    print(json.dumps({"status": r.status, "id": r.message_id,
                      "took": time.monotonic() - started}), flush=True)
"""

_FLUSH_SCRIPT = """
import sys, time
from smsrelay import Producer
producer = Producer.from_env()  # a producer that finds a spool flushes it by itself
deadline = time.monotonic() + float(sys.argv[1])
while producer.spooled() and time.monotonic() < deadline:
    time.sleep(0.05)
print(producer.spooled(), flush=True)
"""


def _producer_env(settings: Settings) -> dict[str, str]:
    return child_env(
        SMSRELAY_REDIS_URL=settings.redis_url,
        SMSRELAY_NAMESPACE=settings.namespace,
        SMSRELAY_SPOOL_DIR=str(settings.spool_dir),
        SMSRELAY_LOG_LEVEL="error",
    )


def _publish_in_a_process(settings: Settings, count: int) -> list[dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "-c", _PUBLISH_SCRIPT, str(count)],
        env=_producer_env(settings),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_redis_unreachable_publishes_are_spooled_then_delivered_after_a_restart(
    private_redis: PrivateRedis, namespace: str, tmp_path: Path, fake_twilio: Any, procs: Processes
) -> None:
    settings = _settings(private_redis, namespace, tmp_path, fake_twilio)
    count = 60
    # Given Redis is down
    private_redis.kill()
    # When a process publishes, then exits
    results = _publish_in_a_process(settings, count)
    # Then each publish returned `spooled` at once, kept on disk
    assert [r["status"] for r in results] == ["spooled"] * count
    assert max(r["took"] for r in results) < 1.0
    assert len(list(settings.spool_dir.glob("*.json"))) == count
    # When Redis is back and another process (a restarted app) starts a producer
    private_redis.start()
    start_worker(procs, settings, "worker")
    flushed = subprocess.run(
        [sys.executable, "-c", _FLUSH_SCRIPT, "30"],
        env=_producer_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert flushed.stdout.strip() == "0", flushed.stderr
    # Then every spooled request is sent, once, under the id the first process was given
    pipeline = Pipeline(private_redis.client(), namespace)
    try:
        wait_for(lambda: len(fake_twilio.messages) >= count, 30, "all spooled requests sent")
        wait_for(pipeline.drained, 15, "drained")
        marked = pipeline.sent_markers(r["id"] for r in results)
    finally:
        pipeline.client.close()
    sends = _sends(fake_twilio)
    assert set(sends) == {f"spool-{i:04d}" for i in range(count)}
    assert max(sends.values()) == 1
    assert marked == {r["id"] for r in results}
    assert list(settings.spool_dir.glob("*.json")) == []
    record_figure(
        "redis-unreachable", "slowest publish (refused)", max(r["took"] for r in results), "s"
    )


def test_hung_redis_publish_returns_in_bounded_time_and_is_sent_once(
    private_redis: PrivateRedis, namespace: str, tmp_path: Path, fake_twilio: Any, procs: Processes
) -> None:
    settings = _settings(private_redis, namespace, tmp_path, fake_twilio)
    pipeline = Pipeline(private_redis.client(), namespace)
    # Given a Redis that accepts connections but answers nothing (SIGSTOP)
    with Producer(settings) as producer:
        assert producer.publish(phone(0), "warm-up").status == "queued"
        private_redis.pause()
        try:
            # When a producer publishes
            timed: list[tuple[PublishResult, float]] = []
            for i in range(1, 4):
                started = time.monotonic()
                timed.append((producer.publish(phone(i), f"hung-{i}"), time.monotonic() - started))
        finally:
            private_redis.resume()
        # Then each call returned within its bound, spooled
        assert [r.status for r, _ in timed] == ["spooled"] * 3
        slowest = max(t for _, t in timed)
        assert slowest < 2 * settings.publish_timeout_seconds + 0.5, slowest
        wait_for(lambda: producer.spooled() == 0, 40, "the spool flushed")
    try:
        # And once Redis answers again, each message is sent once, even if the timed-out
        # call had reached Redis and the flush published it a second time
        copies = Counter(pipeline.request_ids())
        start_worker(procs, settings, "worker")
        wait_for(lambda: len(_sends(fake_twilio)) == 4, 30, "4 messages sent")
        wait_for(pipeline.drained, 15, "drained")
        sends = _sends(fake_twilio)
    finally:
        pipeline.client.close()
    record_figure("redis-hung", "slowest publish (no answer)", slowest, "s")
    record_figure(
        "redis-hung", "request entries published twice", sum(n - 1 for n in copies.values())
    )
    assert set(sends) == {"warm-up", "hung-1", "hung-2", "hung-3"}
    assert max(sends.values()) == 1, sends


def test_hung_redis_async_publish_returns_in_bounded_time_then_flushes(
    private_redis: PrivateRedis, namespace: str, tmp_path: Path, fake_twilio: Any
) -> None:
    # The async producer's client has no read timeout: one asyncio.timeout bounds each call.
    settings = _settings(private_redis, namespace, tmp_path, fake_twilio)
    pipeline = Pipeline(private_redis.client(), namespace)

    async def scenario() -> tuple[list[str], float, int]:
        async with AsyncProducer(settings) as producer:
            assert (await producer.publish(phone(0), "warm-up")).status == "queued"
            private_redis.pause()
            try:
                started = time.monotonic()
                results = await asyncio.gather(
                    *(producer.publish(phone(i), f"hung-{i}") for i in range(1, 4))
                )
                took = time.monotonic() - started
            finally:
                private_redis.resume()
            deadline = time.monotonic() + 40
            while producer._core.spool.pending() and time.monotonic() < deadline:  # noqa: ASYNC110 (a spool dir, no event)
                await asyncio.sleep(0.1)
            return [r.status for r in results], took, len(producer._core.spool.pending())

    try:
        statuses, took, left = asyncio.run(scenario())
        entries = cast(
            list[tuple[bytes, dict[bytes, bytes]]], pipeline.client.xrange(pipeline.keys.requests)
        )
        bodies = {fields[b"body"].decode() for _, fields in entries}
    finally:
        pipeline.client.close()
    assert statuses == ["spooled"] * 3
    assert took < 2 * settings.publish_timeout_seconds + 0.5, took
    assert left == 0
    assert bodies >= {"warm-up", "hung-1", "hung-2", "hung-3"}


def test_a_producer_killed_mid_flush_publishes_each_spooled_request_once(
    private_redis: PrivateRedis, namespace: str, tmp_path: Path, fake_twilio: Any, procs: Processes
) -> None:
    settings = _settings(private_redis, namespace, tmp_path, fake_twilio)
    count = 300
    # Given 300 requests spooled while Redis was down
    private_redis.kill()
    assert {r["status"] for r in _publish_in_a_process(settings, count)} == {"spooled"}
    private_redis.start()
    pipeline = Pipeline(private_redis.client(), namespace)
    try:
        # When the process flushing them is SIGKILLed half-way
        flusher = procs.start(
            "flusher", [sys.executable, "-c", _FLUSH_SCRIPT, "60"], _producer_env(settings)
        )
        wait_for(
            lambda: pipeline.length(pipeline.keys.requests) >= count // 3, 30, "the flush under way"
        )
        flusher.signal(signal.SIGKILL)
        flusher.wait(timeout=10)
        left = len(list(settings.spool_dir.glob("*.json")))
        assert 0 < left < count, left
        # And another process flushes the rest
        finisher = procs.start(
            "finisher", [sys.executable, "-c", _FLUSH_SCRIPT, "60"], _producer_env(settings)
        )
        assert finisher.wait(timeout=90) == 0
        # Then each request is on the stream once, and sent once
        ids = pipeline.request_ids()
        start_worker(procs, settings, "worker")
        wait_for(lambda: len(fake_twilio.messages) >= count, 60, "all sent")
        wait_for(pipeline.drained, 15, "drained")
    finally:
        pipeline.client.close()
    assert len(ids) == len(set(ids)) == count
    sends = _sends(fake_twilio)
    assert len(sends) == count and max(sends.values()) == 1
    record_figure("spool-flush-kill", "requests left in the spool at the kill", left)


def test_a_redis_outage_with_every_slot_busy_is_logged_once(
    private_redis: PrivateRedis, namespace: str, tmp_path: Path, fake_twilio: Any, procs: Processes
) -> None:
    settings = _settings(
        private_redis, namespace, tmp_path, fake_twilio, worker_concurrency=4, claim_idle_seconds=1
    )
    pipeline = Pipeline(private_redis.client(), namespace)
    # Given a worker whose every slot holds a slow send
    fake_twilio.set_latency(1.0)
    with Producer(settings) as producer:
        for i in range(12):
            assert producer.publish(phone(i), f"busy-{i}").status == "queued"
    worker = start_worker(procs, settings, "worker")
    try:
        wait_for(
            lambda: sum(1 for r in fake_twilio.requests if r.status is None) == 4,
            20,
            "4 sends in flight",
        )
        # When Redis is away for 4 s
        private_redis.kill()
        time.sleep(4.0)  # the outage itself, not an assertion
        private_redis.start()
        wait_for(lambda: len(fake_twilio.messages) >= 12, 30, "all sent")
        wait_for(pipeline.drained, 15, "drained")
    finally:
        pipeline.client.close()
    # Then the worker said so once when it started and once when it ended
    events = worker.event_names()
    record_figure(
        "redis-outage-log",
        "redis.unavailable lines for one 4 s outage",
        events["redis.unavailable"],
    )
    assert 1 <= events["redis.unavailable"] <= 3, events
    assert events["redis.recovered"] == events["redis.unavailable"], events


def test_the_admin_reconnects_to_a_restarted_redis_by_itself(
    private_redis: PrivateRedis,
    namespace: str,
    tmp_path: Path,
    fake_twilio: Any,
    procs: Processes,
    database_url: str,
) -> None:
    settings = _settings(private_redis, namespace, tmp_path, fake_twilio, database_url=database_url)
    port = free_port()
    # Given the admin service running against a Redis that is then killed
    start_admin(procs, settings, port)
    with httpx.Client(
        base_url=f"http://127.0.0.1:{port}",
        timeout=15,
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    ) as api:
        assert api.get("/readyz").status_code == 200
        private_redis.kill()
        # Then it says Redis is away (503 on /readyz, a flagged scrape), serving what it can
        ready = api.get("/readyz")
        assert ready.status_code == 503 and ready.json()["redis"].startswith("unavailable")
        assert api.get("/api/admin/retry-failed-sms").status_code == 200  # Postgres only
        assert 'smsrelay_scrape_error{source="redis"} 1.0' in api.get("/metrics").text
        # When Redis is back, Then the same process answers ready again, by itself
        private_redis.start()
        took = wait_for(lambda: api.get("/readyz").status_code == 200, 30, "the admin ready again")
        metrics = api.get("/metrics").text
    assert 'smsrelay_scrape_error{source="redis"} 0.0' in metrics
    assert "smsrelay_stream_length" in metrics
    record_figure("redis-restart-admin", "admin ready again after Redis returned", took, "s")


def test_sigterm_during_a_redis_outage_records_every_send_once_redis_returns(
    private_redis: PrivateRedis, namespace: str, tmp_path: Path, fake_twilio: Any, procs: Processes
) -> None:
    grace = 8.0
    settings = _settings(
        private_redis,
        namespace,
        tmp_path,
        fake_twilio,
        worker_concurrency=8,
        shutdown_grace_seconds=grace,
    )
    pipeline = Pipeline(private_redis.client(), namespace)
    fake_twilio.set_latency(0.5)
    with Producer(settings) as producer:
        for i in range(40):
            assert producer.publish(phone(i), f"term-outage-{i}").status == "queued"
    worker = start_worker(procs, settings, "worker")
    try:
        # Given sends in flight when Redis dies (the provider accepts them meanwhile)
        wait_for(
            lambda: sum(1 for r in fake_twilio.requests if r.status is None) == 8,
            20,
            "8 sends in flight",
        )
        private_redis.kill()
        started = time.monotonic()
        # When the worker is told to stop, and Redis returns within its grace period
        time.sleep(0.7)  # the sends finish while Redis is away; not an assertion
        worker.signal(signal.SIGTERM)
        time.sleep(3.3)  # the rest of the outage
        private_redis.start()
        code = worker.wait(timeout=grace + 10)
        took = time.monotonic() - started
        # Then it exits 0 within the grace period, having recorded every accepted send
        assert code == 0, worker.tail()
        assert took <= grace + 1.5, took
        fake_twilio.set_latency(0)
        start_worker(procs, settings, "second")
        wait_for(lambda: len({m.body for m in fake_twilio.messages}) == 40, 30, "all sent")
        wait_for(pipeline.drained, 15, "drained")
        sends = Counter(str(m.body) for m in fake_twilio.messages)
    finally:
        pipeline.client.close()
    duplicates = {b: n for b, n in sends.items() if n > 1}
    record_figure(
        "sigterm-redis-down",
        "duplicate SMS after a stop during a Redis outage",
        sum(n - 1 for n in duplicates.values()),
    )
    assert duplicates == {}
