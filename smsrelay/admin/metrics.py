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

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from smsrelay import clock
from smsrelay.admin.service import RETRY_OUTCOMES, AdminService
from smsrelay.errors import StorageError
from smsrelay.logging import get_logger
from smsrelay.outage import is_outage
from smsrelay.schemas.dead_letter import DeadLetterReason
from smsrelay.schemas.records import RecordStatus
from smsrelay.store import failed_sms
from smsrelay.streams import stats

log = get_logger("smsrelay.admin.metrics")

POSTGRES_TIMEOUT_S = 3.0
UNREAD_SCAN_INTERVAL_S = 300.0
# Every series exists from the start, so rate() works the moment the first receipt comes.
DELIVERY_STATUSES = ("delivered", "undelivered", "failed")


@dataclass
class Snapshot:
    # (shard, priority) -> entries: the request gauges have a series per lane
    stream_length: dict[tuple[int, str], int] = field(default_factory=dict)
    stream_pending: dict[tuple[int, str], int] = field(default_factory=dict)
    dead_letter_length: dict[int, int] = field(default_factory=dict)
    unmirrored: dict[int, int] = field(default_factory=dict)
    unread_streams: int = 0
    breaker_open: bool = False
    delivery: dict[str, int] = field(default_factory=dict)
    dead_letters: dict[str, int] = field(default_factory=dict)
    admin_retries: dict[str, int] = field(default_factory=dict)
    records: dict[str, int] = field(default_factory=dict)
    errors: dict[str, bool] = field(default_factory=lambda: {"redis": False, "postgres": False})


class SnapshotCollector(Collector):
    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def describe(self) -> Iterable[Metric]:
        return self.collect(Snapshot())

    def collect(self, snapshot: Snapshot | None = None) -> Iterable[Metric]:
        s = snapshot or self.snapshot
        for name, doc, lanes in (
            (
                "smsrelay_stream_length",
                "Entries in the request stream of a lane (the backlog, in flight included).",
                s.stream_length,
            ),
            (
                "smsrelay_stream_pending",
                "Request entries delivered to workers and not yet "
                "settled (in flight, or held by a dead worker until claimed).",
                s.stream_pending,
            ),
        ):
            lane_gauge = GaugeMetricFamily(name, doc, labels=["shard", "priority"])
            for (shard, priority), value in sorted(lanes.items()):
                lane_gauge.add_metric([str(shard), priority], value)
            yield lane_gauge
        for name, doc, values in (
            (
                "smsrelay_dead_letter_stream_length",
                "Entries in the dead-letter stream.",
                s.dead_letter_length,
            ),
            (
                "smsrelay_dead_letters_unmirrored",
                "Dead letters the mirror has not yet written "
                "to Postgres (pending in its group, or not yet read).",
                s.unmirrored,
            ),
        ):
            gauge = GaugeMetricFamily(name, doc, labels=["shard"])
            for shard, value in sorted(values.items()):
                gauge.add_metric([str(shard)], value)
            yield gauge
        breaker = GaugeMetricFamily(
            "smsrelay_provider_breaker_open",
            "1 while the fleet's provider breaker is open (read from Redis).",
        )
        if not s.errors["redis"]:
            breaker.add_metric([], 1 if s.breaker_open else 0)
        yield breaker
        unread = GaugeMetricFamily(
            "smsrelay_unread_streams",
            "Request streams of the "
            "namespace that no worker reads (a shard outside "
            "0..SMSRELAY_SHARDS-1): their messages are never sent.",
        )
        if not s.errors["redis"]:  # (unknown, not zero, when Redis could not be read)
            unread.add_metric([], s.unread_streams)
        yield unread
        records = GaugeMetricFamily(
            "smsrelay_failed_sms_records", "Rows of failed_sms, by status.", labels=["status"]
        )
        for status, value in sorted(s.records.items()):
            records.add_metric([status], value)
        yield records
        dead = CounterMetricFamily(
            "smsrelay_dead_letters",
            "Messages dead-lettered, by reason, counted in Redis over every worker and restart.",
            labels=["reason"],
        )
        for reason, value in sorted(s.dead_letters.items()):
            dead.add_metric([reason], value)
        yield dead
        retries = CounterMetricFamily(
            "smsrelay_admin_retries", 'Admin "retry now" requests, by outcome.', labels=["outcome"]
        )
        for outcome, value in sorted(s.admin_retries.items()):
            retries.add_metric([outcome], value)
        yield retries
        delivery = CounterMetricFamily(
            "smsrelay_delivery_status",
            "Delivery receipts that moved a message to a status (delivered, undelivered, "
            "failed, ...), counted in Redis over every admin and restart.",
            labels=["status"],
        )
        for status, value in sorted(s.delivery.items()):
            delivery.add_metric([status], value)
        yield delivery
        errors = GaugeMetricFamily(
            "smsrelay_scrape_error",
            "1 when this scrape could not read the source; its metrics are missing.",
            labels=["source"],
        )
        for source, failed in sorted(s.errors.items()):
            errors.add_metric([source], 1 if failed else 0)
        yield errors


