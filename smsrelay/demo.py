"""`smsrelay demo`: the whole pipeline on this machine against the built-in fake Twilio, narrated.

It uses the Redis (and, when reachable, the Postgres) of the usual settings, in a namespace of
its own, so it never touches real data; Twilio is the fake, spoken to by the real SDK.
"""

from __future__ import annotations

import asyncio
import secrets
import sys
import time
from dataclasses import dataclass
from typing import cast

import psycopg
import redis

from smsrelay.logging import configure as configure_logging
from smsrelay.logging import mask_phone, mask_phones
from smsrelay.producers.publish import Producer
from smsrelay.runner import worker_process
from smsrelay.settings import Settings
from smsrelay.streams.clients import sync_client, text
from smsrelay.streams.keys import ShardKeys
from smsrelay.testing.fake_twilio import FakeTwilioThread

_SID = "AC" + "d" * 32


@dataclass
class Story:
    label: str
    to: str
    body: str
    message_id: str = ""


def say(line: str = "") -> None:
    print(line, flush=True)


def _postgres_reachable(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=2):
            return True
    except psycopg.Error:
        return False


def run_demo(base: Settings) -> int:
    try:
        sync_client(base, timeout_s=2).ping()
    except redis.RedisError as exc:
        say(f"smsrelay demo needs Redis at {base.redis_url} ({exc}).")
        say("Start one with: redis-server --daemonize yes   (or set SMSRELAY_REDIS_URL)")
        return 1
    namespace = f"demo-{secrets.token_hex(3)}"
    # The narration is the demo's output; the worker's JSON log lines would drown it.
    configure_logging("console", "error")
    with FakeTwilioThread() as fake:
        settings = Settings.load(
            **{
                **base.model_dump(exclude={"admin_token", "twilio_auth_token"}),
                "namespace": namespace,
                "twilio_account_sid": _SID,
                "twilio_auth_token": "demo-token",
                "twilio_from": "+15005550006",
                "twilio_messaging_service_sid": None,
                "twilio_base_url": fake.url,
                "backoff_base_seconds": 0.5,
                "backoff_jitter": 0,
                "metrics_port": 0,
                "spool_dir": base.spool_dir / namespace,
                "log_level": "warning",
                "log_format": "console",
            }
        )
        mirror = _postgres_reachable(settings.database_url)
        say("smsrelay demo: the whole pipeline on this machine")
        say(f"  fake Twilio    {fake.url} (Twilio's Messages API, called through the real SDK)")
        say(f"  Redis          {_hide_password(settings.redis_url)}, namespace '{namespace}'")
        say(
            f"  request stream {ShardKeys(namespace).requests}, "
            f"dead letters {ShardKeys(namespace).dead}"
        )
        postgres = (
            "mirroring dead letters into failed_sms"
            if mirror
            else "not reachable: dead letters stay in the stream only"
        )
        say(f"  Postgres       {postgres}")
        say()
        return asyncio.run(_story(settings, fake, mirror))


