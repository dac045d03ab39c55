"""SMSRELAY_REDIS_WAIT_REPLICAS on one Redis (rule 19): a publish no replica acknowledged is
spooled, and an outcome no replica holds keeps its entry pending; both go through once a
replica is there. With 0 (the default) nothing waits."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from smsrelay.producers.publish import Producer
from tests.conftest import make_settings
from tests.support.servers import PrivateRedis
from tests.support.topologies import replica_of
from tests.support.wait import wait_until
from tests.support.worker import running_worker, stream_state

pytestmark = pytest.mark.slow


@pytest.mark.timeout(60)
async def test_without_a_replica_publishes_spool_and_outcomes_wait(
    private_redis: PrivateRedis, tmp_path: Path, fake_twilio: Any
) -> None:
    # Given a Redis without replicas and WAIT_REPLICAS=1
    settings = make_settings(
        private_redis.url, "waitns", tmp_path, fake_twilio.url, redis_wait_replicas=1
    )
    # When a message is published: no replica holds it in time, so it is spooled (not lost)
    with Producer(settings) as producer:
        result = producer.publish("+14155552671", "needs a replica")
        assert result.status == "spooled", result
        redis = private_redis.client()
        assert "replicas" in (result.error or "")
        # (the entry did reach the master: the worker sends it once, whatever the spool does)
        async with running_worker(settings) as worker:
            await wait_until(lambda: len(fake_twilio.messages) == 1, 20, what="the send")

            def recorded() -> float:
                sent = worker.metrics.registry.get_sample_value("smsrelay_messages_sent_total")
                return sent or 0.0

            # Then the outcome is not final while no replica holds it: the worker keeps it in
            # flight (a master lost now would find it again on the new one, and record it there)
            marker = f"{{{settings.namespace}:0}}:sent:{result.message_id}"
            await wait_until(lambda: bool(redis.exists(marker)), 10, what="the sent marker")
            # (a negative: it must still hold after more than one WAIT of publish_timeout)
            await asyncio.sleep(settings.publish_timeout_seconds * 1.5)
            assert recorded() == 0

            # When a replica joins
            replica = replica_of(private_redis.port, tmp_path)
            replica.start()
            try:
                # Then the outcome is recorded and the entry leaves the stream, the spooled copy
                # is published and found already sent: one SMS in all
                await wait_until(lambda: recorded() == 1, 20, what="the outcome recorded")
                await wait_until(lambda: producer.spooled() == 0, 20, what="spool flushed")
                await wait_until(lambda: stream_state(settings) == (0, 0), 20, what="copy dropped")
            finally:
                replica.kill()
    assert len(fake_twilio.messages) == 1
    assert fake_twilio.duplicates() == {}


async def test_with_a_replica_a_publish_is_queued(
    private_redis: PrivateRedis, tmp_path: Path, fake_twilio: Any
) -> None:
    # Given a Redis with one replica and WAIT_REPLICAS=1
    replica = replica_of(private_redis.port, tmp_path)
    replica.start()
    try:
        settings = make_settings(
            private_redis.url, "waitok", tmp_path, fake_twilio.url, redis_wait_replicas=1
        )
        await wait_until(lambda: _online(private_redis) >= 1, 20, what="the replica in sync")
        # When a message is published, Then it is queued (the replica holds it)
        with Producer(settings) as producer:
            assert producer.publish("+14155552671", "replicated").status == "queued"
        # and the replica has the entry
        assert replica.client().xlen(f"{{{settings.namespace}:0}}:requests") == 1
    finally:
        replica.kill()


def _online(server: PrivateRedis) -> int:
    info = server.client().info("replication")
    return sum(
        1
        for k, v in info.items()
        if k.startswith("slave") and isinstance(v, dict) and v.get("state") == "online"
    )
