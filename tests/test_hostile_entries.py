"""Entries nobody should publish, read by a real worker (issue 10, defects 2, 5 and 6)."""

from __future__ import annotations

import re
import uuid
import zlib
from pathlib import Path
from typing import Any

from smsrelay import clock
from smsrelay.settings import Settings
from smsrelay.status import collect_status, render_status
from smsrelay.streams.keys import ShardKeys, shard_of
from smsrelay.streams.wire import MAX_DEAD_PAYLOAD_BYTES
from tests.conftest import make_settings
from tests.support.clients import redis_client
from tests.support.wait import wait_until
from tests.support.worker import dead_letters, running_worker, stream_state


def _entry(to: str, body: str = "hello", **extra: str) -> dict[Any, Any]:
    return {
        "v": "1",
        "id": str(uuid.uuid4()),
        "to": to,
        "body": body,
        "created_at": clock.now_iso(),
        **extra,
    }


def _dead_size(dead: dict[str, str]) -> int:
    return sum(len(k) + len(v) for k, v in dead.items())


async def test_an_entry_of_10000_fields_is_dead_lettered_not_lost(
    settings: Settings, fake_twilio: Any
) -> None:
    # Given an entry with 10,000 junk fields (no `v`: it does not parse) and one with 1 MB
    # values, and a valid one behind them
    client = redis_client(settings.redis_url)
    stream = ShardKeys(settings.namespace).requests
    client.xadd(stream, {f"f{i}": "x" * 10 for i in range(10_000)})
    client.xadd(stream, {"id": "junk", "to": "x" * 1_000_000, "body": "y" * 1_000_000})
    client.xadd(stream, _entry("+14155552601", "after the junk"))
    # When a worker reads them
    async with running_worker(settings):
        await wait_until(lambda: len(dead_letters(settings)) == 2, what="2 dead letters")
        await wait_until(lambda: stream_state(settings) == (0, 0), what="nothing left")
    # Then both are dead letters of at most 16 KiB of their entry, saying what was cut
    for dead in dead_letters(settings):
        assert dead["reason"] == "invalid_payload"
        assert dead["payload_truncated"] == "1"
        assert int(dead["payload_bytes"]) > 1_000_000 or int(dead["payload_fields"]) == 10_000
        assert _dead_size(dead) < MAX_DEAD_PAYLOAD_BYTES + 4096
    assert [m.body for m in fake_twilio.messages] == ["after the junk"]


async def test_a_valid_entry_with_many_extra_fields_is_dead_lettered_after_21211(
    settings: Settings, fake_twilio: Any
) -> None:
    client = redis_client(settings.redis_url)
    entry = _entry("+15005550001", "refused")  # Twilio's magic number for 21211
    entry.update({f"extra{i}": "z" * 100 for i in range(5_000)})
    client.xadd(ShardKeys(settings.namespace).requests, entry)
    async with running_worker(settings):
        await wait_until(lambda: len(dead_letters(settings)) == 1, what="the dead letter")
        await wait_until(lambda: stream_state(settings) == (0, 0), what="acknowledged")
    [dead] = dead_letters(settings)
    assert (dead["reason"], dead["id"], dead["to"], dead["body"]) == (
        "permanent_error",
        entry["id"],
        "+15005550001",
        "refused",
    )
    assert "21211" in dead["error"]
    assert dead["payload_truncated"] == "1" and dead["payload_fields"] == str(len(entry))


async def test_an_entry_on_the_wrong_shard_is_moved_and_limited_on_its_own(
    redis_url: str, namespace: str, tmp_path: Path, fake_twilio: Any
) -> None:
    # Given 4 shards and a publisher that puts the same number on shards it does not hash to
    settings = make_settings(redis_url, namespace, tmp_path, fake_twilio.url, shards=4)
    phone = "+14155552672"  # crc32 2345989422: shard 2 (a signed CRC would say -2)
    right = shard_of(phone, 4)
    assert right == 2
    client = redis_client(redis_url)
    for n in range(8):
        shard = right if n % 2 else (right + 1 + n % 3) % 4
        client.xadd(ShardKeys(namespace, shard).requests, _entry(phone, f"m{n}"))
    # When workers read every shard
    async with running_worker(settings):
        await wait_until(
            lambda: len(fake_twilio.messages) + len(dead_letters(settings, right)) == 8,
            what="all 8 settled",
        )
    # Then one window limits them all: 5 sent, 3 rate-limited, on the number's own shard
    assert len(fake_twilio.messages_to(phone)) == 5
    assert [d["reason"] for d in dead_letters(settings, right)] == ["rate_limited"] * 3
    assert client.zcard(ShardKeys(namespace, right).rate_limit(phone)) == 5
    for shard in range(4):
        if shard != right:
            assert client.exists(ShardKeys(namespace, shard).rate_limit(phone)) == 0


def test_status_reports_streams_no_worker_reads(
    redis_url: str, namespace: str, tmp_path: Path, fake_twilio: Any
) -> None:
    # Given entries a publisher put on shard -4 (a signed CRC) and on shard 7 of 4
    settings = make_settings(redis_url, namespace, tmp_path, fake_twilio.url, shards=4)
    client = redis_client(redis_url)
    client.xadd(f"{{{namespace}:-4}}:requests", _entry("+14155552672"))
    client.xadd(f"{{{namespace}:7}}:requests", _entry("+14155552671"))
    client.xadd(f"{{{namespace}:7}}:requests", _entry("+14155552671"))
    # Then status names them, with their lengths
    report = collect_status(settings)
    assert {(u.key, u.length) for u in report.unread or []} == {
        (f"{{{namespace}:-4}}:requests", 1),
        (f"{{{namespace}:7}}:requests", 2),
    }
    assert "NOT READ BY ANY WORKER" in render_status(report)


async def test_a_burst_worker_stops_when_the_streams_are_empty(
    settings: Settings, fake_twilio: Any
) -> None:
    from smsrelay.consumers.worker import Worker
    from smsrelay.producers.publish import Producer

    with Producer(settings) as producer:
        for n in range(5):
            assert producer.publish(f"+1415555270{n}", f"burst {n}").status == "queued"
    fake_twilio.script("+14155552700", [{"status": 503}])  # one retry on the way
    await Worker(settings).run(burst=True)
    assert len(fake_twilio.messages) == 5
    assert stream_state(settings) == (0, 0)


def test_the_readme_states_the_shard_function_other_languages_must_match() -> None:
    # A producer in another language follows the README: its test vector must be ours
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    stated = re.search(
        r'crc32\("(\+\d+)"\) = (\d+)`.*?with (\d+) shards that\s+number is on shard (\d+)',
        readme,
        re.S,
    )
    assert stated, "the README's shard test vector"
    phone, crc, shards, shard = stated.groups()
    assert zlib.crc32(phone.encode()) == int(crc)
    assert shard_of(phone, int(shards)) == int(shard)
    assert "unsigned" in readme
