"""`smsrelay demo`: the whole pipeline on this machine against the built-in fake Twilio, narrated.

It uses the Redis (and, when reachable, the Postgres) of the usual settings, in a namespace of
its own, so it never touches real data; Twilio is the fake, spoken to by the real SDK. When
SMSRELAY_DATABASE_URL names a server's maintenance database (`postgres`, the default), the demo
mirrors into a database of its own, `smsrelay_demo` (created when missing), never into that
one. At the end it deletes its namespace's Redis keys (`--keep` keeps them).
"""

from __future__ import annotations

import asyncio
import re
import secrets
import sys
import time
from dataclasses import dataclass
from typing import cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
import psycopg.conninfo
import redis
from psycopg import sql

from smsrelay.logging import configure as configure_logging
from smsrelay.logging import mask_phone, mask_phones
from smsrelay.producers.publish import Producer
from smsrelay.runner import worker_process
from smsrelay.settings import Settings
from smsrelay.streams.clients import sync_client, text
from smsrelay.streams.keys import ShardKeys
from smsrelay.testing.fake_twilio import FakeTwilioThread

_SID = "AC" + "d" * 32
DEMO_DATABASE = "smsrelay_demo"
# Databases a server keeps for itself: the demo writes into none of them.
_MAINTENANCE = frozenset({"", "postgres", "template0", "template1"})


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


def with_database(url: str, name: str) -> str:
    """`url` naming database `name` instead (a `dbname` option in the query goes too)."""
    parts = urlsplit(url)
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k != "dbname"])
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, query, parts.fragment))


def demo_database(url: str) -> tuple[str | None, str]:
    """The database URL the demo mirrors into (None: none) and the narration's words for it.

    The URL's own database, unless it is a maintenance database: then `smsrelay_demo`,
    created on that server when missing.
    """
    try:
        named = psycopg.conninfo.conninfo_to_dict(url).get("dbname") or ""
    except psycopg.Error:
        return None, "SMSRELAY_DATABASE_URL cannot be parsed: dead letters stay in the stream only"
    if named not in _MAINTENANCE:
        if not _postgres_reachable(url):
            return None, "not reachable: dead letters stay in the stream only"
        return url, f"database '{named}' (SMSRELAY_DATABASE_URL)"
    own = with_database(url, DEMO_DATABASE)
    why = (
        f"SMSRELAY_DATABASE_URL names the maintenance database '{named}'"
        if named
        else "SMSRELAY_DATABASE_URL names no database"
    )
    if _postgres_reachable(own):
        return own, f"database '{DEMO_DATABASE}' of the demo's own ({why})"
    try:
        with psycopg.connect(url, connect_timeout=2, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DEMO_DATABASE)))
    except psycopg.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return None, (
            f"not used: {why}, and the database '{DEMO_DATABASE}' could not be created "
            f"({first}); dead letters stay in the stream only"
        )
    return own, f"database '{DEMO_DATABASE}', created now for the demo ({why})"


def delete_namespace_keys(client: redis.Redis, namespace: str) -> int:
    """Delete every key of `namespace` (its shards' `{ns:N}` and its fleet's `{ns}`)."""
    escaped = re.sub(r"([\[\]*?\\])", r"\\\1", namespace)
    deleted = 0
    for pattern in ("{" + escaped + ":*", "{" + escaped + "}:*"):
        batch: list[bytes] = []
        for key in client.scan_iter(match=pattern, count=1000):
            batch.append(cast(bytes, key))
            if len(batch) >= 500:
                deleted += client.unlink(*batch)
                batch = []
        if batch:
            deleted += client.unlink(*batch)
    return deleted


def run_demo(base: Settings, keep: bool = False) -> int:
    try:
        sync_client(base, timeout_s=2).ping()
    except redis.RedisError as exc:
        say(f"smsrelay demo needs Redis at {base.redis_url} ({exc}).")
        say("Start one with: redis-server --daemonize yes   (or set SMSRELAY_REDIS_URL)")
        return 1
    namespace = f"demo-{secrets.token_hex(3)}"
    database_url, database_words = demo_database(base.database_url)
    # The narration is the demo's output; the worker's JSON log lines would drown it.
    configure_logging("console", "error")
    with FakeTwilioThread() as fake:
        settings = Settings.load(
            **{
                **base.model_dump(exclude={"admin_token", "twilio_auth_token"}),
                "namespace": namespace,
                "database_url": database_url or base.database_url,
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
        mirror = database_url is not None
        say("smsrelay demo: the whole pipeline on this machine")
        say(f"  fake Twilio    {fake.url} (Twilio's Messages API, called through the real SDK)")
        say(f"  Redis          {_hide_password(settings.redis_url)}, namespace '{namespace}'")
        say(
            f"  request stream {ShardKeys(namespace).requests}, "
            f"dead letters {ShardKeys(namespace).dead}"
        )
        postgres = (
            f"{_hide_password(settings.database_url)}: mirroring dead letters into failed_sms "
            f"of the {database_words}"
            if mirror
            else database_words
        )
        say(f"  Postgres       {postgres}")
        say()
        try:
            return asyncio.run(_story(settings, fake, mirror, keep))
        finally:
            if not keep:
                client = sync_client(settings, timeout_s=5)
                try:
                    delete_namespace_keys(client, namespace)
                except redis.RedisError as exc:
                    say(f"(could not delete the demo's keys of namespace '{namespace}': {exc})")
                finally:
                    client.close()


async def _story(settings: Settings, fake: FakeTwilioThread, mirror: bool, keep: bool) -> int:
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
    if keep:
        say(f"   SMSRELAY_NAMESPACE={settings.namespace} smsrelay status")
        say(f"   redis-cli XRANGE '{ShardKeys(settings.namespace).dead}' - +")
    else:
        say(
            f"   the demo's Redis keys (namespace '{settings.namespace}') are deleted now; "
            "`smsrelay demo --keep` keeps them to look at"
        )
    if mirror:
        say(
            f"   its failed_sms rows stay: SMSRELAY_DATABASE_URL="
            f"{_hide_password(settings.database_url)} SMSRELAY_NAMESPACE={settings.namespace} "
            "smsrelay dlq list"
        )
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
