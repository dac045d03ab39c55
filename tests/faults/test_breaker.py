"""The provider's bad days (issue 13), with real worker processes and the fake Twilio: a
breaker shared by the fleet, one send rate, expiry, and sends whose answer was lost."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import redis

from smsrelay.settings import Settings
from smsrelay.streams.keys import FleetKeys
from tests.conftest import TEST_ACCOUNT_SID, TEST_AUTH_TOKEN, make_settings
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


def _settings(redis_url: str, namespace: str, tmp_path: Path, fake: Any, **extra: Any) -> Settings:
    values: dict[str, Any] = {"rate_limit_max": 1000, "breaker_cooldown_seconds": 1}
    values.update(extra)
    return make_settings(redis_url, namespace, tmp_path, fake.url, **values)


def _breaker(client: redis.Redis, namespace: str) -> dict[str, str]:
    raw: dict[bytes, bytes] = client.hgetall(FleetKeys(namespace).breaker)  # type: ignore[assignment]
    return {k.decode(): v.decode() for k, v in raw.items()}


@pytest.mark.timeout(120)
def test_a_20_s_outage_dead_letters_nothing_and_every_message_goes_out_once(
    redis_url: str, namespace: str, tmp_path: Path, fake_twilio: Any, procs: Processes
) -> None:
    settings = _settings(redis_url, namespace, tmp_path, fake_twilio)
    pipeline = Pipeline(redis_client(redis_url), namespace)
    workers = [start_worker(procs, settings, f"worker-{n}") for n in range(2)]
    # Given the provider answering 503 to everything for 20 s, 25 messages published as it
    # starts and 25 more during it
    fake_twilio.start_outage({"status": 503, "code": 20503}, seconds=20)
    started = time.monotonic()
    ids = publish_all(settings, [(phone(i), f"before-{i}") for i in range(25)])
    wait_for(lambda: _breaker(pipeline.client, namespace).get("state") == "open", 10, "open")
    ids |= publish_all(settings, [(phone(100 + i), f"during-{i}") for i in range(25)])
    # When the outage ends
    wait_for(lambda: not fake_twilio.outage()["active"], 25, "the outage to end")
    during = int(fake_twilio.outage()["requests"])
    ended = time.monotonic()
    wait_for(lambda: len(fake_twilio.messages) == 50 and pipeline.drained(), 60, "all 50 sent")
    drained_after = time.monotonic() - ended
    # Then the provider saw the 25 sends in flight when it began and one probe per cooldown;
    # nothing was dead-lettered; every message went out exactly once
    cooldowns = 0
    elapsed, cooldown = 1.0, 1.0
    while elapsed < time.monotonic() - started:  # 1 s, then 1.5x each: one probe each
        cooldowns += 1
        cooldown = min(cooldown * 1.5, 300)
        elapsed += cooldown
    assert during <= 25 + cooldowns, (during, cooldowns)
    assert pipeline.dead_letters() == []
    assert sum(fake_twilio.fake.duplicates().values()) == 0
    assert {m.body for m in fake_twilio.messages} == set(ids)
    # and the backlog drained within 10 s of the provider's return (the cooldown then running
    # is at most about half the outage so far: 1.5x growth)
    assert drained_after < 10, drained_after
    # and the breaker opened and closed once, each said once
    events = [w.event_names() for w in workers]
    assert sum(e["provider.breaker_opened"] for e in events) == 1
    assert sum(e["provider.breaker_closed"] for e in events) == 1
    assert _breaker(pipeline.client, namespace)["state"] == "closed"
    record_figure("breaker", "provider requests during a 20 s outage (25 in flight)", during)
    record_figure("breaker", "backlog drained after the outage", round(drained_after, 1), "s")


@pytest.fixture
def strict_twilio() -> Any:
    """A fake Twilio that accepts only the test account's token (as Twilio does)."""
    from smsrelay.testing.fake_twilio import FakeTwilioThread

    with FakeTwilioThread(account_sid=TEST_ACCOUNT_SID, auth_token=TEST_AUTH_TOKEN) as fake:
        yield fake


def test_a_wrong_auth_token_opens_the_breaker_and_a_restart_sends_everything(
    redis_url: str, namespace: str, tmp_path: Path, strict_twilio: Any, procs: Processes
) -> None:
    fake_twilio = strict_twilio
    settings = _settings(redis_url, namespace, tmp_path, fake_twilio)
    pipeline = Pipeline(redis_client(redis_url), namespace)
    ids = publish_all(settings, [(phone(200 + i), f"auth-{i}") for i in range(20)])
    # Given a worker with a wrong token
    wrong = start_worker(procs, settings, "wrong", TWILIO_AUTH_TOKEN="not-the-token-at-all")
    wait_for(lambda: _breaker(pipeline.client, namespace).get("state") == "open", 10, "open")
    time.sleep(2)  # probes fail too
    assert pipeline.dead_letters() == []
    assert fake_twilio.messages == []
    wrong.signal(15)
    wait_for(lambda: not wrong.alive(), 15, "the wrong worker to stop")
    # When it restarts with the right token, Then every message goes out, once
    start_worker(procs, settings, "right")
    wait_for(lambda: len(fake_twilio.messages) == 20 and pipeline.drained(), 30, "all sent")
    assert {m.body for m in fake_twilio.messages} == set(ids)
    assert pipeline.dead_letters() == []


