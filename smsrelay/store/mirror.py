"""The mirror: dead letters and outcomes from Redis into `public.failed_sms`.

A consumer group `mirror` reads `{ns:shard}:dead` and `{ns:shard}:outcomes` of every shard.
An entry is acknowledged only after its row is committed, so a Postgres outage just leaves
entries pending: they are read again (own pending first, then idle ones of dead mirrors)
once Postgres is back. Outcome entries are deleted once mirrored; dead letters stay in their
stream SMSRELAY_DEAD_LETTER_RETENTION_DAYS after they were mirrored, then the mirror trims
them (never one it has not settled: the trim stops at its group's oldest pending entry).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Sequence
from typing import Literal

import psycopg
import redis.asyncio as aioredis

from smsrelay import clock
from smsrelay.logging import get_logger
from smsrelay.outage import Outages, is_outage
from smsrelay.schemas.dead_letter import DeadLetter
from smsrelay.schemas.receipts import StatusCallback
from smsrelay.settings import Settings
from smsrelay.store import failed_sms, sent_sms
from smsrelay.store.db import Connection, Database, DatabaseUnavailable
from smsrelay.store.failed_sms import Outcome, StreamRef
from smsrelay.store.receipts import BodyFetcher, Effects, apply_receipts, apply_unmatched
from smsrelay.store.sent_sms import SentRow
from smsrelay.streams.clients import reader_client, text
from smsrelay.streams.group import ConsumerGroup, Delivery, consumer_name
from smsrelay.streams.keys import MIRROR_GROUP, FleetKeys, all_shards, shard_keys
from smsrelay.streams.queue import Queue
from smsrelay.streams.trim import trim_settled
from smsrelay.streams.wire import RawFields

log = get_logger("smsrelay.mirror")

BLOCK_MS = 500  # short, so a stop request is honoured within half a second
MAX_BACKOFF_S = 5.0
TRIM_INTERVAL_S = 60.0
FLEET_SHARD = -1  # (the receipts stream is the namespace's, not a shard's)
ORDER = {"dead": 0, "outcome": 1, "receipt": 2}
# Bad data in one entry (not an outage): the entry is logged and acknowledged (a dead letter
# still sits in its stream), so it cannot block the ones behind it.
ENTRY_ERRORS: tuple[type[BaseException], ...] = (psycopg.DataError, psycopg.IntegrityError)


class Mirror:
    def __init__(
        self,
        settings: Settings,
        *,
        name: str | None = None,
        batch_size: int = 100,
        outages: Outages | None = None,
        fetch_body: BodyFetcher | None = None,
    ) -> None:
        """`fetch_body`: an undelivered message's body from the provider (for its record)."""
        self.settings = settings
        self.name = name or consumer_name("mirror-")
        self.batch_size = batch_size
        self.outages = outages or Outages()
        self.fetch_body = fetch_body
        self.db = Database(settings.database_url, outage=self.outages.postgres)
        self.kinds: dict[str, Literal["dead", "outcome", "receipt"]] = {}
        self.streams: dict[str, int] = {}
        for keys in all_shards(settings.namespace, settings.shards):
            self.kinds[keys.dead], self.streams[keys.dead] = "dead", keys.shard
            self.kinds[keys.outcomes], self.streams[keys.outcomes] = "outcome", keys.shard
        receipts = FleetKeys(settings.namespace).receipts
        self.kinds[receipts], self.streams[receipts] = "receipt", FLEET_SHARD
        self._own_pending_first = True
        self._claim_interval_s = min(max(settings.claim_idle_seconds / 2, 0.1), 5.0)
        self._next_claim = 0.0
        self._next_trim = 0.0
        self._queue: Queue | None = None  # for the receipts' trace events

    def group(self, client: aioredis.Redis) -> ConsumerGroup:
        return ConsumerGroup(client, client, MIRROR_GROUP, self.streams, self.name)

    async def run(self, stop: asyncio.Event) -> None:
        """Mirror until `stop` is set; outages are waited out, never raised."""
        client = reader_client(self.settings)
        group = self.group(client)
        backoff = 0.2
        ready = False
        log.info("mirror.started", consumer=self.name, shards=self.settings.shards)
        try:
            while not stop.is_set():
                try:
                    if not ready:
                        await group.ensure()
                        ready = True
                    await self.step(group)
                    await self._trim_when_due(client)
                except DatabaseUnavailable:
                    pass  # logged once per outage by the Database
                except aioredis.ResponseError as exc:
                    if is_outage(exc):
                        self.outages.redis_failed(exc)
                    elif "NOGROUP" in str(exc):
                        ready = False
                    else:
                        log.exception("mirror.redis_error")
                except Exception as exc:
                    if is_outage(exc):
                        self.outages.redis_failed(exc)
                    else:
                        log.exception("mirror.failed")
                else:
                    self.outages.redis.recovered()
                    backoff = 0.2
                    continue
                # Whatever was read stays pending on this consumer: read it again first.
                self._own_pending_first = True
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
        finally:
            try:
                # Tidying up must not hold a stopping worker back when Redis is away.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(group.forget(), timeout=2)
            finally:  # (even when the tidying is cancelled)
                await client.aclose()
            log.info("mirror.stopped", consumer=self.name)

    async def drain(self) -> int:
        """Mirror everything readable now (tests, `smsrelay mirror --once`)."""
        client = reader_client(self.settings)
        try:
            group = self.group(client)
            await group.ensure()
            total = 0
            while True:
                had_pending = self._own_pending_first
                settled = await self.step(group, block=False)
                total += settled
                if not settled and not had_pending:
                    return total
        finally:
            await client.aclose()

    async def step(self, group: ConsumerGroup, *, block: bool = True) -> int:
        """One batch: take entries, write their rows, acknowledge. Returns how many settled.

        With `block`, waits up to BLOCK_MS for new entries when there are none.
        """
        entries = await self._claim(group)
        if not entries:
            pending = self._own_pending_first
            entries = await group.read(
                self.batch_size, BLOCK_MS if block and not pending else None, own_pending=pending
            )
            if pending and not entries:
                self._own_pending_first = False
        if entries:
            await self._settle(group, entries)
        return len(entries)

    async def trim(self, client: aioredis.Redis) -> int:
        """Trim dead letters mirrored more than the retention ago; returns how many went."""
        retention_ms = int(self.settings.dead_letter_retention_days * 86_400_000)
        removed = 0
        for keys in all_shards(self.settings.namespace, self.settings.shards):
            removed += await trim_settled(client, keys.dead, MIRROR_GROUP, retention_ms)
        if removed:
            log.info(
                "mirror.trimmed",
                dead_letters=removed,
                retention_days=self.settings.dead_letter_retention_days,
            )
        return removed

    async def _trim_when_due(self, client: aioredis.Redis) -> None:
        if clock.monotonic() >= self._next_trim:
            self._next_trim = clock.monotonic() + TRIM_INTERVAL_S
            await self.trim(client)
            forgotten = await self.forget_old_sent()
            if forgotten:
                log.info(
                    "mirror.sent_sms_forgotten",
                    rows=forgotten,
                    retention_days=self.settings.sent_sms_retention_days,
                )

    async def _claim(self, group: ConsumerGroup) -> list[Delivery]:
        """Entries left pending by a mirror that died (idle past SMSRELAY_CLAIM_IDLE_SECONDS)."""
        if clock.monotonic() < self._next_claim:
            return []
        self._next_claim = clock.monotonic() + self._claim_interval_s
        min_idle_ms = int(self.settings.claim_idle_seconds * 1000)
        entries: list[Delivery] = []
        for stream in self.streams:
            page = await group.claim(stream, min_idle_ms, self.batch_size, with_counts=False)
            entries += page.claimed
        return entries

    # -- writing ---------------------------------------------------------------------------
    async def _settle(self, group: ConsumerGroup, entries: Sequence[Delivery]) -> None:
        # Dead letters first: an outcome read in the same batch resolves a row they create.
        work = sorted(entries, key=lambda e: ORDER[self.kinds[e.stream]])
        superseded, effects = await self._write([e for e in work if e.fields])
        await group.ack([e for e in work if self.kinds[e.stream] == "dead"], delete=False)
        await group.ack([e for e in work if self.kinds[e.stream] != "dead"], delete=True)
        if superseded:
            async with group.client.pipeline(transaction=False) as pipe:
                for ref in superseded:
                    pipe.xdel(shard_keys(self.settings.namespace, ref.shard).dead, ref.entry_id)
                await pipe.execute()
        if effects.trace or effects.delivery_counts:
            await self._tell_redis(group.client, effects)
        log.debug("mirror.settled", entries=len(entries), superseded=len(superseded))

    async def _write(self, entries: Sequence[Delivery]) -> tuple[list[StreamRef], Effects]:
        if not entries:
            return [], Effects()
        async with self.db.connection() as conn:
            try:
                async with conn.transaction():
                    return await self._apply(conn, entries)
            except ENTRY_ERRORS:
                pass
            # Some entry holds data Postgres refuses: apply one by one to find it.
            refs: list[StreamRef] = []
            effects = Effects()
            for entry in entries:
                try:
                    async with conn.transaction():
                        more, done = await self._apply(conn, [entry])
                except ENTRY_ERRORS as exc:
                    log.error(
                        "mirror.entry_rejected",
                        stream=entry.stream,
                        entry_id=entry.entry_id,
                        error=str(exc).splitlines()[0],
                    )
                    continue
                refs += more
                effects.extend(done)
            return refs, effects

    async def _apply(
        self, conn: Connection, entries: Sequence[Delivery]
    ) -> tuple[list[StreamRef], Effects]:
        """Dead letters one by one; sent outcomes in one statement; then receipts."""
        ns, shards = self.settings.namespace, self.settings.shards
        refs: list[StreamRef] = []
        sent_rows: list[SentRow] = []
        receipts: list[StatusCallback] = []
        for entry in entries:
            kind = self.kinds[entry.stream]
            if kind == "dead":
                letter = DeadLetter.from_stream(entry.entry_id, entry.fields)
                refs += await failed_sms.upsert_dead_letter(conn, letter, ns, entry.shard)
            elif kind == "outcome":
                outcome = parse_outcome(entry.fields)
                if outcome is None:
                    log.error(
                        "mirror.outcome_unreadable", stream=entry.stream, entry_id=entry.entry_id
                    )
                    continue
                if outcome.sent is not None:
                    sent_rows.append(outcome.sent)
                if outcome.resolves:
                    refs += await failed_sms.apply_outcome(conn, outcome)
            else:
                receipt = parse_receipt(entry.fields)
                if receipt is not None:
                    receipts.append(receipt)
        waiting = await sent_sms.upsert_sent(conn, ns, sent_rows)
        effects = await apply_unmatched(conn, ns, shards, waiting, self.fetch_body)
        effects.extend(await apply_receipts(conn, ns, shards, receipts, self.fetch_body))
        return refs, effects

    async def _tell_redis(self, client: aioredis.Redis, effects: Effects) -> None:
        """The receipts' trace events and counts (after the commit; best effort)."""
        if self._queue is None or self._queue.redis is not client:
            self._queue = Queue(self.settings, client)
        with contextlib.suppress(Exception):
            await self._queue.add_traces(effects.trace)
            counts = FleetKeys(self.settings.namespace).delivery_counts
            async with client.pipeline(transaction=False) as pipe:
                for status, n in effects.delivery_counts.items():
                    pipe.hincrby(counts, status, n)
                await pipe.execute()

    async def forget_old_sent(self) -> int:
        """Delete sent_sms rows past SMSRELAY_SENT_SMS_RETENTION_DAYS (a batch at a time)."""
        async with self.db.connection() as conn:
            return await sent_sms.delete_older_than(conn, self.settings.sent_sms_retention_days)


