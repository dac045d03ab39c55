"""Publishing: one round trip, idempotency, bad input, and never failing the caller."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, cast

import pytest
import redis

from smsrelay import AsyncProducer, InvalidMessageError, Producer
from smsrelay.settings import Settings
from smsrelay.streams.keys import ShardKeys
from tests.conftest import make_settings
from tests.support.clients import redis_client
from tests.support.servers import PrivateRedis
from tests.support.wait import wait_for

DOWN_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1


def _entries(settings: Settings) -> list[dict[str, str]]:
    client = redis_client(settings.redis_url, decode_responses=True)
    stream = ShardKeys(settings.namespace).requests
    return [fields for _, fields in cast(list[Any], client.xrange(stream))]


def test_publish_appends_a_v1_entry(settings: Settings) -> None:
    with Producer(settings) as producer:
        result = producer.publish(
            "+1 (415) 555-2671",
            "Hi John, we've received your booking",
            kind="booking",
            meta={"booking": 42},
        )
    assert result.status == "queued"
    [entry] = _entries(settings)
    assert entry["v"] == "1"
    assert entry["id"] == result.message_id
    assert entry["to"] == "+14155552671"
    assert entry["body"] == "Hi John, we've received your booking"
    assert entry["kind"] == "booking"
    assert json.loads(entry["meta"]) == {"booking": 42}
    assert entry["created_at"].endswith("Z")


def test_same_idempotency_key_is_a_duplicate(settings: Settings) -> None:
    with Producer(settings) as producer:
        first = producer.publish("+14155552671", "once", idempotency_key="booking-42")
        second = producer.publish("+14155552671", "once", idempotency_key="booking-42")
        other = producer.publish("+14155552671", "once", idempotency_key="booking-43")
    assert (first.status, second.status, other.status) == ("queued", "duplicate", "queued")
    assert second.message_id == first.message_id
    assert len(_entries(settings)) == 2


@pytest.mark.parametrize(
    ("to", "body", "expected"),
    [
        ("4155552671", "hi", "international format"),
        ("+1415555", "hi", "to:"),
        ("+18761234567", "hi", "not a valid phone number"),
        ("+14155552671", "", "body:"),
        ("+14155552671", "x" * 1601, "body:"),
        ("not a number", "hi", "to:"),
    ],
)
def test_bad_input_is_rejected_with_a_clear_error(
    settings: Settings, to: str, body: str, expected: str
) -> None:
    with Producer(settings) as producer:
        result = producer.publish(to, body)
        assert result.status == "rejected"
        assert result.message_id is None
        assert expected in (result.error or "")
        with pytest.raises(InvalidMessageError):
            producer.publish(to, body, strict=True)
    assert _entries(settings) == []


def test_redis_down_spools_quickly_then_a_later_producer_flushes(
    private_redis: PrivateRedis, namespace: str, tmp_path: Path
) -> None:
    settings = make_settings(private_redis.url, namespace, tmp_path, "http://127.0.0.1:9")
    private_redis.kill()
    started = time.monotonic()
    with Producer(settings) as producer:
        result = producer.publish("+14155552671", "kept on disk", idempotency_key="k1")
    assert time.monotonic() - started < 2.0
    assert result.status == "spooled"
    assert "Redis unreachable" in (result.error or "")
    assert len(list((tmp_path / "spool").glob("*.json"))) == 1

    # A new producer (as after a restart) with Redis back publishes the spooled request.
    private_redis.start()
    with Producer(settings) as producer:
        wait_for(lambda: producer.spooled() == 0, 5, "the spool flushed")
    [entry] = _entries(settings)
    assert entry["id"] == result.message_id
    assert entry["idempotency_key"] == "k1"
    assert list((tmp_path / "spool").glob("*.json")) == []


def test_spool_survives_the_producing_process(
    private_redis: PrivateRedis, namespace: str, tmp_path: Path
) -> None:
    # Given a process that published while Redis was down, then exited
    private_redis.kill()
    code = (
        "from smsrelay import Producer\n"
        "p = Producer.from_env()\n"
        "r = p.publish('+14155552671', 'from a dead process')\n"
        "print(r.status, r.message_id)\n"
    )
    env = {
        "SMSRELAY_REDIS_URL": private_redis.url,
        "SMSRELAY_SPOOL_DIR": str(tmp_path / "spool"),
        "SMSRELAY_NAMESPACE": namespace,
        "PATH": "/usr/bin:/bin",
    }
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout.split()
    assert out[0] == "spooled"
    # When a later process flushes (no background flusher races it: the count is exact)
    private_redis.start()
    up = make_settings(private_redis.url, namespace, tmp_path, "http://127.0.0.1:9")
    with Producer(up, background_flush=False) as producer:
        assert producer.flush_spool() == 1
        assert producer.spooled() == 0
    # Then the request is on the stream with its original id
    assert [e["id"] for e in _entries(up)] == [out[1]]


async def test_async_producer_queues_dedupes_and_spools(
    settings: Settings, redis_url: str, namespace: str, tmp_path: Path
) -> None:
    async with AsyncProducer(settings) as producer:
        first = await producer.publish("+14155552671", "async", idempotency_key="a1")
        again = await producer.publish("+14155552671", "async", idempotency_key="a1")
        bad = await producer.publish("+1", "async")
    assert (first.status, again.status, bad.status) == ("queued", "duplicate", "rejected")

    down = make_settings(DOWN_URL, namespace, tmp_path / "down", "http://127.0.0.1:9")
    async with AsyncProducer(down) as producer:
        started = time.monotonic()
        spooled = await producer.publish("+14155552671", "while down")
        assert time.monotonic() - started < 2.0
    assert spooled.status == "spooled"


def test_publish_is_one_round_trip(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[str] = []
    real = redis.connection.Connection.send_packed_command

    def counting(
        self: redis.connection.Connection, command: Any, check_health: bool = True
    ) -> None:
        sent.append(repr(command)[:40])
        real(self, command, check_health)  # type: ignore[no-untyped-call]

    with Producer(settings) as producer:
        producer.publish("+14155552671", "warm the script cache and the connection")
        monkeypatch.setattr(redis.connection.Connection, "send_packed_command", counting)
        result = producer.publish("+14155552671", "counted", idempotency_key="one-trip")
    assert result.status == "queued"
    assert len(sent) == 1, sent  # one EVALSHA: dedupe and XADD happen inside the script


def test_threads_publish_on_connections_of_their_own(settings: Settings) -> None:
    clients: dict[int, int] = {}
    results: list[str] = []
    with Producer(settings) as producer:

        def publish_some(n: int) -> None:
            for i in range(25):
                results.append(producer.publish(f"+1415555{n:02d}{i:02d}", f"t{n}-{i}").status)
            clients[n] = redis_connection_id(producer)

        threads = [threading.Thread(target=publish_some, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert results == ["queued"] * 200
    assert len(_entries(settings)) == 200
    assert len(set(clients.values())) == 8  # no thread waited on another's connection


def redis_connection_id(producer: Producer) -> int:
    return int(cast(Any, producer._clients.get().client_id()))  # this thread's own client


def test_a_forked_child_publishes_on_a_connection_of_its_own(settings: Settings) -> None:
    with Producer(settings) as producer:
        assert producer.publish("+14155552671", "parent, before the fork").status == "queued"
        parent_connection = redis_connection_id(producer)
        pid = os.fork()
        if pid == 0:  # the child: exit 0 only if it published on another connection
            ok = (
                producer.publish("+14155552672", "child").status == "queued"
                and redis_connection_id(producer) != parent_connection
            )
            os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert producer.publish("+14155552673", "parent, after").status == "queued"
        assert redis_connection_id(producer) == parent_connection
    assert sorted(e["body"] for e in _entries(settings)) == [
        "child",
        "parent, after",
        "parent, before the fork",
    ]


@pytest.mark.parametrize(
    ("to", "body", "expected"),
    [
        ("+1-800-FLOWERS", "hi", "to: phone number must be written in digits"),
        ("+1 415 555 2671 ext. 5", "hi", "to: phone number extensions"),
        ("+14155552671", "colour \x1b[31mred", "body: must not contain control characters"),
        ("+14155552671", "nul\x00", "body: must not contain control characters"),
    ],
)
def test_letters_extensions_and_control_characters_are_rejected(
    settings: Settings, to: str, body: str, expected: str
) -> None:
    with Producer(settings) as producer:
        result = producer.publish(to, body)
        assert (result.status, result.message_id) == ("rejected", None)
        assert (result.error or "").startswith(expected), result.error
        with pytest.raises(InvalidMessageError):
            producer.publish(to, body, strict=True)
        kept = producer.publish("+1 (415) 555-2671", "line one\r\n\tline two")
    assert kept.status == "queued"
    assert [(e["to"], e["body"]) for e in _entries(settings)] == [
        ("+14155552671", "line one\r\n\tline two")
    ]


def test_a_5_000_000_item_meta_is_rejected_before_anything_encodes_it(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from smsrelay.schemas import meta as meta_module

    huge = {"ids": list(range(5_000_000))}
    started = time.perf_counter()
    json.dumps(huge, separators=(",", ":"))
    encoding_s = time.perf_counter() - started

    encoded: list[Any] = []
    walks: list[meta_module.MetaWalk] = []
    real_encode, real_walk = meta_module.encode_meta, meta_module.walk_meta

    def counting_encode(value: Any) -> str:
        encoded.append(value)
        return real_encode(value)

    def recording_walk(value: Any, **limits: int) -> meta_module.MetaWalk:
        walks.append(real_walk(value, **limits))
        return walks[-1]

    monkeypatch.setattr(meta_module, "encode_meta", counting_encode)
    monkeypatch.setattr(meta_module, "walk_meta", recording_walk)
    with Producer(settings) as producer:
        started = time.perf_counter()
        result = producer.publish("+14155552671", "hi", meta=huge)
        rejecting_s = time.perf_counter() - started
        assert producer.publish("+14155552671", "hi", meta={"ids": [1, 2]}).status == "queued"
    assert result.status == "rejected"
    assert (result.error or "").startswith("meta: must encode to at most 4096 bytes")
    # The walk looked at the outer object and the list's length, nothing inside; the small
    # meta was walked and encoded, the huge one never encoded.
    assert [w.visited for w in walks] == [2, 4]
    assert encoded == [{"ids": [1, 2]}]
    # (a generous bound: the rejection is ~10 µs, encoding 5,000,000 items ~0.5 s)
    assert rejecting_s < encoding_s / 10, (rejecting_s, encoding_s)
    assert len(_entries(settings)) == 1
