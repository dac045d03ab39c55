"""What the console's overview shows, read from Redis (streams.stats, the same reader as
`smsrelay status` and /metrics: backlog, breaker, delivery receipts) and Postgres (failed_sms
counts, sends and failures per minute) at each refresh.

A source that cannot be read is said on the page; the figures it would give are left out,
never shown as zero.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from smsrelay import clock
from smsrelay.admin.service import AdminService
from smsrelay.errors import StorageError
from smsrelay.outage import is_outage
from smsrelay.schemas.dead_letter import DeadLetterReason
from smsrelay.schemas.entry import PRIORITIES
from smsrelay.schemas.records import RecordStatus
from smsrelay.store import activity, failed_sms
from smsrelay.store import overview as counts
from smsrelay.store.activity import Minute
from smsrelay.store.sent_sms import STATUS_RANK
from smsrelay.streams import stats
from smsrelay.streams.stats import ShardStats

READ_TIMEOUT_S = 3.0
RATE_MINUTES = activity.DEFAULT_MINUTES
# A shard's lanes, in the order workers serve them (rule 17).
LANES = PRIORITIES
DEFAULT_LANE = "normal"
# Bars are drawn in 5 % steps by CSS classes (`w-0` .. `w-100`): the page's policy allows no
# style attribute, so a width cannot be written inline.
BAR_STEP = 5


@dataclass(frozen=True)
class LaneRow:
    shard: int
    lane: str
    backlog: int
    pending: int
    delayed: int | None  # None: the breakdown does not say (the shard's delay set is shared)


@dataclass(frozen=True)
class ConsumerRow:
    shard: int
    name: str
    pending: int
    idle_ms: int


@dataclass(frozen=True)
class Breaker:
    open: bool
    state: str
    failures: int  # systemic failures in a row, while closed
    opened_total: int
    last_error: str


@dataclass(frozen=True)
class RateRow:
    """One minute of the sends-and-failures chart; `*_bar` is a `w-N` class."""

    start: datetime
    sent: int
    failed: int
    sent_bar: str
    failed_bar: str
    current: bool  # the minute now running: its count is still growing


@dataclass
class Overview:
    at: datetime
    lanes: list[LaneRow] = field(default_factory=list)
    totals: dict[str, int] = field(
        default_factory=lambda: {"backlog": 0, "pending": 0, "delayed": 0}
    )
    dead_letters: int = 0  # entries in the dead-letter streams now
    unmirrored: int = 0
    consumers: list[ConsumerRow] = field(default_factory=list)
    dead_lettered: dict[str, int] = field(default_factory=dict)  # lifetime, from Redis
    waiting: dict[str, int] = field(default_factory=dict)  # records still `failed`, by reason
    records: dict[str, int] = field(default_factory=dict)  # records by status
    breaker: Breaker | None = None  # None: Redis could not be read
    delivery: list[tuple[str, int]] = field(default_factory=list)  # receipts, lifetime
    rates: list[RateRow] = field(default_factory=list)  # newest first
    redis_error: str | None = None
    postgres_error: str | None = None

    @property
    def reasons(self) -> list[str]:
        known = [r.value for r in DeadLetterReason]
        extra = sorted((set(self.dead_lettered) | set(self.waiting)) - set(known))
        return known + extra

    def total(self, column: str) -> int:
        return self.totals.get(column, 0)

    @property
    def sent_total(self) -> int:
        return sum(r.sent for r in self.rates)

    @property
    def failed_total(self) -> int:
        return sum(r.failed for r in self.rates)


def lanes_of(shard: ShardStats) -> list[LaneRow]:
    """A shard's rows, high, normal, bulk. The shard's delay set (one per shard, whatever the
    lane of what waits in it) is shown on its `normal` row."""
    if not shard.backlog_by_priority:  # (nothing read per lane: the shard as one row)
        return [LaneRow(shard.shard, DEFAULT_LANE, shard.backlog, shard.pending, shard.delayed)]
    return [
        LaneRow(
            shard.shard,
            lane,
            shard.backlog_by_priority.get(lane, 0),
            shard.pending_by_priority.get(lane, 0),
            shard.delayed if lane == DEFAULT_LANE else None,
        )
        for lane in LANES
    ]


def breaker_of(current: Any) -> Breaker:
    raw = getattr(current, "breaker", None)
    state = str(getattr(raw, "state", "closed") or "closed")
    return Breaker(
        open=state == "open",
        state=state,
        failures=int(getattr(raw, "failures", 0) or 0),
        opened_total=int(getattr(raw, "opened_total", 0) or 0),
        last_error=str(getattr(raw, "last_error", "") or ""),
    )


def delivery_of(counted: Mapping[str, int]) -> list[tuple[str, int]]:
    """Receipts by status in the order a message moves through them; unknown ones last."""
    return sorted(
        counted.items(), key=lambda item: (STATUS_RANK.get(item[0], len(STATUS_RANK)), item[0])
    )


def bar(value: int, scale: int) -> str:
    """The `w-N` class of a bar: N % of the track in BAR_STEP steps; a non-zero count gets
    at least one step, so that it shows."""
    if value <= 0 or scale <= 0:
        return "w-0"
    steps = round(min(value, scale) / scale * (100 // BAR_STEP))
    return f"w-{max(steps, 1) * BAR_STEP}"


def rates_of(minutes: list[Minute]) -> list[RateRow]:
    """The chart's rows, newest first, on one scale for sends and failures."""
    scale = max([m.sent for m in minutes] + [m.failed for m in minutes] + [1])
    last = len(minutes) - 1
    return [
        RateRow(m.start, m.sent, m.failed, bar(m.sent, scale), bar(m.failed, scale), n == last)
        for n, m in reversed(list(enumerate(minutes)))
    ]


async def gather(service: AdminService) -> Overview:
    view = Overview(at=clock.now())
    await asyncio.gather(_read_redis(service, view), _read_postgres(service, view))
    return view


def _add(view: Overview, shard: Any, rows: list[LaneRow]) -> None:
    view.lanes += rows
    view.totals["backlog"] += sum(r.backlog for r in rows)
    view.totals["pending"] += sum(r.pending for r in rows)
    known = [r.delayed for r in rows if r.delayed is not None]
    view.totals["delayed"] += sum(known) if known else int(shard.delayed)


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
        _add(view, shard, lanes_of(shard))
        view.dead_letters += shard.dead_letters
        view.unmirrored += shard.unmirrored
        view.consumers += [
            ConsumerRow(shard.shard, c.name, c.pending, c.idle_ms) for c in shard.consumers
        ]
        for reason, value in shard.dead_by_reason.items():
            view.dead_lettered[reason] = view.dead_lettered.get(reason, 0) + value
    view.breaker = breaker_of(current)
    view.delivery = delivery_of(getattr(current, "delivery", None) or {})


async def _read_postgres(service: AdminService, view: Overview) -> None:
    try:
        async with asyncio.timeout(READ_TIMEOUT_S), service.db.connection() as conn:
            view.records = await failed_sms.counts_by_status(conn, service.namespace)
            view.waiting = await counts.failed_by_reason(conn, service.namespace)
            view.rates = rates_of(await activity.per_minute(conn, service.namespace, RATE_MINUTES))
    except TimeoutError:
        view.postgres_error = "Postgres did not answer in time"
    except StorageError as exc:
        view.postgres_error = str(exc)
    else:
        for status in RecordStatus:
            view.records.setdefault(status.value, 0)
