"""/metrics: pipeline-wide numbers read from Redis and Postgres at scrape time."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import uuid
from typing import Any

import pytest
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families

from smsrelay.admin.metrics import admin_metric_names
from smsrelay.producers.publish import Producer
from smsrelay.settings import Settings
from smsrelay.streams.keys import ShardKeys
from tests.admin.conftest import LIST, admin_client, seed
from tests.store.dlq import unique_phone


def scrape(text: str) -> dict[str, Any]:
    """family name -> (type, {labels as a sorted tuple: value}) by sample name."""
    families: dict[str, Any] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = tuple(sorted(sample.labels.items()))
            families.setdefault(sample.name, (family.type, {}))[1][labels] = sample.value
    return families


async def test_metrics_read_redis_and_postgres(
    admin_settings: Settings, rclient: aioredis.Redis, fake_twilio: Any
) -> None:
    # Given two requests waiting (one on the high lane), three dead letters mirrored, two
    # admin retries
    with Producer(admin_settings) as producer:
        for priority in ("normal", "high"):
            result = producer.publish(unique_phone(), "waiting", priority=priority)
            assert result.status == "queued"
    sent_id, _, _ = await seed(admin_settings, rclient, reason="permanent_error")
    await seed(admin_settings, rclient, reason="rate_limited")
    await seed(admin_settings, rclient, reason="rate_limited")
    async with admin_client(admin_settings) as api:
        assert (await api.post(LIST, json={"id": sent_id})).status_code == 200
        assert (await api.post(LIST, json={"id": str(uuid.uuid4())})).status_code == 404
        # When Prometheus scrapes
        response = await api.get("/metrics", headers={})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    metrics = scrape(response.text)
    # Then every family has the contract's name, type and labels
    shard = (("shard", "0"),)

    def lanes(high: float, normal: float, bulk: float) -> dict[tuple[tuple[str, str], ...], float]:
        return {
            (("priority", "high"), ("shard", "0")): high,
            (("priority", "normal"), ("shard", "0")): normal,
            (("priority", "bulk"), ("shard", "0")): bulk,
        }

    assert metrics["smsrelay_stream_length"] == ("gauge", lanes(1.0, 1.0, 0.0))
    assert metrics["smsrelay_stream_pending"] == ("gauge", lanes(0.0, 0.0, 0.0))
    assert metrics["smsrelay_dead_letter_stream_length"] == ("gauge", {shard: 3.0})
    kind, dead = metrics["smsrelay_dead_letters_total"]
    assert kind == "counter"
    assert dead == {
        (("reason", "expired"),): 0.0,
        (("reason", "invalid_payload"),): 0.0,
        (("reason", "permanent_error"),): 1.0,
        (("reason", "poison"),): 0.0,
        (("reason", "rate_limited"),): 2.0,
        (("reason", "retries_exhausted"),): 0.0,
        (("reason", "undelivered"),): 0.0,
    }
    kind, retries = metrics["smsrelay_admin_retries_total"]
    assert kind == "counter"
    assert retries == {
        (("outcome", o),): v
        for o, v in (
            ("success", 1.0),
            ("not_found", 1.0),
            ("rate_limited", 0.0),
            ("provider_error", 0.0),
            ("conflict", 0.0),
        )
    }
    kind, records = metrics["smsrelay_failed_sms_records"]
    assert kind == "gauge"
    assert {dict(k)["status"] for k in records} == {"failed", "replayed", "resolved"}
    assert records[(("status", "resolved"),)] >= 1 and records[(("status", "failed"),)] >= 2
    assert metrics["smsrelay_scrape_error"][1] == {
        (("source", "postgres"),): 0.0,
        (("source", "redis"),): 0.0,
    }
    # and the names are the ones the deploy checks read
    assert set(metrics) == admin_metric_names()


async def test_pending_counts_entries_held_by_workers(
    admin_settings: Settings, rclient: aioredis.Redis
) -> None:
    with Producer(admin_settings) as producer:
        producer.publish(unique_phone(), "in flight")
    requests = ShardKeys(admin_settings.namespace).requests
    await rclient.xgroup_create(requests, "workers", id="0")
    await rclient.xreadgroup("workers", "w1", {requests: ">"}, count=10)
    async with admin_client(admin_settings) as api:
        metrics = scrape((await api.get("/metrics")).text)
    assert metrics["smsrelay_stream_pending"][1] == {
        (("priority", "high"), ("shard", "0")): 0.0,
        (("priority", "normal"), ("shard", "0")): 1.0,
        (("priority", "bulk"), ("shard", "0")): 0.0,
    }


async def test_every_shard_is_reported(admin_settings: Settings) -> None:
    settings = admin_settings.model_copy(update={"shards": 3})
    async with admin_client(settings) as api:
        metrics = scrape((await api.get("/metrics")).text)
    assert {dict(k)["shard"] for k in metrics["smsrelay_stream_length"][1]} == {"0", "1", "2"}


async def test_a_scrape_survives_postgres_and_redis_outages(admin_settings: Settings) -> None:
    down = admin_settings.model_copy(
        update={
            "database_url": "postgresql://postgres@127.0.0.1:1/postgres",
            "redis_url": "redis://127.0.0.1:1/0",
        }
    )
    async with admin_client(down) as api:
        response = await api.get("/metrics")
    assert response.status_code == 200
    metrics = scrape(response.text)
    assert metrics["smsrelay_scrape_error"][1] == {
        (("source", "postgres"),): 1.0,
        (("source", "redis"),): 1.0,
    }
    assert "smsrelay_failed_sms_records" not in metrics
    assert "smsrelay_stream_length" not in metrics


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
async def test_promtool_finds_nothing_to_fix(
    admin_settings: Settings, rclient: aioredis.Redis
) -> None:
    await seed(admin_settings, rclient)
    async with admin_client(admin_settings) as api:
        text = (await api.get("/metrics")).text
    result = await asyncio.to_thread(
        subprocess.run,
        ["promtool", "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr
