"""Worker processes killed (SIGKILL) and stopped (SIGTERM) in the middle of sending."""

from __future__ import annotations

import signal
import time
from collections import Counter
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


def _in_progress(fake: Any) -> int:
    """Requests the fake has received and not answered yet."""
    return sum(1 for r in fake.requests if r.status is None and r.outcome != "dropped")


def test_sigkill_mid_send_delivers_everything_and_repeats_only_in_flight_sends(
    redis_url: str, namespace: str, tmp_path: Path, fake_twilio: Any, procs: Processes
) -> None:
    count, concurrency, kills = 400, 32, 3
    settings = make_settings(
        redis_url,
        namespace,
        tmp_path,
        fake_twilio.url,
        claim_idle_seconds=1,
        worker_concurrency=concurrency,
        rate_limit_max=1000,
        max_attempts=10,
    )
    pipeline = Pipeline(redis_client(redis_url), namespace)
    # Given 400 messages and a provider that takes 150 ms per send
    fake_twilio.set_latency(0.15)
    ids = publish_all(settings, [(phone(i), f"kill-{i:04d}") for i in range(count)])
    in_flight_at_kills: set[str] = set()
    try:
        for round_no in range(kills):
            # When a worker is SIGKILLed while sends are in flight, three times in a row
            victim = start_worker(procs, settings, f"victim-{round_no}")
            target = (round_no + 1) * count // (kills + 2)
            wait_for(
                lambda: (
                    len(fake_twilio.messages) >= target  # noqa: B023
                    and _in_progress(fake_twilio) >= concurrency // 2
                ),
                60,
                f"{target} sends and a full pipe of sends in flight",
            )
            victim.signal(signal.SIGKILL)
            victim.wait(timeout=10)
            # Everything the dead worker asked the provider is answered before anyone else
            # sends, so the requests seen now are exactly the victim's.
            wait_for(lambda: _in_progress(fake_twilio) == 0, 10, "in-flight requests answered")
            marked = pipeline.sent_markers(ids.values())
            in_flight_at_kills |= {
                str(r.body) for r in fake_twilio.requests if ids[str(r.body)] not in marked
            }
        # Then a fresh worker finishes the work
        start_worker(procs, settings, "rescuer")
        fake_twilio.set_latency(0)
        wait_for(
            lambda: len({m.body for m in fake_twilio.messages}) == count,
            60,
            "every message accepted once at least",
        )
        wait_for(pipeline.drained, 30, "an empty stream, no pending entry, no delayed entry")
        sends = Counter(m.body for m in fake_twilio.messages)
        dead = pipeline.dead_letters()
    finally:
        pipeline.client.close()
    duplicates = {body: n - 1 for body, n in sends.items() if n > 1}
    record_figure("sigkill", "kills", kills)
    record_figure("sigkill", "sends in flight at the kills", len(in_flight_at_kills))
    record_figure("sigkill", "duplicate SMS", sum(duplicates.values()))
    # Every message went out; the only repeats are sends that were in flight at a kill
    assert set(sends) == set(ids)
    assert dead == []
    assert set(duplicates) <= in_flight_at_kills, set(duplicates) - in_flight_at_kills
    assert all(n == 1 for n in duplicates.values()), duplicates
    assert len(in_flight_at_kills) <= kills * concurrency


