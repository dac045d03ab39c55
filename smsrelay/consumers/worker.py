"""The worker process: a reader feeding up to C concurrent handlers, plus upkeep loops.

Upkeep loops (each logs and survives its own failures, and stops on the stop event):
- claimer: XAUTOCLAIM entries idle longer than SMSRELAY_CLAIM_IDLE_SECONDS (dead workers'),
  dead-lettering as `poison` those delivered more than SMSRELAY_MAX_DELIVERIES times;
- heartbeat: keeps this worker's in-flight entries fresh, so a slow provider is never taken
  over by another worker and sent twice;
- mover: puts delayed messages (retry backoffs, deferred rate-limited ones) back when due;
- extra upkeep tasks given by the caller (the dead-letter mirror).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import redis.asyncio as aioredis

from smsrelay import clock
from smsrelay.consumers.handler import MessageHandler, PendingDecision
from smsrelay.consumers.metrics import WorkerMetrics
from smsrelay.consumers.outage import RETRY_MAX_DELAY_S, TRANSIENT_REDIS_ERRORS, OutageLog
from smsrelay.consumers.providers.base import Provider
from smsrelay.consumers.streams import StreamOps
from smsrelay.keys import ShardKeys
from smsrelay.logging import get_logger
from smsrelay.redis_conn import READ_BLOCK_MS, text, worker_client
from smsrelay.settings import Settings

log = get_logger("smsrelay.worker")

ProviderFactory = Callable[[Settings], Provider]
Upkeep = Callable[[asyncio.Event], Awaitable[None]]


@dataclass(frozen=True)
class InFlight:
    shard: int
    entry_id: str


def consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"


def _default_provider(settings: Settings) -> Provider:
    from smsrelay.consumers.providers.twilio import TwilioProvider

    return TwilioProvider(settings)


class Worker:
    def __init__(self, settings: Settings, *, provider_factory: ProviderFactory | None = None,
                 metrics: WorkerMetrics | None = None, name: str | None = None,
                 upkeep: Sequence[Upkeep] = ()) -> None:
        self.settings = settings
        self.name = name or consumer_name()
        self.metrics = metrics or WorkerMetrics()
        self.stop_event = asyncio.Event()
        # The heartbeat outlives the stop event: in-flight sends keep their claim while draining.
        self._drained = asyncio.Event()
        self._provider_factory = provider_factory or _default_provider
        self._upkeep = list(upkeep)
        self._shards = [ShardKeys(settings.namespace, s) for s in range(settings.shards)]
        self._inflight: dict[InFlight, asyncio.Task[None]] = {}
        # Entries holding a send slot: an entry gives its slot back as soon as the provider
        # answered, while its settling (sent marker + XACK) finishes outside the slot.
        self._holding: set[InFlight] = set()
        self._slot_freed = asyncio.Event()
        self._outage = OutageLog("redis")
        self._redis: aioredis.Redis | None = None
        self._reader_redis: aioredis.Redis | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def stop(self) -> None:
        if not self.stop_event.is_set():
            log.info("worker.stopping", consumer=self.name, in_flight=len(self._inflight))
            self.stop_event.set()
            self._slot_freed.set()

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)

    async def run(self) -> None:
        s = self.settings
        pool = aioredis.ConnectionPool.from_url(
            s.redis_url, max_connections=s.worker_concurrency + 16,
            socket_timeout=10.0, socket_connect_timeout=5.0, health_check_interval=30)
        self._redis = aioredis.Redis(connection_pool=pool)
        # Blocking reads get their own connection so they never wait behind a script call.
        self._reader_redis = worker_client(s.redis_url)
        ops = StreamOps(self._redis, s)
        provider = self._provider_factory(s)
        handler = MessageHandler(ops, provider, s, self.metrics, self.stop_event)
        log.info("worker.started", consumer=self.name, shards=s.shards,
                 concurrency=s.worker_concurrency, namespace=s.namespace)
        loops: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("claimer", lambda: self._claim_loop(ops, handler)),
            ("heartbeat", lambda: self._heartbeat_loop(ops)),
            ("mover", lambda: self._mover_loop(ops)),
        ]
        upkeep = [asyncio.create_task(self._guard(name, loop), name=name) for name, loop in loops]
        upkeep += [asyncio.create_task(self._guard(f"upkeep-{i}", partial(u, self.stop_event)))
                   for i, u in enumerate(self._upkeep)]
        try:
            await self._read_loop(ops, handler)
        finally:
            await self._drain()
            self._drained.set()
            for task in upkeep:
                task.cancel()
            await asyncio.gather(*upkeep, return_exceptions=True)
            await self._forget_consumer(ops)
            await provider.aclose()
            await self._reader_redis.aclose()
            await self._redis.aclose()
            await pool.aclose()
            log.info("worker.stopped", consumer=self.name)

    async def _guard(self, name: str, loop: Callable[[], Awaitable[None]]) -> None:
        """Run an upkeep loop; if it fails, log it and start it again after a pause."""
        while not self._drained.is_set():
            try:
                await loop()
                return
            except asyncio.CancelledError:
                raise
            except TRANSIENT_REDIS_ERRORS as exc:
                self._outage.failed(exc)
            except Exception:
                log.exception("worker.upkeep_failed", loop=name)
            await self._sleep(1.0)

    async def _sleep(self, seconds: float) -> bool:
        """Sleep unless stopping; True when the stop event cut the sleep short."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop_event.wait(), timeout=seconds)
            return True
        return False

    # -- reading ---------------------------------------------------------------------------
    async def _read_loop(self, ops: StreamOps, handler: MessageHandler) -> None:
        assert self._reader_redis is not None
        groups_ready = False
        backoff = 0.1
        while not self.stop_event.is_set():
            free = self._free_slots()
            if free <= 0:
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            try:
                if not groups_ready:
                    for shard in self._shards:
                        await ops.ensure_group(shard.shard)
                    groups_ready = True
                reply = await self._reader_redis.xreadgroup(
                    ops.group, self.name, {k.requests: ">" for k in self._shards},
                    count=min(free, self.settings.worker_batch_size), block=READ_BLOCK_MS)
            except aioredis.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                log.warning("worker.group_missing", error=str(exc))
                groups_ready = False
                continue
            except TRANSIENT_REDIS_ERRORS as exc:
                self._outage.failed(exc)
                await self._sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            self._outage.recovered()
            backoff = 0.1
            for stream, entries in reply or []:
                shard_no = self._shard_of_stream(text(stream))
                batch = [(text(entry_id), fields) for entry_id, fields in entries]
                # One round trip runs begin.lua for the whole batch; its handlers wait for
                # it while the reader reads on.
                pending = handler.decide_in_background(shard_no, batch)
                for (entry_id, fields), share in zip(batch, pending, strict=True):
                    self._dispatch(handler, shard_no, entry_id, fields, pending=share)

    def _free_slots(self) -> int:
        # Settling entries (slot given back) are bounded too, so an outage that stalls
        # settling cannot let the worker read without limit.
        c = self.settings.worker_concurrency
        return min(c - len(self._holding), 2 * c - len(self._inflight))

    def _release(self, key: InFlight) -> None:
        if key in self._holding:
            self._holding.discard(key)
            self._slot_freed.set()

    def _shard_of_stream(self, stream: str) -> int:
        for keys in self._shards:
            if keys.requests == stream:
                return keys.shard
        raise ValueError(f"unexpected stream {stream}")

    def _dispatch(self, handler: MessageHandler, shard: int, entry_id: str, fields: Any,
                  deliveries: int | None = None, pending: PendingDecision | None = None
                  ) -> None:
        key = InFlight(shard, entry_id)
        if key in self._inflight:
            return  # already being handled here (claimed back while still running)
        if deliveries is not None and deliveries > self.settings.max_deliveries:
            coro = handler.poison(shard, entry_id, fields, deliveries)
        else:
            coro = handler.handle(shard, entry_id, fields, release=partial(self._release, key),
                                  pending=pending)
        self._holding.add(key)
        task = asyncio.create_task(self._run_one(coro, key))
        self._inflight[key] = task

    async def _run_one(self, coro: Awaitable[None], key: InFlight) -> None:
        try:
            await coro
        except TRANSIENT_REDIS_ERRORS as exc:
            # The entry stays pending; it is claimed again once Redis is back.
            self._outage.failed(exc)
        except asyncio.CancelledError:
            raise
        except Exception:
            # A bug or an unexpected reply: the entry stays pending and is delivered again
            # later; after SMSRELAY_MAX_DELIVERIES it is dead-lettered as poison.
            log.exception("sms.processing_failed", entry_id=key.entry_id, shard=key.shard)
        finally:
            self._inflight.pop(key, None)
            self._holding.discard(key)
            self._slot_freed.set()

    # -- upkeep ----------------------------------------------------------------------------
    async def _claim_loop(self, ops: StreamOps, handler: MessageHandler) -> None:
        # A dead worker's entries are recovered at most `interval` after they turn idle; one
        # XAUTOCLAIM per shard per second is cheap, and keeps recovery within idle + 1 s.
        interval = min(max(self.settings.claim_idle_seconds / 10, 0.05), 1.0)
        min_idle_ms = int(self.settings.claim_idle_seconds * 1000)
        while not await self._sleep(interval):
            if self._claims_held_back():
                continue
            asked_redis = False
            for keys in self._shards:
                free = self._free_slots()
                if free <= 0:
                    break
                await self._claim_shard(ops, handler, keys, min_idle_ms, free)
                asked_redis = True
            if asked_redis:  # (with every slot busy nothing was asked: no news of Redis)
                self._outage.recovered()

    def _claims_held_back(self) -> bool:
        """True during a Redis outage and for one idle period (plus a retry) after it.

        While Redis is away no worker can refresh its in-flight entries, so afterwards every
        one of them looks idle, including sends that a live worker has finished and is about
        to record (its sent marker waits for Redis, retried every RETRY_MAX_DELAY_S at most).
        Claiming them at once would send them again; waiting lets their owners record and
        refresh them first. Entries of workers that really died are claimed after the wait.
        """
        if self._outage.down:
            return True
        ended = self._outage.ended_at
        hold_s = self.settings.claim_idle_seconds + RETRY_MAX_DELAY_S
        return ended is not None and clock.monotonic() - ended < hold_s

    async def _claim_shard(self, ops: StreamOps, handler: MessageHandler, keys: ShardKeys,
                           min_idle_ms: int, free: int) -> None:
        """Claim idle entries page by page until none is left or no slot is free."""
        assert self._redis is not None
        cursor: Any = "0-0"
        while free > 0 and not self.stop_event.is_set():
            reply = await self._redis.xautoclaim(keys.requests, ops.group, self.name,
                                                 min_idle_ms, start_id=cursor,
                                                 count=min(free, 100))
            cursor = reply[0]
            free -= await self._take_claimed(ops, handler, keys, reply[1],
                                             reply[2] if len(reply) > 2 else [])
            if text(cursor) == "0-0":
                return

    async def _take_claimed(self, ops: StreamOps, handler: MessageHandler, keys: ShardKeys,
                            claimed: list[Any], deleted: list[Any]) -> int:
        assert self._redis is not None
        if deleted:
            # Their payloads were trimmed or deleted while pending: Redis dropped them from
            # the PEL. Nothing can be sent; say so loudly.
            log.error("worker.claimed_deleted_entries", shard=keys.shard, count=len(deleted),
                      entry_ids=[text(d) for d in deleted[:20]])
        if not claimed:
            return 0
        async with self._redis.pipeline(transaction=False) as pipe:
            for entry_id, _ in claimed:
                pipe.xpending_range(keys.requests, ops.group, min=entry_id, max=entry_id,
                                    count=1)
            pending = await pipe.execute()
        for (entry_id, fields), info in zip(claimed, pending, strict=True):
            deliveries = int(info[0]["times_delivered"]) if info else 1
            log.info("worker.claimed", shard=keys.shard, entry_id=text(entry_id),
                     deliveries=deliveries)
            self._dispatch(handler, keys.shard, text(entry_id), fields, deliveries)
        return len(claimed)

    async def _heartbeat_loop(self, ops: StreamOps) -> None:
        assert self._redis is not None
        interval = min(max(self.settings.claim_idle_seconds / 3, 0.05), 10.0)
        while not self._drained.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), timeout=interval)
            by_shard: dict[int, list[Any]] = {}
            for key in list(self._inflight):
                by_shard.setdefault(key.shard, []).append(key.entry_id)
            for shard, ids in by_shard.items():
                # XCLAIM with idle 0 and JUSTID resets the idle time without counting a delivery.
                await self._redis.xclaim(ops.keys(shard).requests, ops.group, self.name, 0,
                                         ids, justid=True)

    async def _mover_loop(self, ops: StreamOps) -> None:
        while not self.stop_event.is_set():
            ops.delay_scheduled.clear()
            wait_s = 1.0  # other workers' delays are seen within this
            for keys in self._shards:
                moved, next_ms = await ops.move_due(keys.shard)
                if moved:
                    log.debug("worker.delayed_moved", shard=keys.shard, moved=moved)
                if next_ms >= 0:
                    wait_s = min(wait_s, next_ms / 1000)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ops.delay_scheduled.wait(), timeout=max(wait_s, 0.002))

    # -- shutdown --------------------------------------------------------------------------
    async def _drain(self) -> None:
        if not self._inflight:
            return
        grace = self.settings.shutdown_grace_seconds
        log.info("worker.draining", in_flight=len(self._inflight), grace_seconds=grace)
        _, unfinished = await asyncio.wait(list(self._inflight.values()), timeout=grace)
        for task in unfinished:
            task.cancel()
        if unfinished:
            # Their entries stay pending and another worker claims them after the idle time.
            log.warning("worker.handed_back", count=len(unfinished))
            await asyncio.gather(*unfinished, return_exceptions=True)

    async def _forget_consumer(self, ops: StreamOps) -> None:
        """Remove this consumer from the group if it holds nothing, so XINFO stays tidy."""
        assert self._redis is not None
        with contextlib.suppress(*TRANSIENT_REDIS_ERRORS, aioredis.ResponseError):
            for keys in self._shards:
                info = await self._redis.xpending_range(keys.requests, ops.group, min="-",
                                                        max="+", count=1,
                                                        consumername=self.name)
                if not info:
                    await self._redis.xgroup_delconsumer(keys.requests, ops.group, self.name)
