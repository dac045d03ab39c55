"""A Postgres outage pauses mirroring; the worker keeps sending; nothing is lost."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from structlog.testing import capture_logs

from smsrelay.producers.publish import Producer
from smsrelay.settings import Settings
from smsrelay.store.mirror import run_mirror
from smsrelay.streams.keys import MIRROR_GROUP, ShardKeys
from tests.conftest import make_settings
from tests.store.dlq import unique_phone
from tests.support.clients import redis_client
from tests.support.servers import ThrowawayPostgres
from tests.support.wait import wait_until
from tests.support.worker import dead_letters, running_worker

pytestmark = pytest.mark.slow


@pytest.fixture
def postgres(throwaway_postgres: ThrowawayPostgres) -> ThrowawayPostgres:
    return throwaway_postgres


def statuses(url: str, ids: list[str]) -> dict[str, str]:
    """Mirrored rows by id; empty while Postgres is down."""
    try:
        with psycopg.connect(url, connect_timeout=2) as conn:
            rows = conn.execute(
                "SELECT id::text, status FROM public.failed_sms WHERE id = ANY(%s)",
                [[uuid.UUID(i) for i in ids]],
            )
            return dict(rows.fetchall())
    except psycopg.Error:
        return {}


def publish(settings: Settings, phone: str) -> str:
    with Producer(settings) as producer:
        result = producer.publish(phone, "your booking is confirmed")
    assert result.status == "queued"
    return str(result.message_id)


async def test_dead_letters_reach_postgres_after_an_outage(
    postgres: ThrowawayPostgres, redis_url: str, namespace: str, tmp_path: Path, fake_twilio: Any
) -> None:
    settings = make_settings(
        redis_url, namespace, tmp_path, fake_twilio.url, database_url=postgres.url
    )
    phones = [unique_phone() for _ in range(3)]
    for phone in phones:  # Twilio 21610: the recipient unsubscribed (a permanent error)
        fake_twilio.script(phone, [], default={"status": 400, "code": 21610})
    mirror = [lambda stop: run_mirror(settings, stop)]
    with capture_logs() as logs:
        async with running_worker(settings, upkeep=mirror) as worker:
            # Given a worker whose mirror has mirrored a first dead letter
            first = publish(settings, phones[0])
            await wait_until(
                lambda: statuses(postgres.url, [first]) == {first: "failed"}, what="the first row"
            )
            # When Postgres stops and two more messages are dead-lettered
            postgres.stop()
            later = [publish(settings, phone) for phone in phones[1:]]
            await wait_until(lambda: len(dead_letters(settings)) == 3, what="3 dead letters")
            client = redis_client(redis_url)
            dead = ShardKeys(namespace).dead

            def pending() -> int:
                return int(client.xpending(dead, MIRROR_GROUP)["pending"])

            # (after a failed write the mirror re-reads its own pending entries, so the
            # second may not even be read yet: either way, nothing is acknowledged)
            await wait_until(lambda: pending() >= 1, what="entries read and left pending")
            await asyncio.sleep(1.5)  # several failed attempts, backing off
            # Then the worker lives on, and once Postgres is back the rows appear
            assert not worker.stop_event.is_set()
            postgres.start()
            await wait_until(
                lambda: statuses(postgres.url, later) == dict.fromkeys(later, "failed"),
                timeout=20,
                what="the rows written during the outage",
            )
            await wait_until(lambda: pending() == 0, what="all acknowledged")
            client.close()
    # and the outage was logged once, not once per attempt
    events = [entry["event"] for entry in logs]
    assert events.count("postgres.unavailable") == 1
