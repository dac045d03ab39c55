"""What the pipeline holds right now, read from Redis: for `smsrelay status` and the admin's
`/metrics` alike (one reader, so both always tell the same story).

Current lengths (backlog, pending, delayed, dead letters in the stream) are gauges; the
counts per dead-letter reason and per admin-retry outcome are lifetime counters kept in Redis.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from smsrelay.schemas.entry import PRIORITIES
from smsrelay.settings import Settings
from smsrelay.streams.clients import text
from smsrelay.streams.keys import (
    MIRROR_GROUP,
    WORKER_GROUP,
    FleetKeys,
    all_shards,
    request_stream_pattern,
    shard_label,
)

# Counting entries the mirror has not read when Redis cannot say (lag unknown after a
# deletion) reads at most this many ids: a scrape stays cheap, the figure stays a lower bound.
MAX_COUNTED = 100_000


@dataclass(frozen=True)
class Consumer:
    name: str
    pending: int
    idle_ms: int


@dataclass
class ShardStats:
    shard: int
    request_stream: str
    dead_stream: str
    backlog: int = 0  # entries in the request streams, every lane (not yet settled)
    pending: int = 0  # delivered to a worker, not yet settled
    backlog_by_priority: dict[str, int] = field(default_factory=dict)
    pending_by_priority: dict[str, int] = field(default_factory=dict)
    delayed: int = 0  # waiting for a retry or a deferred send
    dead_letters: int = 0  # entries in the dead-letter stream now
    unmirrored: int = 0  # dead letters not yet written to Postgres
    consumers: list[Consumer] = field(default_factory=list)
    dead_by_reason: dict[str, int] = field(default_factory=dict)  # lifetime counts
    admin_retries: dict[str, int] = field(default_factory=dict)  # lifetime counts


@dataclass(frozen=True)
class UnreadStream:
    """A request stream of the namespace that no worker reads (a shard outside 0..N-1)."""

    key: str
    length: int


@dataclass(frozen=True)
class BreakerStats:
    """The fleet's provider breaker as Redis holds it."""

    state: str = "closed"
    failures: int = 0
    opened_total: int = 0
    last_error: str = ""

    @property
    def open(self) -> bool:
        return self.state == "open"


@dataclass
class PipelineStats:
    namespace: str
    shards: list[ShardStats]
    unread: list[UnreadStream] | None = None  # None: not looked for
    breaker: BreakerStats = field(default_factory=BreakerStats)
    delivery: dict[str, int] = field(default_factory=dict)  # receipts by status, lifetime

    def total(self, name: str) -> int:
        return sum(int(getattr(s, name)) for s in self.shards)


async def collect(
    client: aioredis.Redis, settings: Settings, *, consumers: bool = True, unread: bool = True
) -> PipelineStats:
    """Read every shard in a few pipelined round trips. Raises Redis errors as they come."""
    keys = all_shards(settings.namespace, settings.shards)
    shards = [ShardStats(k.shard, k.requests, k.dead) for k in keys]
    per_shard = 2 * len(PRIORITIES) + 5
    async with client.pipeline(transaction=False) as pipe:
        for k in keys:
            for stream in k.lanes:
                pipe.xlen(stream)
                pipe.xinfo_groups(stream)
            pipe.zcard(k.delayed)
            pipe.xlen(k.dead)
            pipe.xinfo_groups(k.dead)
            pipe.hgetall(k.dead_counts)
            pipe.hgetall(k.admin_retry_counts)
        replies = await pipe.execute(raise_on_error=False)
    for n, (stats, k) in enumerate(zip(shards, keys, strict=True)):
        reply = replies[per_shard * n : per_shard * (n + 1)]
        lanes, (delayed, dead, dead_groups, dead_counts, retry_counts) = reply[:6], reply[6:]
        read_lanes: list[str] = []
        for index, (priority, stream) in enumerate(zip(PRIORITIES, k.lanes, strict=True)):
            length, groups = lanes[2 * index], lanes[2 * index + 1]
            workers = _group(groups, WORKER_GROUP)
            stats.backlog_by_priority[priority] = _int(length)
            stats.pending_by_priority[priority] = int(workers["pending"]) if workers else 0
            if workers:
                read_lanes.append(stream)
        stats.backlog = sum(stats.backlog_by_priority.values())
        stats.pending = sum(stats.pending_by_priority.values())
        stats.delayed, stats.dead_letters = _int(delayed), _int(dead)
        mirror = _group(dead_groups, MIRROR_GROUP)
        stats.unmirrored = (
            await _unmirrored(client, k.dead, mirror) if mirror else stats.dead_letters
        )
        stats.dead_by_reason = _counts(dead_counts)
        stats.admin_retries = _counts(retry_counts)
        if consumers and read_lanes:
            stats.consumers = await _consumers(client, read_lanes)
    delivery: dict[Any, Any] = await client.hgetall(FleetKeys(settings.namespace).delivery_counts)
    result = PipelineStats(
        settings.namespace,
        shards,
        breaker=await _breaker(client, settings),
        delivery=_counts(delivery),
    )
    if unread:
        result.unread = await unread_streams(client, settings)
    return result


