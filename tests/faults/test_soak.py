"""Soak: many messages through two worker processes; memory must come back down.

CI runs 5,000 messages; `scripts/soak` runs the full 100,000 (SMSRELAY_SOAK_COUNT).
Redis is a private server (no persistence: this measures memory, not durability) and the
fake Twilio runs as its own process, so the figures are the workers' and Redis' alone.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any, cast

import pytest

from smsrelay.producers.publish import Producer
from tests.conftest import make_settings
from tests.faults.support import (
    FakeTwilioProcess,
    Pipeline,
    Processes,
    phone,
    record_figure,
    start_worker,
)
from tests.support.servers import PrivateRedis
from tests.support.wait import wait_for

COUNT = int(os.environ.get("SMSRELAY_SOAK_COUNT", "5000"))
PHONES = 1000
RSS_GROWTH_LIMIT_MB = 20.0
# Redis' memory without its client connections' buffers (the workers open more connections
# under load: bounded by their pools, not by the message count) must return to the baseline.
REDIS_BASELINE_SLACK_MB = 1.0

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.timeout(180 + COUNT // 150)]


def _used_mb(info: dict[str, Any]) -> float:
    return int(info["used_memory"]) / 2**20


def _data_mb(pipeline: Pipeline) -> tuple[float, float]:
    """(Redis memory less its client connections' buffers, those buffers), MiB."""
    stats = pipeline.client.memory_stats()
    clients = int(stats["clients.normal"])
    return (int(stats["total.allocated"]) - clients) / 2**20, clients / 2**20


class Publisher(threading.Thread):
    def __init__(self, producer: Producer, start_at: int, stop_at: int) -> None:
        super().__init__(name="soak-publisher", daemon=True)
        self.producer, self.start_at, self.stop_at = producer, start_at, stop_at
        self.statuses: dict[str, int] = {}

    def run(self) -> None:
        for i in range(self.start_at, self.stop_at):
            status = self.producer.publish(phone(i % PHONES), f"soak-{i}").status
            self.statuses[status] = self.statuses.get(status, 0) + 1


def test_soak_memory_returns_to_baseline_and_workers_do_not_grow(
    tmp_path: Path, namespace: str, procs: Processes
) -> None:
    server = PrivateRedis(tmp_path / "redis", appendonly=False)
    server.start()
    fake = FakeTwilioProcess(procs)
    fake.start()
    settings = make_settings(
        server.url,
        namespace,
        tmp_path,
        fake.url,
        rate_limit_max=1_000_000,
        rate_limit_window_seconds=1,
        worker_concurrency=64,
    )
    pipeline = Pipeline(server.client(), namespace)
    producer = Producer(settings)
    try:
        # Given two workers, warmed up on the first messages
        workers = [start_worker(procs, settings, f"worker-{n}") for n in range(2)]
        warm = max(1000, COUNT // 10)
        warm_up = Publisher(producer, 0, warm)
        warm_up.run()
        wait_for(
            lambda: fake.stats()["accepted"] >= warm and pipeline.drained(),
            120,
            "the warm-up drained",
        )
        _forget_markers(pipeline)
        time.sleep(1.5)  # rate-limit windows (1 s) expire: the baseline holds no message state
        baseline = pipeline.client.info("memory")
        data_before, clients_before = _data_mb(pipeline)
        rss_before = [w.rss_kib() for w in workers]
        # When the rest is published while the workers drain it
        started = time.monotonic()
        publisher = Publisher(producer, warm, COUNT)
        publisher.start()
        peak_mb, peak_rss = _used_mb(baseline), list(rss_before)
        deadline = started + 60 + COUNT / 50
        while fake.stats()["accepted"] < COUNT or not pipeline.drained():
            assert time.monotonic() < deadline, f"soak not drained: {fake.stats()}"
            assert all(w.alive() for w in workers), procs.describe()
            peak_mb = max(peak_mb, _used_mb(pipeline.client.info("memory")))
            peak_rss = [max(p, w.rss_kib()) for p, w in zip(peak_rss, workers, strict=True)]
            time.sleep(0.5)
        took = time.monotonic() - started
        publisher.join(timeout=30)
        rss_after = [w.rss_kib() for w in workers]
        stats = fake.stats()
        # Then: every message once, the stream empty, and Redis back to its baseline once the
        # per-message state kept on purpose (sent markers, 7 days) is set aside
        after_drain = pipeline.client.info("memory")
        marker_count, marker_bytes = _forget_markers(pipeline)
        trace_count, trace_bytes = _forget_markers(pipeline, "trace")
        time.sleep(1.5)
        leftovers = _message_keys(pipeline)
        after = pipeline.client.info("memory")
        data_after, clients_after = _data_mb(pipeline)
        stream_bytes = int(cast(int, pipeline.client.memory_usage(pipeline.keys.requests)))
        dead = pipeline.dead_letters()
    finally:
        producer.close()
        pipeline.client.close()
        fake.close()
        server.close()
    sent = COUNT - warm
    growth_mb = [(a - b) / 1024 for a, b in zip(rss_after, rss_before, strict=True)]
    record_figure("soak", "messages (after warm-up)", sent)
    record_figure("soak", "throughput, 2 workers", sent / took, "msg/s")
    record_figure(
        "soak",
        "Redis used_memory baseline / peak / after drain",
        f"{_used_mb(baseline):.2f} / {peak_mb:.2f} / {_used_mb(after_drain):.2f}",
        "MiB",
    )
    record_figure(
        "soak",
        "sent markers kept after the drain (7-day TTL)",
        f"{marker_count} x {marker_bytes / max(marker_count, 1):.0f}",
        "bytes",
    )
    record_figure(
        "soak",
        "message traces kept after the drain (SMSRELAY_TRACE_TTL_SECONDS)",
        f"{trace_count} x {trace_bytes / max(trace_count, 1):.0f}",
        "bytes",
    )
    record_figure(
        "soak", "Redis used_memory after markers and traces expire", _used_mb(after), "MiB"
    )
    record_figure(
        "soak",
        "Redis memory less client buffers, baseline / after",
        f"{data_before:.3f} / {data_after:.3f}",
        "MiB",
    )
    record_figure(
        "soak",
        "Redis client connection buffers, baseline / after",
        f"{clients_before:.3f} / {clients_after:.3f}",
        "MiB",
    )
    record_figure("soak", "request stream after drain", stream_bytes, "bytes")
    record_figure(
        "soak",
        "worker RSS before / after",
        " ; ".join(
            f"{b / 1024:.1f} -> {a / 1024:.1f}" for b, a in zip(rss_before, rss_after, strict=True)
        ),
        "MiB",
    )
    record_figure("soak", "worker RSS growth (max)", max(growth_mb), "MiB")
    assert publisher.statuses == {"queued": sent}
    assert stats["accepted"] == COUNT and stats["duplicates"] == [], stats["duplicates"][:5]
    assert dead == []
    assert marker_count == sent
    assert trace_count == COUNT  # one trace a message, the warm-up's included
    assert leftovers == {}, leftovers
    assert data_after - data_before < REDIS_BASELINE_SLACK_MB
    assert max(growth_mb) < RSS_GROWTH_LIMIT_MB, growth_mb


def _forget_markers(pipeline: Pipeline, kind: str = "sent") -> tuple[int, int]:
    """Delete the sent markers (kept 7 days by design), or with `kind="trace"` the traces (kept
    SMSRELAY_TRACE_TTL_SECONDS by design); returns (count, bytes they used)."""
    pattern = pipeline.keys.sent("*") if kind == "sent" else pipeline.keys.trace("*")
    keys = list(pipeline.client.scan_iter(match=pattern, count=5000))
    sample = keys[:200]
    per_key = (
        (sum(int(cast(int, pipeline.client.memory_usage(k))) for k in sample) / len(sample))
        if sample
        else 0.0
    )
    for start in range(0, len(keys), 5000):
        pipeline.client.delete(*keys[start : start + 5000])
    return len(keys), int(per_key * len(keys))


def _message_keys(pipeline: Pipeline) -> dict[str, int]:
    """Keys left besides the streams and their bookkeeping, by kind (expected: none)."""
    fixed = {
        *pipeline.keys.lanes,
        pipeline.keys.dead,
        pipeline.keys.outcomes,
        pipeline.keys.dead_counts,
    }
    kinds: dict[str, int] = {}
    for raw in pipeline.client.scan_iter(match=f"{pipeline.keys.tag}:*", count=5000):
        key = raw.decode()
        if key in fixed:
            continue
        kind = key.removeprefix(pipeline.keys.tag + ":").split(":")[0]
        kinds[kind] = kinds.get(kind, 0) + 1
    return kinds
