"""Lanes through a running worker and the fake Twilio: a login code overtakes a bulk backlog,
bulk is never starved by normal, and a retried login code keeps its lane."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from smsrelay import Producer
from smsrelay.schemas.entry import Priority
from smsrelay.settings import Settings
from smsrelay.streams.keys import ShardKeys
from tests.conftest import make_settings
from tests.support.clients import redis_client
from tests.support.wait import wait_until
from tests.support.worker import running_worker


def phones(prefix: int, count: int) -> list[str]:
    """Distinct valid numbers (the per-phone rate limit must not get in the way)."""
    return [f"+1415{prefix:03d}{n:04d}" for n in range(count)]


def publish_many(settings: Settings, numbers: list[str], priority: Priority) -> None:
    with Producer(settings, background_flush=False) as producer:
        for number in numbers:
            assert producer.publish(number, f"{priority} news", priority=priority).ok


def lane_settings(redis_url: str, namespace: str, tmp_path: Path, url: str) -> Settings:
    return make_settings(
        redis_url, namespace, tmp_path, url, worker_concurrency=8, worker_batch_size=8
    )


async def test_a_login_code_waits_only_for_the_sends_in_flight(
    redis_url: str, namespace: str, tmp_path: Path, fake_twilio: Any
) -> None:
    settings = lane_settings(redis_url, namespace, tmp_path, fake_twilio.url)
    fake_twilio.set_latency(0.02)
    publish_many(settings, phones(300, 800), "bulk")
    otp = "+14157770001"
    async with running_worker(settings):
        await wait_until(lambda: len(fake_twilio.requests) >= 40, what="bulk under way")
        before = len(fake_twilio.requests)
        publish_many(settings, [otp], "high")
        await wait_until(
            lambda: any(r.to == otp for r in fake_twilio.requests), what="the login code sent"
        )
        position = [r.to for r in fake_twilio.requests].index(otp)
    # Only the sends that held a slot when it was published went out before it.
    assert position - before <= settings.worker_concurrency, (position, before)
    backlog = redis_client(redis_url).xlen(ShardKeys(namespace).requests_bulk)
    assert backlog > 400  # it overtook a backlog, it did not arrive after it


async def test_bulk_gets_its_tenth_while_normal_has_a_backlog(
    redis_url: str, namespace: str, tmp_path: Path, fake_twilio: Any
) -> None:
    settings = lane_settings(redis_url, namespace, tmp_path, fake_twilio.url)
    fake_twilio.set_latency(0.005)
    normal, bulk = phones(400, 400), phones(500, 400)
    publish_many(settings, normal, "normal")
    publish_many(settings, bulk, "bulk")
    async with running_worker(settings):
        await wait_until(lambda: len(fake_twilio.requests) >= 200, what="200 sends")
    first = [r.to for r in fake_twilio.requests][:200]
    from_bulk = len(set(first) & set(bulk))
    assert 16 <= from_bulk <= 40, from_bulk  # one in ten, give or take a read's rounding


async def test_a_retried_login_code_keeps_its_lane(
    redis_url: str, namespace: str, tmp_path: Path, fake_twilio: Any
) -> None:
    settings = lane_settings(redis_url, namespace, tmp_path, fake_twilio.url)
    fake_twilio.set_latency(0.01)
    otp = "+14157770002"
    fake_twilio.script(otp, [{"status": 503}])  # the first attempt fails, transiently
    publish_many(settings, phones(600, 1500), "bulk")
    publish_many(settings, [otp], "high")
    async with running_worker(settings):
        await wait_until(lambda: len(fake_twilio.messages_to(otp)) == 1, what="the retry sent")
        tries = [n for n, r in enumerate(fake_twilio.requests) if r.to == otp]
    assert len(tries) == 2
    # The retry went back on the high lane: it overtook the bulk backlog again (a retry put on
    # the bulk lane would wait for 1,500 messages).
    assert tries[1] - tries[0] < 200, tries