def admin_metric_names() -> set[str]:
    """Every sample name the admin's /metrics exposes (counters with their `_total`)."""
    names = set()
    for family in SnapshotCollector(Snapshot()).describe():
        names.add(family.name + "_total" if family.type == "counter" else family.name)
    return names


async def gather(service: AdminService, unread: UnreadCache) -> Snapshot:
    snapshot = Snapshot()
    await asyncio.gather(_read_redis(service, unread, snapshot), _read_postgres(service, snapshot))
    return snapshot


def render(snapshot: Snapshot) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snapshot))
    return generate_latest(registry)


class UnreadCache:
    """The unread-streams count costs a SCAN of the keyspace: at most one every few minutes."""

    def __init__(self, max_age_s: float = UNREAD_SCAN_INTERVAL_S) -> None:
        self.max_age_s = max_age_s
        self._value: int | None = None
        self._at = 0.0

    async def get(self, service: AdminService) -> int:
        if self._value is None or clock.monotonic() - self._at > self.max_age_s:
            found = await stats.unread_streams(service.redis, service.settings)
            self._value, self._at = len(found), clock.monotonic()
            if found:
                log.warning(
                    "metrics.unread_streams",
                    streams=[u.key for u in found[:10]],
                    entries=sum(u.length for u in found),
                )
        return self._value


async def _read_redis(service: AdminService, unread: UnreadCache, s: Snapshot) -> None:
    try:
        current = await stats.collect(
            service.redis, service.settings, consumers=False, unread=False
        )
        s.unread_streams = await unread.get(service)
    except Exception as exc:
        if not is_outage(exc):
            raise
        log.warning("metrics.redis_unavailable", error=f"{type(exc).__name__}: {exc}")
        s.errors["redis"] = True
        return
    s.breaker_open = current.breaker.open
    s.delivery = {status: 0 for status in DELIVERY_STATUSES} | current.delivery
    s.dead_letters = {reason.value: 0 for reason in DeadLetterReason}
    s.admin_retries = dict.fromkeys(RETRY_OUTCOMES, 0)
    for shard in current.shards:
        for priority, length in shard.backlog_by_priority.items():
            s.stream_length[shard.shard, priority] = length
        for priority, pending in shard.pending_by_priority.items():
            s.stream_pending[shard.shard, priority] = pending
        s.dead_letter_length[shard.shard] = shard.dead_letters
        s.unmirrored[shard.shard] = shard.unmirrored
        for target, counts in (
            (s.dead_letters, shard.dead_by_reason),
            (s.admin_retries, shard.admin_retries),
        ):
            for name, value in counts.items():
                target[name] = target.get(name, 0) + value


async def _read_postgres(service: AdminService, s: Snapshot) -> None:
    try:
        async with asyncio.timeout(POSTGRES_TIMEOUT_S), service.db.connection() as conn:
            s.records = await failed_sms.counts_by_status(conn, service.namespace)
    except (StorageError, TimeoutError):
        s.errors["postgres"] = True
        return
    for status in RecordStatus:
        s.records.setdefault(status.value, 0)
