"""smsrelay on a Redis Cluster of 3 masters and 3 replicas (issue 14): six shards spread over
the masters, two workers, the admin, `status` and `/metrics` across every shard."""

from __future__ import annotations

import asyncio
import uuid
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import redis

from smsrelay.errors import ConfigError
from smsrelay.producers.publish import Producer, PublishResult
from smsrelay.store.mirror import run_mirror
from smsrelay.streams import stats
from smsrelay.streams.clients import admin_client as redis_admin_client
from smsrelay.streams.keys import shard_keys, shard_of
from smsrelay.streams.policy import check_eviction_policy
from tests.admin.conftest import LIST, TOKEN, admin_client
from tests.cluster.conftest import topology_settings
from tests.support.clients import track
from tests.support.topologies import LocalCluster
from tests.support.wait import wait_until
from tests.support.worker import running_worker

pytestmark = pytest.mark.slow

ONE_PHONE = "+14155552671"


def phones(count: int) -> list[str]:
    return [f"+1415{2_000_000 + i:07d}" for i in range(count)]


def metric_sum(text: str, name: str, label: str = "") -> float:
    """The sum of a metric's samples (those whose labels contain `label`)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and label in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.timeout(180)
async def test_six_shards_two_workers_send_everything_once_and_the_admin_sees_all_shards(
    cluster: LocalCluster, tmp_path: Path, fake_twilio: Any, database_url: str
) -> None:
    settings = topology_settings(
        cluster.url,
        "cluster",
        tmp_path,
        fake_twilio.url,
        database_url=database_url,
        admin_token=TOKEN,
    )
    ns = settings.namespace
    # Given six shards whose streams live on more than one master
    owners = {cluster.master_of(shard_keys(ns, s).requests) for s in range(settings.shards)}
    assert len(owners) >= 2, owners

    # When 1,000 messages to 1,000 phones and 6 to one phone are published
    def publish_all() -> tuple[list[PublishResult], list[PublishResult]]:
        with Producer(settings) as producer:
            many = [producer.publish(p, f"hello {i}") for i, p in enumerate(phones(1000))]
            six = [producer.publish(ONE_PHONE, f"code {i}") for i in range(6)]
        return many, six

    many, six = await asyncio.to_thread(publish_all)
    assert {r.status for r in many + six} == {"queued"}

    # and two workers (one with the mirror) work through them
    async with (
        running_worker(settings, upkeep=[partial(run_mirror, settings)]),
        running_worker(settings),
    ):
        client = redis_admin_client(settings)
        try:

            async def done() -> bool:
                now = await stats.collect(client, settings, consumers=False, unread=False)
                return (
                    len(fake_twilio.messages) >= 1005
                    and now.total("backlog") == 0
                    and now.total("unmirrored") == 0
                    and now.total("dead_letters") == 1
                )

            await wait_until(done, 90, interval=0.2, what="1,005 sent, 1 dead letter mirrored")
            report = await stats.collect(client, settings)
        finally:
            await client.aclose()

    # Then every message went out once, the 6th to one phone was rate-limited
    assert fake_twilio.duplicates() == {}
    sent = fake_twilio.messages
    assert len(sent) == 1005
    assert {m.body for m in sent if m.to != ONE_PHONE} == {f"hello {i}" for i in range(1000)}
    assert len([m for m in sent if m.to == ONE_PHONE]) == 5

    # and `status` sums every shard: its dead letter on the phone's shard, nothing left
    assert [s.shard for s in report.shards] == list(range(6))
    assert report.total("backlog") == report.total("pending") == 0
    assert report.total("dead_letters") == 1
    limited_shard = shard_of(ONE_PHONE, settings.shards)
    assert report.shards[limited_shard].dead_by_reason == {"rate_limited": 1}
    assert report.unread == []
    # both workers took part (each consumer shows on the shards it read)
    consumers = {c.name for s in report.shards for c in s.consumers}
    assert len(consumers) >= 2, consumers

    # and the admin lists the rate-limited one, retries it (forced past the limit), and its
    # /metrics sums all shards
    async with admin_client(settings) as api:
        body = (await api.get(LIST, params={"phone": ONE_PHONE})).json()
        [record] = body["data"]
        assert record["reason"] == "rate_limited"
        retried = await api.post(LIST, json={"id": record["id"], "force": True})
        assert retried.status_code == 200, retried.text
        metrics = (await api.get("/metrics")).text
    assert len([m for m in fake_twilio.messages if m.to == ONE_PHONE]) == 6
    assert metric_sum(metrics, "smsrelay_dead_letters_total", 'reason="rate_limited"') == 1
    assert metric_sum(metrics, "smsrelay_dead_letter_stream_length") == 1
    assert metric_sum(metrics, "smsrelay_stream_length") == 0
    lanes = [ln for ln in metrics.splitlines() if ln.startswith("smsrelay_stream_length{")]
    assert len(lanes) == 18  # six shards, three lanes each
    assert sum('priority="high"' in ln for ln in lanes) == 6
    assert 'smsrelay_scrape_error{source="redis"} 0.0' in metrics
    assert "smsrelay_unread_streams 0.0" in metrics


async def test_unread_streams_are_found_on_every_master(
    cluster: LocalCluster, tmp_path: Path, fake_twilio: Any
) -> None:
    # Given request streams outside shards 0..5, on slots of every master
    settings = topology_settings(cluster.url, "cluster", tmp_path, fake_twilio.url)
    direct = redis.RedisCluster.from_url(f"redis://127.0.0.1:{cluster.master_ports()[0]}/0")
    strays = [f"{{{settings.namespace}:{label}}}:requests" for label in range(6, 40)]
    try:
        for key in strays:
            direct.xadd(key, {"v": "1"})
        owners = {cluster.master_of(key) for key in strays}
        assert len(owners) == 3, owners
        # When the unread streams are looked for
        client = redis_admin_client(settings)
        try:
            found = await stats.unread_streams(client, settings)
        finally:
            await client.aclose()
    finally:
        direct.close()
    # Then every one is found, whichever master holds it
    assert sorted(u.key for u in found) == sorted(strays)
    assert {u.length for u in found} == {1}


@pytest.mark.parametrize("which", ["the default node", "another master"])
async def test_an_evicting_policy_on_any_master_is_refused(
    cluster: LocalCluster, tmp_path: Path, fake_twilio: Any, which: str
) -> None:
    # Given a cluster where one master (the one a plain CONFIG GET asks, or another) may evict
    settings = topology_settings(cluster.url, "cluster", tmp_path, fake_twilio.url)
    client = redis_admin_client(settings)
    try:
        await client.initialize()
        default = client.get_default_node()  # type: ignore[attr-defined]
        masters = client.get_primaries()  # type: ignore[attr-defined]
        target = (
            default
            if which == "the default node"
            else next(node for node in masters if node.name != default.name)
        )
        port = int(target.port)
        node = track(redis.Redis(host="127.0.0.1", port=port))
        node.config_set("maxmemory-policy", "allkeys-lru")
        try:
            # When a process checks the servers it is about to rely on
            # Then it refuses to start, naming that master
            with pytest.raises(ConfigError, match=f"allkeys-lru .cluster node 127.0.0.1:{port}"):
                await check_eviction_policy(client)
        finally:
            node.config_set("maxmemory-policy", "noeviction")
            node.close()
        await check_eviction_policy(client)  # and every master is safe again
    finally:
        await client.aclose()


async def test_scripts_lost_by_every_master_are_loaded_again(
    cluster: LocalCluster, tmp_path: Path, fake_twilio: Any
) -> None:
    # Given a worker that has run its scripts on every master
    settings = topology_settings(cluster.url, "cluster", tmp_path, fake_twilio.url)
    first = phones(30)
    with Producer(settings) as producer:
        for i, phone in enumerate(first):
            producer.publish(phone, f"before {i}")
    async with running_worker(settings):
        await wait_until(lambda: len(fake_twilio.messages) >= 30, 30, what="the first 30")
        # When every master forgets its scripts (as a promoted replica or a restart would)
        for port in cluster.master_ports():
            node = track(redis.Redis(port=port))
            try:
                node.script_flush()  # (a private server of this test's cluster)
            finally:
                node.close()
        with Producer(settings) as producer:
            for i, phone in enumerate(phones(60)[30:]):
                producer.publish(phone, f"after {i}", idempotency_key=str(uuid.uuid4()))
        # Then the worker loads them again and sends the rest, each once
        await wait_until(lambda: len(fake_twilio.messages) >= 60, 30, what="the next 30")
    assert fake_twilio.duplicates() == {}
    assert len(fake_twilio.messages) == 60


@pytest.mark.timeout(120)
async def test_a_shard_moved_to_another_master_mid_run_loses_and_repeats_nothing(
    cluster: LocalCluster, tmp_path: Path, fake_twilio: Any
) -> None:
    # Given a worker sending while publishes go on
    settings = topology_settings(cluster.url, "cluster", tmp_path, fake_twilio.url)
    fake_twilio.set_latency(0.01)
    stream = shard_keys(settings.namespace, 0).requests
    others = [p for p in cluster.master_ports() if p != cluster.master_of(stream)]
    numbers = phones(400)

    def publish_all(producer: Producer, start: int, stop: int) -> list[PublishResult]:
        return [producer.publish(numbers[i], f"moving {i}") for i in range(start, stop)]

    with Producer(settings) as producer:
        async with running_worker(settings):
            first = await asyncio.to_thread(publish_all, producer, 0, 200)
            # When shard 0's slot moves to another master, key by key (ASK, then MOVED)
            moving = asyncio.to_thread(cluster.migrate_slot_of, stream, others[0])
            second, _ = await asyncio.gather(
                asyncio.to_thread(publish_all, producer, 200, 400), moving
            )
            assert cluster.master_of(stream) == others[0]
            # Then every message is sent, once
            await wait_until(
                lambda: len({m.body for m in fake_twilio.messages}) >= 400,
                60,
                what="all 400 sent",
            )
            await wait_until(lambda: producer.spooled() == 0, 30, what="the spool flushed")
    assert {r.status for r in first + second} <= {"queued", "spooled"}
    assert fake_twilio.duplicates() == {}
    assert {m.body for m in fake_twilio.messages} == {f"moving {i}" for i in range(400)}
