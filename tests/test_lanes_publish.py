"""Publishing with a priority and a time to live: the lane stream, the fields, the errors."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import pytest

from smsrelay import AsyncProducer, InvalidMessageError, Producer, clock
from smsrelay.settings import Settings
from smsrelay.streams.keys import ShardKeys, priority_of, shard_label
from smsrelay.testing.outbox import SmsOutbox
from tests.conftest import make_settings
from tests.support.clients import redis_client
from tests.support.servers import PrivateRedis
from tests.test_cli import smsrelay


def lane_entries(settings: Settings, priority: str) -> list[dict[str, str]]:
    client = redis_client(settings.redis_url, decode_responses=True)
    stream = ShardKeys(settings.namespace).lane(priority)
    return [fields for _, fields in cast(list[Any], client.xrange(stream))]


def test_each_priority_goes_on_its_own_stream(settings: Settings) -> None:
    with Producer(settings) as producer:
        ids = {
            priority: producer.publish("+14155552671", f"a {priority} one", priority=priority)
            for priority in ("high", "normal", "bulk")
        }
    for priority, result in ids.items():
        [entry] = lane_entries(settings, priority)
        assert entry["id"] == result.message_id
        # high and bulk entries say so; a normal entry is exactly what it was before lanes
        assert entry.get("priority") == (None if priority == "normal" else priority)
    keys = ShardKeys(settings.namespace)
    assert keys.lanes == (
        f"{{{settings.namespace}:0}}:requests:high",
        f"{{{settings.namespace}:0}}:requests",
        f"{{{settings.namespace}:0}}:requests:bulk",
    )


def test_an_idempotent_publish_uses_the_lane_too(settings: Settings) -> None:
    with Producer(settings) as producer:
        first = producer.publish("+14155552671", "code 1234", priority="high", idempotency_key="k")
        again = producer.publish("+14155552671", "code 1234", priority="high", idempotency_key="k")
    assert (first.status, again.status) == ("queued", "duplicate")
    assert [e["id"] for e in lane_entries(settings, "high")] == [first.message_id]


def test_ttl_sets_expires_at_from_now(settings: Settings) -> None:
    before = clock.now()
    with Producer(settings) as producer:
        producer.publish("+14155552671", "code 1234", ttl_seconds=300, priority="high")
    [entry] = lane_entries(settings, "high")
    expires = clock.parse_iso(entry["expires_at"])
    assert before + timedelta(seconds=299) <= expires <= clock.now() + timedelta(seconds=301)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"priority": "urgent"}, "priority: Input should be 'high', 'normal' or 'bulk'"),
        ({"priority": ""}, "priority: Input should be 'high', 'normal' or 'bulk'"),
        ({"ttl_seconds": 0}, "ttl_seconds: Input should be greater than 0"),
        ({"ttl_seconds": -5}, "ttl_seconds: Input should be greater than 0"),
        ({"ttl_seconds": float("nan")}, "ttl_seconds: Input should be a finite number"),
        ({"ttl_seconds": 10**9}, "ttl_seconds: Input should be less than or equal to 2592000"),
        ({"ttl_seconds": "soon"}, "ttl_seconds: Input should be a valid number"),
    ],
)
def test_a_bad_priority_or_ttl_is_rejected_and_nothing_is_queued(
    settings: Settings, kwargs: dict[str, Any], error: str
) -> None:
    with Producer(settings) as producer:
        result = producer.publish("+14155552671", "hello", **kwargs)
        assert result.status == "rejected"
        assert result.error is not None and result.error.startswith(error), result.error
        with pytest.raises(InvalidMessageError):
            producer.publish("+14155552671", "hello", strict=True, **kwargs)
    assert all(lane_entries(settings, p) == [] for p in ("high", "normal", "bulk"))


async def test_the_async_producer_takes_priority_and_ttl(settings: Settings) -> None:
    async with AsyncProducer(settings) as producer:
        result = await producer.publish("+14155552671", "bulk one", priority="bulk", ttl_seconds=60)
    [entry] = lane_entries(settings, "bulk")
    assert entry["id"] == result.message_id and "expires_at" in entry


def test_a_spooled_request_keeps_its_lane(
    private_redis: PrivateRedis, namespace: str, tmp_path: Path
) -> None:
    settings = make_settings(private_redis.url, namespace, tmp_path, "http://127.0.0.1:9")
    private_redis.kill()
    with Producer(settings, background_flush=False) as producer:
        spooled = producer.publish("+14155552671", "code 9", priority="high")
    assert spooled.status == "spooled"
    private_redis.start()
    with Producer(settings, background_flush=False) as producer:
        assert producer.flush_spool() == 1
    [entry] = lane_entries(settings, "high")
    assert entry["id"] == spooled.message_id


def test_the_cli_takes_priority_and_ttl(settings: Settings) -> None:
    done = smsrelay(
        settings,
        "publish",
        "--to",
        "+14155552671",
        "--body",
        "x",
        "--priority",
        "high",
        "--ttl",
        "120",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    [entry] = lane_entries(settings, "high")
    assert entry["id"] == result["messageId"] and "expires_at" in entry
    bad = smsrelay(settings, "publish", "--to", "+14155552671", "--body", "x", "--priority", "top")
    assert bad.returncode == 2 and "invalid choice: 'top'" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_the_outbox_records_priority_and_expiry() -> None:
    outbox = SmsOutbox()
    outbox.publish("+14155552671", "code 1", priority="high", ttl_seconds=30)
    outbox.publish("+14155552671", "news")
    high, normal = outbox.messages
    assert (high.priority, normal.priority) == ("high", "normal")
    assert high.expires_at is not None and normal.expires_at is None
    assert outbox.publish("+14155552671", "x", priority=cast(Any, "asap")).status == "rejected"


@pytest.mark.parametrize(
    ("stream", "priority", "label"),
    [
        ("{ns:0}:requests", "normal", "0"),
        ("{ns:12}:requests:high", "high", "12"),
        ("{ns:-4}:requests:bulk", "bulk", "-4"),
        ("{ns:0}:requestsX", "normal", None),
        ("{other:0}:requests:high", "high", None),
        ("{ns:}:requests", "normal", None),
    ],
)
def test_a_stream_name_tells_its_lane_and_shard(
    stream: str, priority: str, label: str | None
) -> None:
    assert priority_of(stream) == priority
    assert shard_label("ns", stream) == label
