"""Real worker processes: SIGTERM drains, SIGKILL loses nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from smsrelay.producers.publish import Producer
from smsrelay.settings import Settings
from tests.conftest import TEST_ACCOUNT_SID, TEST_AUTH_TOKEN, TEST_FROM
from tests.support.wait import wait_for
from tests.support.worker import dead_letters, stream_state

pytestmark = pytest.mark.slow


def start_worker(settings: Settings, log: Path, **env: str) -> subprocess.Popen[bytes]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SMSRELAY_", "TWILIO_"))}
    base.update(
        {
            "SMSRELAY_REDIS_URL": settings.redis_url,
            "SMSRELAY_NAMESPACE": settings.namespace,
            "SMSRELAY_TWILIO_BASE_URL": settings.twilio_base_url,
            "TWILIO_ACCOUNT_SID": TEST_ACCOUNT_SID,
            "TWILIO_AUTH_TOKEN": TEST_AUTH_TOKEN,
            "SMSRELAY_TWILIO_FROM": TEST_FROM,
            "SMSRELAY_METRICS_PORT": "0",
            "SMSRELAY_LOG_LEVEL": "info",
            "SMSRELAY_CLAIM_IDLE_SECONDS": "1",
            "SMSRELAY_BACKOFF_BASE_SECONDS": "0.05",
            "SMSRELAY_RATE_LIMIT_MAX": "1000",
        }
    )
    base.update(env)
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "smsrelay.cli", "worker", "--no-mirror"],
            env=base,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def publish_many(settings: Settings, count: int) -> list[str]:
    with Producer(settings) as producer:
        results = [
            producer.publish(f"+1415555{1000 + i:04d}", f"message {i}") for i in range(count)
        ]
    assert {r.status for r in results} == {"queued"}
    return [str(r.message_id) for r in results]


def test_sigterm_drains_in_flight_sends_and_exits_0(
    settings: Settings, fake_twilio: Any, tmp_path: Path
) -> None:
    fake_twilio.set_latency(0.5)
    publish_many(settings, 40)
    worker = start_worker(settings, tmp_path / "worker.log", SMSRELAY_WORKER_CONCURRENCY="8")
    try:
        wait_for(lambda: len(fake_twilio.requests) >= 8, 20, "sends in flight")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=15) == 0, (tmp_path / "worker.log").read_text()
    finally:
        worker.kill()
    sent_before_stop = len(fake_twilio.messages)
    assert 8 <= sent_before_stop < 40
    # Every request the stopped worker made was answered and recorded: none is left pending.
    assert stream_state(settings)[1] == 0
    fake_twilio.set_latency(0)
    second = start_worker(settings, tmp_path / "worker2.log")
    try:
        wait_for(lambda: len(fake_twilio.messages) >= 40, 30, "all 40 sent")
        wait_for(lambda: stream_state(settings) == (0, 0), 10, "drained")
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=15)
    counts = Counter((m.to, m.body) for m in fake_twilio.messages)
    assert len(counts) == 40
    assert max(counts.values()) == 1, "a message was sent twice"
    assert "worker.draining" in (tmp_path / "worker.log").read_text()


def test_sigkill_mid_send_loses_nothing(
    settings: Settings, fake_twilio: Any, tmp_path: Path
) -> None:
    fake_twilio.set_latency(0.4)
    publish_many(settings, 60)
    victim = start_worker(settings, tmp_path / "victim.log", SMSRELAY_WORKER_CONCURRENCY="10")
    try:
        wait_for(lambda: len(fake_twilio.messages) >= 10, 20, "some sends")
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=10)
    finally:
        victim.kill()
    in_flight_at_kill = len(fake_twilio.requests) - len(fake_twilio.messages)
    rescuer = start_worker(settings, tmp_path / "rescuer.log")
    try:
        wait_for(lambda: len({m.body for m in fake_twilio.messages}) == 60, 30, "all 60 sent")
        wait_for(lambda: stream_state(settings) == (0, 0), 15, "drained")
    finally:
        rescuer.send_signal(signal.SIGTERM)
        rescuer.wait(timeout=15)
    counts = Counter(m.body for m in fake_twilio.messages)
    duplicates = sum(n - 1 for n in counts.values())
    # Only a send the provider accepted just before the kill (its marker unwritten) can repeat.
    assert duplicates <= max(in_flight_at_kill, 10), (duplicates, in_flight_at_kill)
    assert dead_letters(settings) == []