async def _story(settings: Settings, fake: FakeTwilioThread, mirror: bool) -> int:
    worker = worker_process(settings, mirror=mirror)
    task = asyncio.create_task(worker.run())
    flaky = "+14155550142"
    fake.script(flaky, [{"status": 503}])
    busy = "+14155550199"
    stories = [
        Story("booking confirmation", "+14155552671", "Hi John, we've received your booking"),
        Story("booking confirmation", "+447911123456", "Hi Amira, your table is booked for 8pm"),
        Story("Twilio answers 503 once: retried after 0.5 s", flaky, "Your code is 381 992"),
        Story("Twilio refuses: invalid number (21211)", "+15005550001", "This cannot arrive"),
        *[Story(f"reminder {n} to one phone", busy, f"Reminder {n} of 6") for n in range(1, 6)],
    ]
    sixth = Story("the 6th message to that phone within the hour", busy, "Reminder 6 of 6")
    say("1. A backend service publishes (Producer.publish: one Lua round trip, never raises):")
    with Producer(settings) as producer:
        for story in stories:
            result = producer.publish(story.to, story.body, kind="demo")
            story.message_id = str(result.message_id)
            say(
                f"   {result.status:<8} {story.message_id[:8]}  {mask_phone(story.to):<14} "
                f"{story.label}"
            )
        dup = producer.publish(
            "+14155552671", "Hi John, we've received your booking", idempotency_key="booking-42"
        )
        again = producer.publish(
            "+14155552671", "Hi John, we've received your booking", idempotency_key="booking-42"
        )
        say(f"   {dup.status:<8} {str(dup.message_id)[:8]}  idempotency key booking-42")
        say(f"   {again.status:<8} {str(again.message_id)[:8]}  the same key again: no second SMS")
    stories.append(Story("idempotent booking", "+14155552671", "", str(dup.message_id)))
    say()
    say(
        "2. The worker takes them from the consumer group, rate-limits (5 per phone per hour), "
        "sends, retries, dead-letters:"
    )
    await _wait_for_outcomes(settings, [s.message_id for s in stories], within_s=30)
    with Producer(settings) as producer:
        sixth.message_id = str(producer.publish(sixth.to, sixth.body, kind="demo").message_id)
    stories.append(sixth)
    outcomes = await _wait_for_outcomes(settings, [s.message_id for s in stories], within_s=30)
    for story in stories:
        outcome = mask_phones(outcomes.get(story.message_id, "still in progress"))
        say(f"   {story.message_id[:8]}  {mask_phone(story.to):<14} {story.label}")
        say(f"   {'':8}  -> {outcome}")
    if mirror:
        await asyncio.sleep(1.0)  # the mirror runs on its own timer
    worker.stop()
    await task
    say()
    say(
        f"3. The fake Twilio received {len(fake.requests)} requests and accepted "
        f"{len(fake.messages)} messages."
    )
    if mirror:
        rows = _failed_rows(settings, [s.message_id for s in stories])
        say(
            f"   failed_sms in Postgres holds {len(rows)} of this demo's dead letters: "
            + ", ".join(f"{r[0][:8]} {r[1]}" for r in rows)
        )
    say()
    say("Where to look next:")
    say(f"   SMSRELAY_NAMESPACE={settings.namespace} smsrelay status")
    say(f"   redis-cli XRANGE '{ShardKeys(settings.namespace).dead}' - +")
    say(
        "   SMSRELAY_ADMIN_TOKEN=... smsrelay admin, then: curl -H 'Authorization: Bearer ...' "
        "localhost:8080/api/admin/retry-failed-sms"
    )
    say("   a worker's metrics: smsrelay worker, then curl localhost:9464/metrics")
    return 0


async def _wait_for_outcomes(settings: Settings, ids: list[str], within_s: float) -> dict[str, str]:
    client = sync_client(settings)
    keys = ShardKeys(settings.namespace)
    outcomes: dict[str, str] = {}
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        for message_id in ids:
            sid = cast(bytes | None, client.get(keys.sent(message_id)))
            if sid:
                outcomes[message_id] = f"sent, Twilio SID {text(sid)}"
        dead = cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrange(keys.dead))
        for _, fields in dead:
            message_id = text(fields.get(b"id"))
            outcomes[message_id] = (
                f"dead-lettered: {text(fields.get(b'reason'))} "
                f"({text(fields.get(b'error'))}, attempts "
                f"{text(fields.get(b'attempts'))})"
            )
        if all(m in outcomes for m in ids):
            break
        await asyncio.sleep(0.1)
    return outcomes


def _failed_rows(settings: Settings, ids: list[str]) -> list[tuple[str, str]]:
    try:
        with psycopg.connect(settings.database_url, connect_timeout=2) as conn:
            rows = conn.execute(
                "SELECT id::text, reason FROM failed_sms WHERE id::text = ANY(%s)", (ids,)
            ).fetchall()
    except psycopg.Error as exc:
        print(f"   (could not read failed_sms: {exc})", file=sys.stderr)
        return []
    return [(str(r[0]), str(r[1])) for r in rows]


def _hide_password(url: str) -> str:
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.split('@', 1)[1]}"