def parse_outcome(raw: RawFields) -> Outcome | None:
    """A `sent` outcome (every send: its sent_sms row), or a `resolved` one (written before
    sent_sms existed: a replay's record to resolve)."""
    fields = {text(k): text(v) for k, v in raw.items()}
    if fields.get("status") not in ("sent", "resolved"):
        return None
    try:
        message_id = uuid.UUID(fields.get("id", ""))
    except ValueError:
        return None
    when = fields.get("sent_at") or fields.get("resolved_at") or ""
    try:
        resolved_at = clock.parse_iso(when)
    except ValueError:
        resolved_at = clock.now()
    attempts = fields.get("attempts", "0")
    attempts_n = max(0, min(int(attempts), 1000)) if attempts.isdigit() else 0
    sid = fields.get("message_sid", "")[:64]
    phone = fields.get("phone", "")[:64]
    sent = (
        SentRow(message_id, phone, sid, fields.get("kind") or None, max(attempts_n, 1), resolved_at)
        if fields.get("status") == "sent" and phone and sid
        else None
    )
    return Outcome(
        message_id=message_id,
        message_sid=sid,
        resolved_at=resolved_at,
        replay_of=fields.get("replay_of") or None,
        attempts=attempts_n,
        sent=sent,
        resolves=fields.get("status") == "resolved" or "replay_of" in fields,
    )


def parse_receipt(raw: RawFields) -> StatusCallback | None:
    fields = {text(k): text(v) for k, v in raw.items()}
    try:
        received_at = clock.parse_iso(fields.get("received_at", ""))
    except ValueError:
        received_at = clock.now()
    return StatusCallback.from_form(fields, received_at)


async def run_mirror(
    settings: Settings,
    stop: asyncio.Event,
    outages: Outages | None = None,
    fetch_body: BodyFetcher | None = None,
) -> None:
    """The worker's upkeep task (and `smsrelay mirror`): returns once `stop` is set."""
    await Mirror(settings, outages=outages, fetch_body=fetch_body).run(stop)
