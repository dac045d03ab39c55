"""The overview's figures as the page gets them: a shard's lanes from `ShardStats`, the
breaker, the receipts in order, and the per-minute bars."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from smsrelay.admin.ui.overview import (
    LaneRow,
    Overview,
    _add,
    bar,
    breaker_of,
    delivery_of,
    lanes_of,
    rates_of,
)
from smsrelay.store.activity import Minute
from smsrelay.streams.stats import BreakerStats, PipelineStats, ShardStats


def shard(**extra: Any) -> ShardStats:
    stats = ShardStats(2, "{ns:2}:requests", "{ns:2}:dead", backlog=9, pending=4, delayed=3)
    for name, value in extra.items():
        setattr(stats, name, value)
    return stats


def test_a_shard_is_three_lanes_high_first_with_its_delay_set_on_normal() -> None:
    rows = lanes_of(
        shard(
            backlog_by_priority={"bulk": 5, "normal": 3, "high": 1},
            pending_by_priority={"bulk": 1, "normal": 2, "high": 1},
        )
    )
    assert rows == [
        LaneRow(2, "high", 1, 1, None),
        LaneRow(2, "normal", 3, 2, 3),
        LaneRow(2, "bulk", 5, 1, None),
    ]
    view = Overview(at=datetime.now(UTC))
    _add(view, shard(), rows)
    assert view.totals == {"backlog": 9, "pending": 4, "delayed": 3}


def test_a_shard_read_without_lanes_is_one_normal_row() -> None:
    assert lanes_of(shard()) == [LaneRow(2, "normal", 9, 4, 3)]


def test_the_breaker_closed_and_open() -> None:
    closed = breaker_of(PipelineStats("ns", []))
    assert (closed.open, closed.state, closed.opened_total) == (False, "closed", 0)
    opened = breaker_of(
        PipelineStats("ns", [], breaker=BreakerStats("open", 5, 3, "Twilio 20500: boom"))
    )
    assert (opened.open, opened.opened_total, opened.last_error) == (
        True,
        3,
        "Twilio 20500: boom",
    )

    @dataclass
    class Older:  # stats without a breaker field: closed, nothing known
        shards: list[Any] = field(default_factory=list)

    assert breaker_of(Older()).state == "closed"


def test_receipts_in_the_order_a_message_goes_through_them() -> None:
    counted = {"failed": 1, "zzz_new": 2, "delivered": 7, "queued": 3, "sent": 9}
    assert [s for s, _ in delivery_of(counted)] == [
        "queued",
        "sent",
        "delivered",
        "failed",
        "zzz_new",
    ]


@pytest.mark.parametrize(
    ("value", "scale", "expected"),
    [(0, 10, "w-0"), (1, 1000, "w-5"), (5, 10, "w-50"), (10, 10, "w-100"), (12, 10, "w-100")],
)
def test_bars_are_classes_in_5_percent_steps(value: int, scale: int, expected: str) -> None:
    assert bar(value, scale) == expected


def test_rates_newest_first_on_one_scale() -> None:
    start = datetime(2026, 12, 2, 6, 0, tzinfo=UTC)
    minutes = [Minute(start + timedelta(minutes=n), n * 10, n) for n in range(5)]
    rows = rates_of(minutes)
    assert [r.start for r in rows] == [m.start for m in reversed(minutes)]
    assert rows[0].current and not any(r.current for r in rows[1:])
    assert (rows[0].sent_bar, rows[0].failed_bar) == ("w-100", "w-10")  # 40 and 4 of 40
    assert rows[-1].sent_bar == "w-0"
    assert rates_of([]) == []
