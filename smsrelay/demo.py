"""`smsrelay demo`: the whole pipeline on this machine against the built-in fake Twilio, narrated.

It uses the Redis (and, when reachable, the Postgres) of the usual settings, in a namespace of
its own, so it never touches real data; Twilio is the fake, spoken to by the real SDK. When
SMSRELAY_DATABASE_URL names a server's maintenance database (`postgres`, the default), the demo
mirrors into a database of its own, `smsrelay_demo` (created when missing), never into that
one. At the end it deletes its namespace's Redis keys (`--keep` keeps them).

Its last step shows delivery receipts: the admin service (when the admin extra is installed)
runs on a free loopback port with a token of the demo's own, takes the fake Twilio's signed
status callbacks, and answers each message's trace (`GET /api/admin/messages/{id}`).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import re
import secrets
import socket
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast
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
from smsrelay.streams.keys import FleetKeys, ShardKeys
from smsrelay.testing.fake_twilio import FakeTwilioThread, Receipts

_SID = "AC" + "d" * 32
CALLBACK_PATH = "/twilio/status-callback"
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
        with sync_client(base, timeout_s=2) as client:
            client.ping()
    except redis.RedisError as exc:
        say(f"smsrelay demo needs Redis at {base.redis_url} ({exc}).")
        say("Start one with: redis-server --daemonize yes   (or set SMSRELAY_REDIS_URL)")
        return 1
    namespace = f"demo-{secrets.token_hex(3)}"
    database_url, database_words = demo_database(base.database_url)
    # The narration is the demo's output; the worker's JSON log lines would drown it.
    configure_logging("console", "error")
    receipts_port = _free_port() if _admin_installed() else None
    with FakeTwilioThread() as fake:
        settings = Settings.load(
            **{
                **base.model_dump(exclude={"admin_token", "admin_tokens", "twilio_auth_token"}),
                # The admin service takes the fake Twilio's signed status callbacks (step 4).
                "admin_token": secrets.token_urlsafe(24),
                "twilio_status_callback": f"http://127.0.0.1:{receipts_port}{CALLBACK_PATH}"
                if receipts_port
                else None,
                "namespace": namespace,
                "database_url": database_url or base.database_url,
                "twilio_account_sid": _SID,
                "twilio_auth_token": "demo-token",
                "twilio_from": "+15005550006",
                "twilio_messaging_service_sid": None,
                "twilio_base_url": fake.url,
                "backoff_base_seconds": 0.5,
                # The provider outage of the last step: a probe every second or so, not every 10 s.
                "breaker_cooldown_seconds": 1,
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
            with _serve_admin(settings, receipts_port) as admin_url:
                return asyncio.run(_story(settings, fake, mirror, keep, admin_url))
        finally:
            if not keep:
                client = sync_client(settings, timeout_s=5)
                try:
                    delete_namespace_keys(client, namespace)
                except redis.RedisError as exc:
                    say(f"(could not delete the demo's keys of namespace '{namespace}': {exc})")
                finally:
                    client.close()


async def _story(
    settings: Settings, fake: FakeTwilioThread, mirror: bool, keep: bool, admin_url: str | None
) -> int:
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
    if admin_url is not None:
        await _receipts(settings, fake, mirror, admin_url)
        say()
    await _provider_outage(settings, fake, step=5 if admin_url is not None else 4)
    say()
    worker.stop()
    await task
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


async def _receipts(
    settings: Settings, fake: FakeTwilioThread, mirror: bool, admin_url: str
) -> None:
    """Step 4: one SMS delivered, one undelivered (30003), told by signed status callbacks."""
    on, off = "+14155552672", "+14155550143"
    fake.script_receipts(off, Receipts.ending("undelivered", 30003))
    say(
        "4. Delivery receipts: Twilio's 201 means accepted. The carrier's verdict comes later, "
        "in status callbacks"
    )
    say(
        "   signed with the auth token (X-Twilio-Signature), which the admin service checks at "
        "POST /twilio/status-callback:"
    )
    stories = [
        Story("its phone is on: delivered", on, "Your order has shipped"),
        Story("its handset is off: undelivered (Twilio error 30003)", off, "Your order shipped"),
    ]
    with Producer(settings) as producer:
        for story in stories:
            story.message_id = str(producer.publish(story.to, story.body).message_id)
            say(f"   queued   {story.message_id[:8]}  {mask_phone(story.to):<14} {story.label}")
    finals = await _wait_for_receipts(settings, [s.message_id for s in stories], mirror, 10)
    with contextlib.suppress(TimeoutError):  # (what was not posted by then is not counted)
        await asyncio.to_thread(fake.wait_for_callbacks, 5.0)
    callbacks = [c for c in fake.callbacks() if c.to in (on, off)]
    answered = sum(1 for c in callbacks if c.delivered)
    say(
        f"   the fake Twilio posted {len(callbacks)} signed callbacks "
        f"({', '.join(c.status for c in callbacks)}); the admin answered {answered} with 2xx"
    )
    if not mirror:
        say(
            "   (Postgres is not reachable: the receipts wait in Redis for a mirror, and the "
            "traces stop at 'sent')"
        )
    for story in stories:
        say()
        trace = _get_trace(admin_url, settings, story.message_id)
        if trace is None:
            say(f"   {story.message_id[:8]}  (its trace could not be read)")
            continue
        say(
            f"   {story.message_id[:8]}  {mask_phone(story.to)}: {trace['status']}, "
            f"SID {trace.get('messageSid') or '-'} (smsrelay trace {story.message_id})"
        )
        for event in trace["events"]:
            at = str(event["at"])[11:23]
            say(f"     {at}  {event['event']:<14} {mask_phones(str(event['detail']))}".rstrip())
        if story.message_id in finals and trace["status"] == "undelivered":
            say(
                f"     -> failed_sms: reason {trace['reason']}; an admin's retry sends a new SMS "
                "(a new SID)"
            )


async def _wait_for_receipts(
    settings: Settings, ids: list[str], mirror: bool, within_s: float
) -> set[str]:
    """The ids whose trace reached a final receipt (with a mirror; without one, the sends)."""
    client = sync_client(settings)
    keys = ShardKeys(settings.namespace)
    wanted = ("|delivered|", "|undelivered|", "|failed|") if mirror else ("|sent|",)
    done: set[str] = set()
    deadline = time.monotonic() + within_s
    try:
        while time.monotonic() < deadline and len(done) < len(ids):
            for message_id in ids:
                raw = cast(list[bytes], client.lrange(keys.trace(message_id), 0, -1))
                if any(w in text(item) for item in raw for w in wanted):
                    done.add(message_id)
            await asyncio.sleep(0.1)
    finally:
        client.close()
    return done


async def _provider_outage(settings: Settings, fake: FakeTwilioThread, step: int) -> None:
    """Twilio answers 503 to everything for 3 s: the fleet's breaker opens, the messages wait
    (no attempt counted, none dead-lettered), one probe per cooldown, and all go once it ends."""
    say(f"{step}. A bad day at the provider: Twilio answers 503 to every request for 3 s.")
    say(
        f"   After {settings.breaker_threshold} failures in a row the breaker every worker "
        "shares opens: messages wait instead of being dead-lettered, one probe goes per cooldown:"
    )
    stories = [
        Story(f"reminder {n}", f"+1415555{n:04d}", f"Your appointment is at {n - 300} pm")
        for n in range(301, 307)
    ]
    key = FleetKeys(settings.namespace).breaker
    fake.start_outage({"status": 503, "code": 20503}, seconds=3)
    started = time.monotonic()
    with Producer(settings) as producer:
        for story in stories:
            story.message_id = str(producer.publish(story.to, story.body, kind="demo").message_id)
    ids = [story.message_id for story in stories]
    seen: tuple[str, str] = ("closed", "")
    outcomes: dict[str, str] = {}
    client = sync_client(settings)
    try:
        while time.monotonic() < started + 30:
            fields = cast(dict[bytes, bytes], client.hgetall(key))
            breaker = {text(k): text(v) for k, v in fields.items()}
            now = (breaker.get("state", "closed"), breaker.get("cooldown_ms", ""))
            if now != seen:
                at = f"   {time.monotonic() - started:5.1f} s  "
                if now[0] == "open" and seen[0] != "open":
                    say(f"{at}breaker OPEN ({mask_phones(breaker.get('last_error', ''))})")
                elif now[0] == "open":
                    say(f"{at}the probe failed too: next one in {int(now[1]) / 1000:g} s")
                else:
                    say(f"{at}breaker closed: a probe went through, the waiting messages follow")
                seen = now
            outcomes = _outcomes(client, settings, ids)  # on this step's one connection
            if seen[0] == "closed" and all(m in outcomes for m in ids):
                break
            await asyncio.sleep(0.05)
    finally:
        client.close()
    mine = [outcomes[m] for m in ids if m in outcomes]
    sent = sum(1 for outcome in mine if outcome.startswith("sent"))
    dead = len(mine) - sent
    say(
        f"   {sent} of {len(ids)} sent, {dead} dead-lettered; Twilio saw "
        f"{fake.outage()['requests']} requests during the 3 s outage"
    )


def _get_trace(admin_url: str, settings: Settings, message_id: str) -> dict[str, Any] | None:
    """GET /api/admin/messages/{id} of the demo's admin service (its `data`)."""
    assert settings.admin_token is not None
    request = urllib.request.Request(  # noqa: S310 (the demo's own loopback admin)
        f"{admin_url}/api/admin/messages/{message_id}",
        headers={"Authorization": f"Bearer {settings.admin_token.get_secret_value()}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return cast(dict[str, Any], json.load(response)["data"])
    except (OSError, ValueError, KeyError):
        return None


def _admin_installed() -> bool:
    """The receipts need the admin service (`pip install 'smsrelay[admin]'`)."""
    return all(importlib.util.find_spec(m) is not None for m in ("fastapi", "uvicorn"))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def _serve_admin(settings: Settings, port: int | None) -> Iterator[str | None]:
    """The admin service on a loopback port in a thread of its own (None: not installed)."""
    if port is None:
        yield None
        return
    import uvicorn

    from smsrelay.admin.app import create_app

    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings),
            host="127.0.0.1",
            port=port,
            log_config=None,
            log_level="error",
            access_log=False,
            lifespan="on",
        )
    )
    thread = threading.Thread(target=server.run, daemon=True, name="demo-admin")
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}" if server.started else None
    finally:
        server.should_exit = True
        thread.join(timeout=10)


async def _wait_for_outcomes(settings: Settings, ids: list[str], within_s: float) -> dict[str, str]:
    with sync_client(settings) as client:
        deadline = time.monotonic() + within_s
        while True:  # at least one look, also with within_s=0
            outcomes = _outcomes(client, settings, ids)
            if all(m in outcomes for m in ids) or time.monotonic() >= deadline:
                return outcomes
            await asyncio.sleep(0.1)


def _outcomes(client: redis.Redis, settings: Settings, ids: list[str]) -> dict[str, str]:
    """What became of each message so far: its sent marker, or its dead letter."""
    keys = ShardKeys(settings.namespace)
    outcomes: dict[str, str] = {}
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
