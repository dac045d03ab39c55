"""Many workers at once: the per-phone rate limit holds, poison entries are set aside."""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_settings
from tests.faults.support import (
    Pipeline,
    Processes,
    phone,
    publish_all,
    record_figure,
    start_worker,
)
from tests.support.clients import redis_client
from tests.support.wait import wait_for

pytestmark = [pytest.mark.faults, pytest.mark.slow]

PHONES, PER_PHONE, LIMIT = 200, 10, 5


def _messages() -> list[tuple[str, str]]:
    # Interleaved, so every worker meets every phone.
    return [(phone(p), f"rl-{p:03d}-{n}") for n in range(PER_PHONE) for p in range(PHONES)]


def test_three_workers_keep_the_limit_and_account_for_every_message(
    redis_url: str, namespace: str, tmp_path: Path, fake_twilio: Any, procs: Processes
) -> None:
    settings = make_settings(
        redis_url,
        namespace,
        tmp_path,
        fake_twilio.url,
        rate_limit_max=LIMIT,
        rate_limit_window_seconds=3600,
        on_rate_limit="dead_letter",
        worker_concurrency=32,
    )
    pipeline = Pipeline(redis_client(redis_url), namespace)
    fake_twilio.set_latency(0.01)
    # Given three workers
    for n in range(3):
        start_worker(procs, settings, f"worker-{n}", ready=False)
    # When 2,000 messages to 200 phones (10 each, the limit is 5 an hour) are published
    ids = publish_all(settings, _messages())
    try:
        wait_for(
            lambda: len(fake_twilio.messages) + pipeline.length(pipeline.keys.dead) >= len(ids),
            60,
            "every outcome",
        )
        wait_for(pipeline.drained, 15, "drained")
        sends = Counter(str(m.body) for m in fake_twilio.messages)
        per_phone = Counter(str(m.to) for m in fake_twilio.messages)
        dead = pipeline.dead_letters()
        marked = pipeline.sent_markers(ids.values())
    finally:
        pipeline.client.close()
    # Then no phone got more than the limit, each message has exactly one outcome
    assert max(per_phone.values()) <= LIMIT
    assert sum(sends.values()) + len(dead) == len(ids)
    assert max(sends.values()) == 1
    assert {d["reason"] for d in dead} == {"rate_limited"}
    dead_ids = {d["id"] for d in dead}
    assert len(dead_ids) == len(dead)
    assert marked | dead_ids == set(ids.values()) and not marked & dead_ids
    assert sorted(per_phone.values()) == [LIMIT] * PHONES  # and the limit was used, exactly
    record_figure(
        "rate-limit",
        "sent + dead-lettered = published",
        f"{sum(sends.values())} + {len(dead)} = {len(ids)}",
    )


def test_three_workers_deferring_keep_the_limit_in_every_sliding_window(
    redis_url: str, namespace: str, tmp_path: Path, fake_twilio: Any, procs: Processes
) -> None:
    window_s, tolerance_s = 4.0, 1.0
    settings = make_settings(
        redis_url,
        namespace,
        tmp_path,
        fake_twilio.url,
        rate_limit_max=LIMIT,
        rate_limit_window_seconds=window_s,
        on_rate_limit="defer",
        worker_concurrency=32,
    )
    pipeline = Pipeline(redis_client(redis_url), namespace)
    # Given three workers that defer what the limit holds back
    for n in range(3):
        start_worker(procs, settings, f"worker-{n}", ready=False)
    # When 2,000 messages to 200 phones (10 each, 5 per 4 s window) are published
    ids = publish_all(settings, _messages())
    try:
        wait_for(lambda: len(fake_twilio.messages) >= len(ids), 60, "every message sent")
        wait_for(pipeline.drained, 15, "drained")
        accepted = [(str(m.to), float(m.received_at), str(m.body)) for m in fake_twilio.messages]
        dead = pipeline.dead_letters()
    finally:
        pipeline.client.close()
    # Then all were sent, once, and no phone got a sixth SMS within a window (less the time a
    # send takes from the limiter's decision to the provider, `tolerance_s`)
    assert dead == []
    assert Counter(body for _, _, body in accepted) == Counter(dict.fromkeys(ids, 1))
    times: dict[str, list[float]] = defaultdict(list)
    for to, at, _ in accepted:
        times[to].append(at)
    closest = min(
        sorted(ts)[n + LIMIT] - sorted(ts)[n]
        for ts in times.values()
        for n in range(len(ts) - LIMIT)
    )
    assert closest >= window_s - tolerance_s, closest
    record_figure("rate-limit-defer", "closest 1st-to-6th send to one phone", closest, "s")


def test_a_poison_entry_is_set_aside_after_the_delivery_limit_and_others_flow(
    redis_url: str, namespace: str, tmp_path: Path, fake_twilio: Any, procs: Processes
) -> None:
    max_deliveries = 3
    settings = make_settings(
        redis_url,
        namespace,
        tmp_path,
        fake_twilio.url,
        claim_idle_seconds=0.5,
        max_deliveries=max_deliveries,
        rate_limit_max=1000,
    )
    pipeline = Pipeline(redis_client(redis_url), namespace)
    poisoned = phone(7777)
    # Given a message whose processing fails every time: its state key was overwritten with a
    # value of the wrong type (corruption, a foreign tool), so every script touching it errs
    [poison_id] = publish_all(settings, [(poisoned, "poison")]).values()
    pipeline.client.set(pipeline.keys.state(poison_id), "not a hash")
    ids = publish_all(settings, [(phone(i), f"flow-{i}") for i in range(40)])
    started = time.monotonic()
    try:
        # When two workers run
        workers = [start_worker(procs, settings, f"worker-{n}") for n in range(2)]
        # Then the others flow at once, and the poison entry is dead-lettered as `poison`
        wait_for(lambda: len(fake_twilio.messages) >= len(ids), 20, "the others sent")
        wait_for(lambda: len(pipeline.dead_letters()) == 1, 30, "the poison dead letter")
        took = time.monotonic() - started
        wait_for(pipeline.drained, 15, "drained")
        [dead] = pipeline.dead_letters()
        failures = sum(w.event_names()["sms.processing_failed"] for w in workers)
    finally:
        pipeline.client.close()
    assert dead["reason"] == "poison"
    assert dead["id"] == poison_id
    assert f"delivered {max_deliveries + 1} times" in dead["error"]
    assert failures == max_deliveries
    assert all(w.alive() for w in workers)
    assert fake_twilio.messages_to(poisoned) == []
    assert Counter(str(m.body) for m in fake_twilio.messages) == Counter(dict.fromkeys(ids, 1))
    record_figure("poison", "failed deliveries before set aside", failures)
    record_figure("poison", "time to dead-letter it", took, "s")