def test_sigterm_during_sends_exits_0_within_the_grace_period_and_sends_once(
    redis_url: str, namespace: str, tmp_path: Path, fake_twilio: Any, procs: Processes
) -> None:
    count, concurrency, grace = 200, 24, 5.0
    settings = make_settings(
        redis_url,
        namespace,
        tmp_path,
        fake_twilio.url,
        worker_concurrency=concurrency,
        shutdown_grace_seconds=grace,
        rate_limit_max=1000,
    )
    pipeline = Pipeline(redis_client(redis_url), namespace)
    # Given a worker with a full pipe of 800 ms sends in flight
    fake_twilio.set_latency(0.8)
    ids = publish_all(settings, [(phone(i), f"term-{i:04d}") for i in range(count)])
    worker = start_worker(procs, settings, "worker")
    try:
        wait_for(lambda: _in_progress(fake_twilio) >= concurrency - 4, 30, "sends in flight")
        in_flight = _in_progress(fake_twilio)
        # When it gets SIGTERM
        started = time.monotonic()
        worker.signal(signal.SIGTERM)
        code = worker.wait(timeout=grace + 10)
        took = time.monotonic() - started
        # Then it exits 0 within the grace period, having finished every send it began
        assert code == 0, worker.tail()
        assert took <= grace, took
        assert _in_progress(fake_twilio) == 0
        assert pipeline.backlog()[1] == 0, "an entry was left pending by a clean stop"
        events = worker.event_names()
        assert events["worker.draining"] == 1 and events["worker.stopped"] == 1
        assert events["worker.handed_back"] == 0
        sent_by_first = len(fake_twilio.messages)
        # And a second worker sends the rest: every message exactly once
        fake_twilio.set_latency(0)
        start_worker(procs, settings, "second")
        wait_for(lambda: len(fake_twilio.messages) >= count, 30, "all messages sent")
        wait_for(pipeline.drained, 15, "drained")
        wait_for(lambda: _in_progress(fake_twilio) == 0, 10, "every request answered")
        sends = Counter(m.body for m in fake_twilio.messages)
    finally:
        pipeline.client.close()
    record_figure("sigterm", "sends in flight at SIGTERM", in_flight)
    record_figure("sigterm", "exit after SIGTERM", took, "s")
    record_figure("sigterm", "sent by the stopped worker", sent_by_first)
    assert set(sends) == set(ids)
    assert max(sends.values()) == 1, {b: n for b, n in sends.items() if n > 1}


def test_sigterm_with_sends_slower_than_the_grace_period_hands_them_back(
    redis_url: str, namespace: str, tmp_path: Path, fake_twilio: Any, procs: Processes
) -> None:
    count, concurrency, grace = 40, 8, 1.0
    settings = make_settings(
        redis_url,
        namespace,
        tmp_path,
        fake_twilio.url,
        worker_concurrency=concurrency,
        shutdown_grace_seconds=grace,
        claim_idle_seconds=1,
        twilio_timeout_seconds=10,
        rate_limit_max=1000,
    )
    pipeline = Pipeline(redis_client(redis_url), namespace)
    # Given sends that take 3 s while the worker's grace period is 1 s
    fake_twilio.set_latency(3.0)
    ids = publish_all(settings, [(phone(i), f"slow-term-{i:04d}") for i in range(count)])
    worker = start_worker(procs, settings, "worker")
    try:
        wait_for(lambda: _in_progress(fake_twilio) >= concurrency, 30, "sends in flight")
        # When the worker gets SIGTERM
        started = time.monotonic()
        worker.signal(signal.SIGTERM)
        code = worker.wait(timeout=grace + 10)
        took = time.monotonic() - started
        # Then it still exits 0 within the grace period (plus the cleanup), handing back
        assert code == 0, worker.tail()
        assert took <= grace + 1.5, took
        assert worker.event_names()["worker.handed_back"] == 1
        handed_back = {str(r.body) for r in fake_twilio.requests}
        # And nothing is lost: another worker sends every message
        fake_twilio.set_latency(0)
        start_worker(procs, settings, "second")
        wait_for(lambda: len({m.body for m in fake_twilio.messages}) == count, 30, "all sent")
        wait_for(pipeline.drained, 15, "drained")
        # (the provider finishes the handed-back requests in its own time)
        wait_for(lambda: _in_progress(fake_twilio) == 0, 10, "every request answered")
        sends = Counter(m.body for m in fake_twilio.messages)
    finally:
        pipeline.client.close()
    duplicates = {body: n - 1 for body, n in sends.items() if n > 1}
    record_figure("sigterm-slow", "sends handed back at SIGTERM", len(handed_back))
    record_figure(
        "sigterm-slow",
        "duplicate SMS (provider finished a handed-back send)",
        sum(duplicates.values()),
    )
    assert set(sends) == set(ids)
    # A handed-back send is ambiguous (the provider may finish it): repeats only among them
    assert set(duplicates) <= handed_back
    assert all(n == 1 for n in duplicates.values()), duplicates