def test_one_number_failing_alone_follows_the_seed_rule_and_others_are_not_delayed(
    redis_url: str, namespace: str, tmp_path: Path, fake_twilio: Any, procs: Processes
) -> None:
    settings = _settings(redis_url, namespace, tmp_path, fake_twilio, backoff_base_seconds=0.3)
    pipeline = Pipeline(redis_client(redis_url), namespace)
    lonely = phone(9100)
    fake_twilio.script(lonely, [], {"status": 503})
    publish_all(settings, [(lonely, "alone"), *[(phone(i), f"ok-{i}") for i in range(100)]])
    start_worker(procs, settings, "worker")
    wait_for(lambda: len(pipeline.dead_letters()) == 1 and pipeline.drained(), 20, "settled")
    [dead] = pipeline.dead_letters()
    assert (dead["to"], dead["reason"], dead["attempts"]) == (lonely, "retries_exhausted", "3")
    assert len(fake_twilio.messages) == 100
    assert _breaker(pipeline.client, namespace).get("opened_total", "0") == "0"


@pytest.mark.timeout(60)
def test_three_workers_keep_one_send_rate(
    redis_url: str, namespace: str, tmp_path: Path, fake_twilio: Any, procs: Processes
) -> None:
    rate = 20
    settings = _settings(redis_url, namespace, tmp_path, fake_twilio, send_rate=rate)
    publish_all(settings, [(phone(i), f"rated-{i}") for i in range(400)])
    for n in range(3):
        start_worker(procs, settings, f"worker-{n}")
    wait_for(lambda: len(fake_twilio.requests) >= 240, 30, "12 s of sends")
    stamps = sorted(r.at for r in fake_twilio.requests)
    first = stamps[0]
    window = [s for s in stamps if s < first + 10]
    busiest = max(sum(1 for s in stamps if start <= s < start + 1) for start in stamps)
    # Then no 1 s window saw more than rate + burst, and 10 s averaged at least 90 % of it
    assert busiest <= rate + rate, busiest
    assert len(window) / 10 >= 0.9 * rate, len(window)
    record_figure("send-rate", "requests in the busiest 1 s window (rate 20, burst 20)", busiest)
    record_figure("send-rate", "average over 10 s", len(window) / 10, "req/s")


@pytest.mark.timeout(60)
def test_messages_that_expire_during_an_outage_are_never_sent(
    redis_url: str, namespace: str, tmp_path: Path, fake_twilio: Any, procs: Processes
) -> None:
    settings = _settings(redis_url, namespace, tmp_path, fake_twilio, message_ttl_seconds=2)
    pipeline = Pipeline(redis_client(redis_url), namespace)
    fake_twilio.start_outage({"status": 503, "code": 20503}, seconds=5)
    ids = publish_all(settings, [(phone(300 + i), f"otp-{i}") for i in range(10)])
    start_worker(procs, settings, "worker")
    wait_for(lambda: len(pipeline.dead_letters()) == 10, 30, "10 expired dead letters")
    assert {d["reason"] for d in pipeline.dead_letters()} == {"expired"}
    assert {d["id"] for d in pipeline.dead_letters()} == set(ids.values())
    assert fake_twilio.messages == []


def test_a_message_created_but_answered_after_the_timeout_reaches_the_phone_once(
    redis_url: str, namespace: str, tmp_path: Path, fake_twilio: Any, procs: Processes
) -> None:
    settings = _settings(
        redis_url,
        namespace,
        tmp_path,
        fake_twilio,
        twilio_timeout_seconds=0.5,
        backoff_base_seconds=0.2,
    )
    pipeline = Pipeline(redis_client(redis_url), namespace)
    numbers = [phone(400 + i) for i in range(3)]
    for number in numbers:
        fake_twilio.script(number, [{"delay": 1.5}])  # created at once, answered in 1.5 s
    ids = publish_all(settings, [(n, f"late-{n}") for n in numbers])
    start_worker(procs, settings, "worker")
    wait_for(lambda: pipeline.drained(), 20, "settled")
    assert pipeline.dead_letters() == []
    for number in numbers:
        [sms] = fake_twilio.messages_to(number)
        marker = pipeline.client.get(pipeline.keys.sent(ids[f"late-{number}"]))
        assert marker == sms.sid.encode()
