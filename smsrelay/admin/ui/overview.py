"""What the console's overview shows, read from Redis (streams.stats, the same reader as
`smsrelay status` and /metrics) and Postgres (failed_sms counts) at each refresh.

A source that cannot be read is said on the page; the figures it would give are left out,
never shown as zero.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime

from smsrelay import clock
from smsrelay.admin.service import AdminService
from smsrelay.errors import StorageError
from smsrelay.outage import is_outage
from smsrelay.schemas.dead_letter import DeadLetterReason
from smsrelay.schemas.records import RecordStatus
from smsrelay.store import failed_sms
from smsrelay.store import overview as counts
from smsrelay.streams import stats
from smsrelay.streams.stats import ShardStats

READ_TIMEOUT_S = 3.0
# Today a shard has one request stream: every message is in the `normal` lane. When priority
# lanes (`high`, `bulk`) arrive, `lanes_of` returns one row per lane of a shard and the
# table shows them without change.
DEFAULT_LANE = "normal"


@dataclass(frozen=True)
class LaneRow:
    shard: int
    lane: str
    backlog: int
    pending: int
    delayed: int


@dataclass(frozen=True)
class ConsumerRow:
    shard: int
    name: str
    pending: int
    idle_ms: int


@dataclass
class Overview:
    at: datetime
    lanes: list[LaneRow] = field(default_factory=list)
    dead_letters: int = 0  # entries in the dead-letter streams now
    unmirrored: int = 0
    consumers: list[ConsumerRow] = field(default_factory=list)
    dead_lettered: dict[str, int] = field(default_factory=dict)  # lifetime, from Redis
    waiting: dict[str, int] = field(default_factory=dict)  # records still `failed`, by reason
    records: dict[str, int] = field(default_factory=dict)  # records by status
    redis_error: str | None = None
    postgres_error: str | None = None
    # Not built yet: the worker has no circuit breaker, and no per-minute send counts are
    # kept in Redis (the worker's own /metrics counts sends per process). None: no data.
    breaker: str | None = None
    sends_per_minute: float | None = None
    failures_per_minute: float | None = None

    @property
    def reasons(self) -> list[str]:
        known = [r.value for r in DeadLetterReason]
        extra = sorted((set(self.dead_lettered) | set(self.waiting)) - set(known))
        return known + extra

    def total(self, column: str) -> int:
        return sum(int(getattr(lane, column)) for lane in self.lanes)


def lanes_of(shard: ShardStats) -> list[LaneRow]:
    return [LaneRow(shard.shard, DEFAULT_LANE, shard.backlog, shard.pending, shard.delayed)]


async def gather(service: AdminService) -> Overview:
    view = Overview(at=clock.now())
    await asyncio.gather(_read_redis(service, view), _read_postgres(service, view))
    return view


async def _read_redis(service: AdminService, view: Overview) -> None:
    try:
        async with asyncio.timeout(READ_TIMEOUT_S):
            current = await stats.collect(service.redis, service.settings, unread=False)
    except TimeoutError:
        view.redis_error = "Redis did not answer in time"
        return
    except Exception as exc:
        if not is_outage(exc):
            raise
        view.redis_error = f"Redis unavailable ({type(exc).__name__})"
        return
    for shard in current.shards:
        view.lanes += lanes_of(shard)
        view.dead_letters += shard.dead_letters
        view.unmirrored += shard.unmirrored
        view.consumers += [
            ConsumerRow(shard.shard, c.name, c.pending, c.idle_ms) for c in shard.consumers
        ]
        for reason, value in shard.dead_by_reason.items():
            view.dead_lettered[reason] = view.dead_lettered.get(reason, 0) + value


async def _read_postgres(service: AdminService, view: Overview) -> None:
    try:
        async with asyncio.timeout(READ_TIMEOUT_S), service.db.connection() as conn:
            view.records = await failed_sms.counts_by_status(conn, service.namespace)
            view.waiting = await counts.failed_by_reason(conn, service.namespace)
    except TimeoutError:
        view.postgres_error = "Postgres did not answer in time"
    except StorageError as exc:
        view.postgres_error = str(exc)
    else:
        for status in RecordStatus:
            view.records.setdefault(status.value, 0)
