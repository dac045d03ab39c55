"""The overview's figures as the page gets them: lanes read defensively from `ShardStats`
(priority lanes are being added: whatever shape their breakdown takes, nothing breaks), the
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


@dataclass
class LaneStats:  # a shape the lanes' author might give
    lane: str
    backlog: int
    pending: int = 0
    delayed: int | None = None


def test_today_a_shard_is_one_normal_lane() -> None:
    assert lanes_of(shard()) == [LaneRow(2, "normal", 9, 4, 3)]


def test_a_mapping_of_lanes_is_shown_high_normal_bulk() -> None:
    lanes = {
        "bulk": LaneStats("bulk", 5, 1, 0),
        "high": LaneStats("high", 1, 1, 0),
        "normal": LaneStats("normal", 3, 2, 3),
    }
    assert lanes_of(shard(lanes=lanes)) == [
        LaneRow(2, "high", 1, 1, 0),
        LaneRow(2, "normal", 3, 2, 3),
        LaneRow(2, "bulk", 5, 1, 0),
    ]


def test_a_list_of_lanes_with_other_names_and_no_delay_figure() -> None:
    # `priority` for the lane, `length` for the backlog, no `delayed`: the shard's delay set
    # (one per shard) goes on the normal row
    lanes = [
        {"priority": "normal", "length": 3, "pending": 2},
        {"priority": "high", "length": 1},
        {"priority": "bulk", "length": 5, "pending": 1},
    ]
    rows = lanes_of(shard(priorities=lanes))
    assert rows == [
        LaneRow(2, "high", 1, 0, None),
        LaneRow(2, "normal", 3, 2, 3),
        LaneRow(2, "bulk", 5, 1, None),
    ]
    view = Overview(at=datetime.now(UTC))
    _add(view, shard(), rows)
    assert view.totals == {"backlog": 9, "pending": 3, "delayed": 3}


@pytest.mark.parametrize(
    "odd",
    [
        42,  # not iterable
        "high,normal",  # a string
        [{"lane": "high"}],  # no backlog figure
        {"high": object()},  # figures of no known shape
        {"high": {"backlog": "many"}},  # not a number
        [None],
    ],
)
def test_a_breakdown_that_cannot_be_read_falls_back_to_the_shard(odd: object) -> None:
    assert lanes_of(shard(lanes=odd)) == [LaneRow(2, "normal", 9, 4, 3)]


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
