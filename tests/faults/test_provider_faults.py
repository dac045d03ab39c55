"""The provider misbehaves: dropped connections, 503s, answers slower than the timeout, a
whole outage, and sends slower than the claim idle time."""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from smsrelay.testing.fake_twilio import FakeTwilioThread
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
from tests.support.servers import free_port
from tests.support.wait import wait_for

pytestmark = [pytest.mark.faults, pytest.mark.slow]

BASE_S = 0.2  # backoff base: waits of 0.2 s then 0.4 s (no jitter)
TIMEOUT_S = 0.5  # the worker's Twilio timeout
SLOW_S = 1.0  # answers slower than the timeout
CLIENT_SIDE_SLACK_S = 0.1

# phone -> (fake's script steps, default step, expected outcome, provider requests)
SCENARIOS: dict[str, tuple[list[Any], Any, str, int]] = {
    phone(9001): ([], "drop", "retries_exhausted", 3),
    phone(9002): ([], {"status": 503}, "retries_exhausted", 3),
    phone(9003): ([], {"status": 503, "delay": SLOW_S}, "retries_exhausted", 3),
    phone(9004): (["drop", {"status": 503}], None, "sent", 3),
    phone(9005): ([{"status": 503, "delay": SLOW_S}, "drop"], None, "sent", 3),
    phone(9006): ([{"status": 429, "code": 20429}] * 2, None, "sent", 3),
    phone(9007): ([{"status": 500, "code": 20500}], None, "sent", 2),
    phone(9008): ([{"status": 400, "code": 21610}], None, "permanent_error", 1),
}
AMBIGUOUS = phone(9009)  # accepted, but after the timeout: the worker cannot know


def test_provider_errors_are_retried_per_policy_then_dead_lettered_nothing_lost(
    redis_url: str, namespace: str, tmp_path: Path, fake_twilio: Any, procs: Processes
) -> None:
    settings = make_settings(
        redis_url,
        namespace,
        tmp_path,
        fake_twilio.url,
        max_attempts=3,
        backoff_base_seconds=BASE_S,
        backoff_jitter=0,
        twilio_timeout_seconds=TIMEOUT_S,
        rate_limit_max=1000,
        # Eight numbers failing together with nothing else left to send look like an outage
        # to the breaker (tests/faults/test_breaker.py): here, the per-message policy alone.
        breaker_threshold=0,
    )
    pipeline = Pipeline(redis_client(redis_url), namespace)
    # Given a provider that drops, fails and stalls for some numbers, and 60 healthy ones
    for to, (steps, default, _, _) in SCENARIOS.items():
        fake_twilio.script(to, steps, default)
    fake_twilio.script(AMBIGUOUS, [{"delay": SLOW_S}])
    messages = [(to, f"outage-{to}") for to in [*SCENARIOS, AMBIGUOUS]]
    messages += [(phone(i), f"healthy-{i}") for i in range(60)]
    ids = publish_all(settings, messages)
    # When a worker processes them
    try:
        start_worker(procs, settings, "worker")
        expected_dead = sum(1 for s in SCENARIOS.values() if s[2] != "sent")
        wait_for(lambda: len(pipeline.dead_letters()) >= expected_dead, 30, "dead letters")
        wait_for(pipeline.drained, 30, "drained")
        wait_for(
            lambda: all(
                r.status is not None or r.outcome == "dropped" for r in fake_twilio.requests
            ),
            10,
            "every request answered",
        )
        dead = {d["to"]: d for d in pipeline.dead_letters()}
        requests = fake_twilio.requests
        sends = Counter(str(m.body) for m in fake_twilio.messages)
        marked = pipeline.sent_markers(ids.values())
    finally:
        pipeline.client.close()
    # Then each scenario took the attempts and waits of the policy, and ended as expected
    for to, (_, _, outcome, attempts) in SCENARIOS.items():
        times = [r.at for r in requests if r.to == to]
        assert len(times) == attempts, (to, times)
        for n, (before, after) in enumerate(itertools.pairwise(times), start=1):
            waited = after - before
            least = BASE_S * 2 ** (n - 1)
            if to in (phone(9003), phone(9005)) and n == 1:
                # The first attempt itself lasted the timeout. Its clock starts in the worker,
                # and with ~70 sends starting at once (one pipelined begin for them all) the
                # request reaches the fake up to some 0.1 s later: the gap seen there is shorter.
                least += TIMEOUT_S - CLIENT_SIDE_SLACK_S
            assert least <= waited < least + TIMEOUT_S + 0.5, (to, n, waited)
        if outcome == "sent":
            assert sends[f"outage-{to}"] == 1 and to not in dead, to
        else:
            assert dead[to]["reason"] == outcome, dead[to]
            assert dead[to]["attempts"] == str(attempts)
    assert "503" in dead[phone(9002)]["error"]
    assert "did not answer within" in dead[phone(9003)]["error"]
    assert "21610" in dead[phone(9008)]["error"]
    # And nothing is lost: every message is either marked sent or dead-lettered, not both
    dead_ids = {d["id"] for d in dead.values()}
    assert marked | dead_ids == set(ids.values())
    assert not marked & dead_ids
    assert all(sends[f"healthy-{i}"] == 1 for i in range(60))
    # A send accepted after the timeout is found at Twilio before the retry: not sent again
    ambiguous = sends[f"outage-{AMBIGUOUS}"]
    assert AMBIGUOUS not in dead and ambiguous == 1
    record_figure(
        "provider-errors",
        "dead-lettered / sent / published",
        f"{len(dead)} / {len(marked)} / {len(ids)}",
    )
    record_figure(
        "provider-errors", "duplicate SMS after an answer slower than the timeout", ambiguous - 1
    )


