"""Pipeline-wide metrics of the admin's `/metrics`, read from Redis and Postgres per scrape.

The reads are asynchronous (the admin's clients are), so a scrape first gathers a `Snapshot`
and then renders it through a custom Collector on a registry of its own: two scrapes at once
never see each other's numbers. A source that is down is left out and flagged by
`smsrelay_scrape_error{source=...}`; the scrape itself never fails.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from smsrelay.admin.service import RETRY_OUTCOMES, AdminService
from smsrelay.consumers.outage import TRANSIENT_REDIS_ERRORS
from smsrelay.errors import StorageError
from smsrelay.keys import WORKER_GROUP, all_shards
from smsrelay.logging import get_logger
from smsrelay.redis_conn import text
from smsrelay.schemas.dead_letter import DeadLetterReason
from smsrelay.schemas.records import RecordStatus
from smsrelay.store import failed_sms

log = get_logger("smsrelay.admin.metrics")

POSTGRES_TIMEOUT_S = 3.0


@dataclass
class Snapshot:
    stream_length: dict[int, int] = field(default_factory=dict)
    stream_pending: dict[int, int] = field(default_factory=dict)
    dead_letter_length: dict[int, int] = field(default_factory=dict)
    dead_letters: dict[str, int] = field(default_factory=dict)
    admin_retries: dict[str, int] = field(default_factory=dict)
    records: dict[str, int] = field(default_factory=dict)
    unmirrored: dict[int, int] = field(default_factory=dict)
    unread_streams: int = 0
    errors: dict[str, bool] = field(default_factory=lambda: {"redis": False, "postgres": False})


class SnapshotCollector(Collector):
    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def describe(self) -> Iterable[Metric]:
        return self.collect(Snapshot())

    def collect(self, snapshot: Snapshot | None = None) -> Iterable[Metric]:
        s = snapshot or self.snapshot
        for name, doc, values in (
            ("smsrelay_stream_length", "Entries waiting in the request stream (the backlog).",
             s.stream_length),
            ("smsrelay_stream_pending", "Request entries delivered to workers and not yet "
             "settled (in flight, or held by a dead worker until claimed).", s.stream_pending),
            ("smsrelay_dead_letter_stream_length", "Entries in the dead-letter stream.",
             s.dead_letter_length),
            ("smsrelay_dead_letters_unmirrored", "Dead letters in Redis the mirror has not yet "
             "written to Postgres (the mirror group's pending + lag).", s.unmirrored),
        ):
            gauge = GaugeMetricFamily(name, doc, labels=["shard"])
            for shard, value in sorted(values.items()):
                gauge.add_metric([str(shard)], value)
            yield gauge
        yield GaugeMetricFamily("smsrelay_unread_streams", "Request streams of the namespace "
                                "that no worker reads (entries there are never sent).",
                                value=s.unread_streams)
        records = GaugeMetricFamily("smsrelay_failed_sms_records",
                                    "Rows of failed_sms, by status.", labels=["status"])
        for status, value in sorted(s.records.items()):
            records.add_metric([status], value)
        yield records
        dead = CounterMetricFamily("smsrelay_dead_letters", "Messages dead-lettered, by "
                                   "reason, counted in Redis over every worker and restart.",
                                   labels=["reason"])
        for reason, value in sorted(s.dead_letters.items()):
            dead.add_metric([reason], value)
        yield dead
        retries = CounterMetricFamily("smsrelay_admin_retries",
                                      "Admin \"retry now\" requests, by outcome.",
                                      labels=["outcome"])
        for outcome, value in sorted(s.admin_retries.items()):
            retries.add_metric([outcome], value)
        yield retries
        errors = GaugeMetricFamily("smsrelay_scrape_error", "1 when this scrape could not "
                                   "read the source; its metrics are missing.",
                                   labels=["source"])
        for source, failed in sorted(s.errors.items()):
            errors.add_metric([source], 1 if failed else 0)
        yield errors


def admin_metric_names() -> set[str]:
    """Every sample name the admin's /metrics exposes (counters with their `_total`)."""
    names = set()
    for family in SnapshotCollector(Snapshot()).describe():
        names.add(family.name + "_total" if family.type == "counter" else family.name)
    return names


async def gather(service: AdminService) -> Snapshot:
    snapshot = Snapshot()
    await asyncio.gather(_read_redis(service, snapshot), _read_postgres(service, snapshot))
    return snapshot


def render(snapshot: Snapshot) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snapshot))
    return generate_latest(registry)


async def _read_redis(service: AdminService, s: Snapshot) -> None:
    shards = all_shards(service.settings.namespace, service.settings.shards)
    try:
        async with service.redis.pipeline(transaction=False) as pipe:
            for keys in shards:
                pipe.xlen(keys.requests)
                pipe.xpending(keys.requests, WORKER_GROUP)
                pipe.xlen(keys.dead)
                pipe.hgetall(keys.dead_counts)
                pipe.hgetall(keys.admin_retry_counts)
            replies = await pipe.execute(raise_on_error=False)
    except TRANSIENT_REDIS_ERRORS as exc:
        log.warning("metrics.redis_unavailable", error=f"{type(exc).__name__}: {exc}")
        s.errors["redis"] = True
        return
    s.dead_letters = {reason.value: 0 for reason in DeadLetterReason}
    s.admin_retries = dict.fromkeys(RETRY_OUTCOMES, 0)
    for n, keys in enumerate(shards):
        length, pending, dead, dead_counts, retry_counts = replies[5 * n:5 * n + 5]
        s.stream_length[keys.shard] = _int(length)
        # No group yet (no worker ever ran) raises NOGROUP: nothing is pending then.
        s.stream_pending[keys.shard] = (int(pending.get("pending", 0))
                                        if isinstance(pending, dict) else 0)
        s.dead_letter_length[keys.shard] = _int(dead)
        for target, counts in ((s.dead_letters, dead_counts), (s.admin_retries, retry_counts)):
            if isinstance(counts, dict):
                for name, value in counts.items():
                    target[text(name)] = target.get(text(name), 0) + _int(value)


async def _read_postgres(service: AdminService, s: Snapshot) -> None:
    try:
        async with asyncio.timeout(POSTGRES_TIMEOUT_S), service.db.connection() as conn:
            s.records = await failed_sms.counts_by_status(conn, service.namespace)
    except (StorageError, TimeoutError):
        s.errors["postgres"] = True
        return
    for status in RecordStatus:
        s.records.setdefault(status.value, 0)


def _int(value: Any) -> int:
    """A Redis reply as a number; an error reply (e.g. a key of the wrong type) counts 0."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0
