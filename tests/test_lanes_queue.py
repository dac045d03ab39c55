"""The request queue's lanes, on a real Redis: read order, bulk's reserve, and a message that
keeps its lane through a retry, a move, a dead letter, a claim and a replay."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
import redis.asyncio as aioredis

from smsrelay import Producer
from smsrelay.admin.replay import publish_one
from smsrelay.schemas.dead_letter import DeadLetter
from smsrelay.schemas.entry import Priority
from smsrelay.schemas.records import FailedSmsRecord
from smsrelay.settings import Settings
from smsrelay.streams.clients import text
from smsrelay.streams.keys import shard_of
from smsrelay.streams.lanes import LaneReader, split
from smsrelay.streams.queue import Queue
from smsrelay.streams.wire import field
from tests.store.dlq import unique_phone


@pytest.fixture
async def queue(settings: Settings) -> AsyncIterator[Queue]:
    client = aioredis.Redis.from_url(settings.redis_url)
    q = Queue(settings, client)
    await q.group.ensure()
    yield q
    await client.aclose()


def publish(settings: Settings, priority: Priority, count: int) -> list[str]:
    with Producer(settings, background_flush=False) as producer:
        ids = [
            producer.publish(unique_phone(), f"{priority} {n}", priority=priority)
            for n in range(count)
        ]
    assert all(r.status == "queued" for r in ids)
    return [str(r.message_id) for r in ids]


def lanes_of(batch: list[Any]) -> Counter[str]:
    return Counter(d.priority for d in batch)


async def test_high_is_read_before_normal_and_bulk(settings: Settings, queue: Queue) -> None:
    publish(settings, "bulk", 5)
    publish(settings, "normal", 5)
    high = publish(settings, "high", 3)  # published last, read first
    batch = await queue.read(4, block_ms=None)
    assert [d.priority for d in batch[:3]] == ["high"] * 3
    assert sorted(str(field(d.fields, "id")) for d in batch[:3]) == sorted(high)
    assert lanes_of(batch) == Counter({"high": 3, "normal": 1})


async def test_bulk_gets_one_slot_in_ten_while_normal_has_a_backlog(
    settings: Settings, queue: Queue
) -> None:
    publish(settings, "normal", 150)
    publish(settings, "bulk", 150)
    # reads of 10 slots: one for bulk each time
    tens = Counter[str]()
    for _ in range(5):
        tens += lanes_of(await queue.read(10, block_ms=None))
    assert tens == Counter({"normal": 45, "bulk": 5})
    # reads of one slot (a worker whose sends finish one at a time): one read in ten is bulk
    ones = Counter[str]()
    for _ in range(50):
        ones += lanes_of(await queue.read(1, block_ms=None))
    assert ones == Counter({"normal": 45, "bulk": 5})


async def test_bulk_takes_what_normal_leaves(settings: Settings, queue: Queue) -> None:
    publish(settings, "normal", 3)
    publish(settings, "bulk", 50)
    assert lanes_of(await queue.read(20, block_ms=None)) == Counter({"normal": 3, "bulk": 17})


async def test_an_idle_bulk_lane_saves_no_claim_to_jump_ahead_later(
    settings: Settings, queue: Queue
) -> None:
    publish(settings, "normal", 500)
    for _ in range(40):  # bulk empty meanwhile
        await queue.read(10, block_ms=None)
    publish(settings, "bulk", 100)
    assert lanes_of(await queue.read(10, block_ms=None)) == Counter({"normal": 9, "bulk": 1})


async def test_a_read_never_brings_more_than_it_asked_for_on_many_shards(
    redis_url: str, namespace: str, tmp_path: Any, fake_twilio: Any
) -> None:
    from tests.conftest import make_settings

    settings = make_settings(redis_url, namespace, tmp_path, fake_twilio.url, shards=4)
    client = aioredis.Redis.from_url(redis_url)
    queue = Queue(settings, client)
    await queue.group.ensure()
    try:
        publish(settings, "normal", 80)
        publish(settings, "high", 8)
        seen = 0
        for count in (1, 3, 5, 7, 2):
            batch = await queue.read(count, block_ms=None)
            assert 1 <= len(batch) <= count
            seen += len(batch)
        # every entry is read once, and none is lost between shards
        while batch := await queue.read(16, block_ms=None):
            seen += len(batch)
        assert seen == 88
    finally:
        await client.aclose()


async def test_a_blocked_read_wakes_for_an_entry_on_any_lane(
    settings: Settings, queue: Queue
) -> None:
    async def later() -> None:
        await asyncio.sleep(0.2)
        await asyncio.to_thread(publish, settings, "bulk", 1)

    task = asyncio.create_task(later())
    batch = await queue.read(10, block_ms=5000)
    await task
    assert lanes_of(batch) == Counter({"bulk": 1})


def test_split_spreads_a_read_over_shards() -> None:
    assert split(10, 4, 0) == [3, 3, 2, 2]
    assert split(10, 4, 3) == [3, 2, 2, 3]
    assert split(2, 4, 1) == [0, 1, 1, 0]
    assert sum(split(7, 3, 2)) == 7


def test_the_bulk_credit_is_a_tenth_of_each_read_capped() -> None:
    reader = LaneReader.__new__(LaneReader)
    reader.bulk_credit = 0
    assert [reader.reserve(1) for _ in range(10)][-1] == 1
    reader.spent(1)
    assert reader.reserve(64) == 6
    reader.spent(0)  # bulk had nothing: the credit stays capped, it does not pile up
    assert reader.reserve(64) == 7  # (a tenth of 64, rounded up)
    assert reader.reserve(64) == 7
    reader.spent(8)  # more bulk than owed: the debt is paid, not carried
    assert reader.bulk_credit == 0
    assert [reader.reserve(3) for _ in range(4)] == [0, 0, 0, 1]


async def test_a_delayed_message_returns_to_its_lane(settings: Settings, queue: Queue) -> None:
    [message_id] = publish(settings, "high", 1)
    [delivery] = await queue.read(1, block_ms=None)
    fields = {text(k): text(v) for k, v in delivery.fields.items()}
    assert await queue.delay(delivery, message_id, fields, 0.0, "503 from the provider")
    moved, _, unreadable = await queue.move_due(0)
    assert (moved, unreadable) == (1, 0)
    [back] = await queue.read(5, block_ms=None)
    assert back.priority == "high" and field(back.fields, "id") == message_id
    # a normal message delayed with a stray `priority` field still returns to normal
    [normal_id] = publish(settings, "normal", 1)
    [delivery] = await queue.read(1, block_ms=None)
    fields = {text(k): text(v) for k, v in delivery.fields.items()} | {"priority": "high"}
    assert await queue.delay(delivery, normal_id, fields, 0.0)
    await queue.move_due(0)
    [back] = await queue.read(5, block_ms=None)
    assert back.priority == "normal"


async def test_a_dead_letter_and_its_replay_keep_the_lane(settings: Settings, queue: Queue) -> None:
    [message_id] = publish(settings, "bulk", 1)
    [delivery] = await queue.read(1, block_ms=None)
    assert await queue.dead_letter(
        delivery,
        message_id=message_id,
        phone=None,
        reason="rate_limited",
        error="5 in 1 h",
        attempts=0,
    )
    [(dead_id, raw)] = cast(list[Any], await queue.redis.xrange(queue.keys(0).dead))
    letter = DeadLetter.from_stream(text(dead_id), raw)
    assert letter.fields["priority"] == "bulk"
    record = FailedSmsRecord.model_validate(
        {
            "id": message_id,
            "phone": letter.fields["to"],
            "message": letter.fields["body"],
            "error": "5 in 1 h",
            "attempts": 0,
            "created_at": letter.fields["created_at"],
            "last_attempt_at": None,
            "message_sid": None,
            "resolved_at": None,
            "reason": "rate_limited",
            "status": "failed",
            "namespace": settings.namespace,
            "dead_letter_id": text(dead_id),
            "shard": 0,
        }
    )
    assert await publish_one(queue, record)
    [replayed] = await queue.read(5, block_ms=None)
    assert replayed.priority == "bulk"
    assert field(replayed.fields, "replay_of") == text(dead_id)


async def test_a_wrong_shard_move_keeps_the_lane(
    redis_url: str, namespace: str, tmp_path: Any, fake_twilio: Any
) -> None:
    from tests.conftest import make_settings

    settings = make_settings(redis_url, namespace, tmp_path, fake_twilio.url, shards=4)
    client = aioredis.Redis.from_url(redis_url)
    queue = Queue(settings, client)
    await queue.group.ensure()
    try:
        phone = "+14155552672"  # crc32 2345989422: shard 2 of 4
        assert shard_of(phone, 4) == 2
        with Producer(settings.model_copy(update={"shards": 1})) as producer:
            producer.publish(phone, "on shard 0 by mistake", priority="high")
        [delivery] = await queue.read(4, block_ms=None)
        assert (delivery.shard, delivery.priority) == (0, "high")
        await queue.move(delivery, 2)
        assert await client.xlen(queue.keys(2).requests_high) == 1
        assert await client.xlen(queue.keys(0).requests_high) == 0
    finally:
        await client.aclose()


async def test_a_dead_consumers_entries_are_claimed_lane_by_lane(
    settings: Settings, queue: Queue
) -> None:
    publish(settings, "bulk", 2)
    publish(settings, "high", 1)
    taken = await queue.read(10, block_ms=None)
    assert len(taken) == 3  # now pending on this consumer, which "dies"
    other = Queue(settings, queue.redis, consumer="survivor")
    pages = [await other.claim(stream, 0, 10) for stream in queue.keys(0).lanes]
    assert [len(p.claimed) for p in pages] == [1, 0, 2]
    assert {d.priority for d in pages[2].claimed} == {"bulk"}