async def _consumers(client: aioredis.Redis, streams: list[str]) -> list[Consumer]:
    """The worker group's consumers over a shard's lanes: pending summed, the least idle."""
    merged: dict[str, Consumer] = {}
    for stream in streams:
        infos: list[dict[Any, Any]] = await client.xinfo_consumers(stream, WORKER_GROUP)
        for info in infos:
            name, pending, idle = text(info["name"]), int(info["pending"]), int(info["idle"])
            seen = merged.get(name)
            if seen is not None:
                pending, idle = pending + seen.pending, min(idle, seen.idle_ms)
            merged[name] = Consumer(name, pending, idle)
    return list(merged.values())


async def unread_streams(client: aioredis.Redis, settings: Settings) -> list[UnreadStream]:
    """Request streams of the namespace outside the shards workers read, with their lengths.

    A SCAN over the keyspace: callers that run often (a scrape) should cache the answer.
    """
    read_by_workers = {str(shard) for shard in range(settings.shards)}
    found: list[str] = []
    async for key in client.scan_iter(
        match=request_stream_pattern(settings.namespace), count=1000, _type="stream"
    ):
        name = text(key)
        label = shard_label(settings.namespace, name)
        if label is not None and label not in read_by_workers:
            found.append(name)
    unread: list[UnreadStream] = []
    for name in sorted(found):
        unread.append(UnreadStream(name, int(await client.xlen(name))))
    return unread


async def _breaker(client: aioredis.Redis, settings: Settings) -> BreakerStats:
    raw: dict[Any, Any] = await client.hgetall(FleetKeys(settings.namespace).breaker)
    fields = {text(k): text(v) for k, v in raw.items()}
    return BreakerStats(
        state=fields.get("state", "closed"),
        failures=_int(fields.get("failures")),
        opened_total=_int(fields.get("opened_total")),
        last_error=fields.get("last_error", ""),
    )


def _group(groups: Any, name: str) -> dict[Any, Any] | None:
    if not isinstance(groups, list):  # no such stream yet: an error reply
        return None
    for group in groups:
        if text(group["name"]) == name:
            return dict(group)
    return None


async def _unmirrored(client: aioredis.Redis, stream: str, mirror: dict[Any, Any]) -> int:
    """Dead letters the mirror has not settled: pending in its group, plus not yet read."""
    pending = int(mirror["pending"])
    lag = mirror.get("lag")
    if lag is not None:
        return pending + int(lag)
    # Redis cannot tell the lag after entries were deleted: count what lies after the
    # group's last-delivered id.
    last = text(mirror.get("last-delivered-id")) or "0-0"
    after = await client.xrange(stream, min=f"({last}", max="+", count=MAX_COUNTED)
    return pending + len(after or [])


def _counts(reply: Any) -> dict[str, int]:
    if not isinstance(reply, dict):
        return {}
    counts: dict[str, int] = {}
    for name, value in reply.items():
        try:
            counts[text(name)] = int(value)
        except (TypeError, ValueError):
            continue
    return counts


def _int(reply: Any) -> int:
    """A number reply; an error in its place (a key of the wrong type) counts 0. (A lost
    connection fails the whole pipeline instead.)"""
    try:
        return int(reply)
    except (TypeError, ValueError):
        return 0
