"""The mirror: dead letters and replay outcomes from Redis into `public.failed_sms`.

A consumer group `mirror` reads `{ns:shard}:dead` and `{ns:shard}:outcomes` of every shard.
An entry is acknowledged only after its row is committed, so a Postgres outage just leaves
entries pending: they are read again (own pending first, then XAUTOCLAIM of dead mirrors'
entries) once Postgres is back. Dead-letter entries stay in their stream (the admin's delete
removes them); outcome entries are deleted once mirrored.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import psycopg
import redis.asyncio as aioredis

from smsrelay import clock
from smsrelay.consumers.outage import TRANSIENT_REDIS_ERRORS, OutageLog
from smsrelay.keys import MIRROR_GROUP, ShardKeys, all_shards
from smsrelay.logging import get_logger
from smsrelay.redis_conn import text, worker_client
from smsrelay.schemas.dead_letter import DeadLetter
from smsrelay.settings import Settings
from smsrelay.store import failed_sms
from smsrelay.store.db import Connection, Database, DatabaseUnavailable
from smsrelay.store.failed_sms import Outcome, StreamRef

log = get_logger("smsrelay.mirror")

BLOCK_MS = 500  # short, so a stop request is honoured within half a second
MAX_BACKOFF_S = 5.0
# Bad data in one entry (not an outage): the entry is logged and acknowledged (a dead letter
# still sits in its stream), so it cannot block the ones behind it.
ENTRY_ERRORS: tuple[type[BaseException], ...] = (psycopg.DataError, psycopg.IntegrityError)


@dataclass(frozen=True)
class Source:
    kind: Literal["dead", "outcome"]
    shard: int


@dataclass(frozen=True)
class Entry:
    stream: str
    source: Source
    entry_id: str
    fields: dict[bytes, bytes]


class Mirror:
    def __init__(self, settings: Settings, *, name: str | None = None,
                 batch_size: int = 100) -> None:
        self.settings = settings
        self.name = name or (f"mirror-{socket.gethostname()}-{os.getpid()}-"
                             f"{secrets.token_hex(2)}")
        self.batch_size = batch_size
        self.db = Database(settings.database_url)
        self.sources: dict[str, Source] = {}
        for keys in all_shards(settings.namespace, settings.shards):
            self.sources[keys.dead] = Source("dead", keys.shard)
            self.sources[keys.outcomes] = Source("outcome", keys.shard)
        self._own_pending_first = True
        self._claim_interval_s = min(max(settings.claim_idle_seconds / 2, 0.1), 5.0)
        self._next_claim = 0.0
        self._redis_outage = OutageLog("redis")

    async def run(self, stop: asyncio.Event) -> None:
        """Mirror until `stop` is set; outages are waited out, never raised."""
        client = worker_client(self.settings.redis_url)
        backoff = 0.2
        groups_ready = False
        log.info("mirror.started", consumer=self.name, shards=self.settings.shards)
        try:
            while not stop.is_set():
                try:
                    if not groups_ready:
                        await self.ensure_groups(client)
                        groups_ready = True
                    await self.step(client)
                except DatabaseUnavailable:
                    pass  # logged once per outage by the Database
                except TRANSIENT_REDIS_ERRORS as exc:
                    self._redis_outage.failed(exc)
                except aioredis.ResponseError as exc:
                    if "NOGROUP" not in str(exc):
                        log.exception("mirror.redis_error")
                    groups_ready = False
                except Exception:
                    log.exception("mirror.failed")
                else:
                    self._redis_outage.recovered()
                    backoff = 0.2
                    continue
                # Whatever was read stays pending on this consumer: read it again first.
                self._own_pending_first = True
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
        finally:
            # Tidying up must not hold a stopping worker back when Redis is away.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._forget_consumer(client), timeout=2)
            await client.aclose()
            log.info("mirror.stopped", consumer=self.name)

    async def ensure_groups(self, client: aioredis.Redis) -> None:
        for stream in self.sources:
            try:
                await client.xgroup_create(stream, MIRROR_GROUP, id="0", mkstream=True)
            except aioredis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def step(self, client: aioredis.Redis, *, block: bool = True) -> int:
        """One batch: take entries, write their rows, acknowledge. Returns how many settled.

        With `block`, waits up to BLOCK_MS for new entries when there are none.
        """
        entries = await self._claim(client)
        if not entries:
            entries = await self._read(client, block)
        if entries:
            await self._settle(client, entries)
        return len(entries)

    async def drain(self, client: aioredis.Redis) -> int:
        """Mirror everything readable now (tests, `smsrelay mirror --once`)."""
        await self.ensure_groups(client)
        total = 0
        while True:
            had_pending = self._own_pending_first
            settled = await self.step(client, block=False)
            total += settled
            if not settled and not had_pending:
                return total

    # -- reading ---------------------------------------------------------------------------
    async def _read(self, client: aioredis.Redis, block: bool) -> list[Entry]:
        pending = self._own_pending_first
        streams: Any = {stream: "0" if pending else ">" for stream in self.sources}
        reply = await client.xreadgroup(MIRROR_GROUP, self.name, streams,
                                        count=self.batch_size,
                                        block=BLOCK_MS if block and not pending else None)
        entries = [Entry(text(stream), self.sources[text(stream)], text(entry_id), fields)
                   for stream, batch in reply or [] for entry_id, fields in batch]
        if pending and not entries:
            self._own_pending_first = False
        return entries

    async def _claim(self, client: aioredis.Redis) -> list[Entry]:
        """Entries left pending by a mirror that died (idle past SMSRELAY_CLAIM_IDLE_SECONDS)."""
        if clock.monotonic() < self._next_claim:
            return []
        self._next_claim = clock.monotonic() + self._claim_interval_s
        min_idle_ms = int(self.settings.claim_idle_seconds * 1000)
        entries: list[Entry] = []
        for stream, source in self.sources.items():
            reply = await client.xautoclaim(stream, MIRROR_GROUP, self.name, min_idle_ms,
                                            start_id="0-0", count=self.batch_size)
            entries += [Entry(stream, source, text(entry_id), fields)
                        for entry_id, fields in reply[1]]
        return entries

    # -- writing ---------------------------------------------------------------------------
    async def _settle(self, client: aioredis.Redis, entries: Sequence[Entry]) -> None:
        # Dead letters first: an outcome read in the same batch resolves a row they create.
        work = sorted(entries, key=lambda e: e.source.kind != "dead")
        superseded = await self._write([e for e in work if e.fields])
        async with client.pipeline(transaction=False) as pipe:
            for entry in work:
                pipe.xack(entry.stream, MIRROR_GROUP, entry.entry_id)
                if entry.source.kind == "outcome":
                    pipe.xdel(entry.stream, entry.entry_id)
            for ref in superseded:
                pipe.xdel(ShardKeys(self.settings.namespace, ref.shard).dead, ref.entry_id)
            await pipe.execute()
        log.debug("mirror.settled", entries=len(entries), superseded=len(superseded))

    async def _write(self, entries: Sequence[Entry]) -> list[StreamRef]:
        if not entries:
            return []
        async with self.db.connection() as conn:
            try:
                async with conn.transaction():
                    return [ref for e in entries for ref in await self._apply(conn, e)]
            except ENTRY_ERRORS:
                pass
            # Some entry holds data Postgres refuses: apply one by one to find it.
            refs: list[StreamRef] = []
            for entry in entries:
                try:
                    async with conn.transaction():
                        refs += await self._apply(conn, entry)
                except ENTRY_ERRORS as exc:
                    log.error("mirror.entry_rejected", stream=entry.stream,
                              entry_id=entry.entry_id, error=str(exc).splitlines()[0])
            return refs

    async def _apply(self, conn: Connection, entry: Entry) -> list[StreamRef]:
        if entry.source.kind == "dead":
            letter = DeadLetter.from_stream(entry.entry_id, entry.fields)
            return await failed_sms.upsert_dead_letter(conn, letter, self.settings.namespace,
                                                       entry.source.shard)
        outcome = parse_outcome(entry.fields)
        if outcome is None:
            log.error("mirror.outcome_unreadable", stream=entry.stream, entry_id=entry.entry_id)
            return []
        return await failed_sms.apply_outcome(conn, outcome)

    async def _forget_consumer(self, client: aioredis.Redis) -> None:
        """Leave the group tidy on a clean stop, unless entries still wait on this consumer."""
        for stream in self.sources:
            held = await client.xpending_range(stream, MIRROR_GROUP, min="-", max="+", count=1,
                                               consumername=self.name)
            if held:
                return
        for stream in self.sources:
            await client.xgroup_delconsumer(stream, MIRROR_GROUP, self.name)


def parse_outcome(raw: dict[bytes, bytes]) -> Outcome | None:
    fields = {text(k): text(v) for k, v in raw.items()}
    if fields.get("status") != "resolved":
        return None
    try:
        message_id = uuid.UUID(fields.get("id", ""))
    except ValueError:
        return None
    try:
        resolved_at = clock.parse_iso(fields.get("resolved_at", ""))
    except ValueError:
        resolved_at = clock.now()
    return Outcome(message_id=message_id, message_sid=fields.get("message_sid", ""),
                   resolved_at=resolved_at, replay_of=fields.get("replay_of") or None)


async def run_mirror(settings: Settings, stop: asyncio.Event) -> None:
    """The worker's upkeep task (and `smsrelay mirror`): returns once `stop` is set."""
    await Mirror(settings).run(stop)