@pytest.fixture
def fake_port() -> int:
    return free_port()


@pytest.fixture
def fakes(fake_port: int) -> Iterator[list[FakeTwilioThread]]:
    """Fake Twilio servers started one after another on the same port."""
    started: list[FakeTwilioThread] = []
    try:
        yield started
    finally:
        for fake in started:
            fake.stop()


def test_a_whole_provider_outage_is_waited_out_within_the_retry_budget(
    redis_url: str,
    namespace: str,
    tmp_path: Path,
    fake_port: int,
    fakes: list[FakeTwilioThread],
    procs: Processes,
) -> None:
    url = f"http://127.0.0.1:{fake_port}"
    settings = make_settings(
        redis_url,
        namespace,
        tmp_path,
        url,
        max_attempts=6,
        backoff_base_seconds=0.25,
        backoff_jitter=0.1,
        rate_limit_max=1000,
    )
    pipeline = Pipeline(redis_client(redis_url), namespace)
    first = FakeTwilioThread(port=fake_port)
    first.start()
    fakes.append(first)
    try:
        # Given a worker sending happily
        start_worker(procs, settings, "worker")
        publish_all(settings, [(phone(i), f"before-{i}") for i in range(20)])
        wait_for(lambda: len(first.messages) == 20, 20, "the first 20 sent")
        # When the provider goes away entirely (connections refused) for 2 s
        first.stop()
        fakes.remove(first)  # (stopping a FakeTwilioThread twice raises)
        ids = publish_all(settings, [(phone(i), f"during-{i}") for i in range(100)])
        wait_for(
            lambda: pipeline.backlog()[2] >= 50, 10, "sends failing and waiting for their retry"
        )
        time.sleep(2.0)  # the outage itself, not an assertion
        second = FakeTwilioThread(port=fake_port)
        second.start()
        fakes.append(second)
        # Then every message goes out after it returns, once, and none is dead-lettered
        wait_for(lambda: len(second.messages) >= 100, 30, "all 100 sent after the outage")
        wait_for(pipeline.drained, 15, "drained")
        sends = Counter(str(m.body) for m in second.messages)
        dead = pipeline.dead_letters()
        marked = pipeline.sent_markers(ids.values())
    finally:
        pipeline.client.close()
    assert dead == []
    assert set(sends) == set(ids) and max(sends.values()) == 1
    assert marked == set(ids.values())
    record_figure("provider-outage", "messages waiting out a 2 s outage", len(ids))


def test_a_provider_slower_than_the_claim_idle_time_is_not_taken_over(
    redis_url: str, namespace: str, tmp_path: Path, fake_twilio: Any, procs: Processes
) -> None:
    idle_s, slow_s = 1.0, 3.5
    settings = make_settings(
        redis_url,
        namespace,
        tmp_path,
        fake_twilio.url,
        claim_idle_seconds=idle_s,
        twilio_timeout_seconds=6,
        rate_limit_max=1000,
    )
    pipeline = Pipeline(redis_client(redis_url), namespace)
    slow = [phone(8000 + n) for n in range(6)]
    # Given sends that take 3.5x the claim idle time, and two workers that claim idle entries
    for to in slow:
        fake_twilio.script(to, [{"delay": slow_s}])
    workers = [start_worker(procs, settings, f"worker-{n}") for n in range(2)]
    # When slow and fast messages are published
    ids = publish_all(
        settings, [(to, f"slow-{to}") for to in slow] + [(phone(i), f"fast-{i}") for i in range(40)]
    )
    try:
        wait_for(lambda: len(fake_twilio.messages) >= len(ids), 30, "all sent")
        wait_for(pipeline.drained, 15, "drained")
        requests = Counter(str(r.to) for r in fake_twilio.requests)
        sends = Counter(str(m.body) for m in fake_twilio.messages)
    finally:
        pipeline.client.close()
    # Then no other worker took a slow send over: one request, one SMS each
    assert all(requests[to] == 1 for to in slow), requests
    assert set(sends) == set(ids) and max(sends.values()) == 1
    claimed = sum(w.event_names()["worker.claimed"] for w in workers)
    assert claimed == 0
    record_figure("slow-provider", "send time / claim idle time", slow_s / idle_s, "x")
    record_figure("slow-provider", "takeovers", claimed)
