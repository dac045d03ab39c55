"""The worker process: a reader feeding up to C concurrent handlers, plus upkeep loops.

Upkeep loops (each logs and survives its own failures, and stops on the stop event):
- claimer: takes over entries idle longer than SMSRELAY_CLAIM_IDLE_SECONDS (dead workers'),
  dead-lettering as `poison` those delivered more than SMSRELAY_MAX_DELIVERIES times;
- heartbeat: keeps this worker's in-flight entries fresh, so a slow provider is never taken
  over by another worker and sent twice;
- mover: puts delayed messages (retry backoffs, deferred rate-limited ones) back when due;
- extra upkeep tasks given by the caller (the dead-letter mirror).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable, Sequence
from functools import partial

from smsrelay import clock
from smsrelay.consumers.breaker import ProviderBreaker
from smsrelay.consumers.handler import MessageHandler, PendingDecision
from smsrelay.consumers.metrics import WorkerMetrics
from smsrelay.consumers.providers.base import Provider
from smsrelay.logging import get_logger
from smsrelay.outage import RETRY_MAX_DELAY_S, Outages, is_outage
from smsrelay.settings import Settings
from smsrelay.streams.clients import READ_BLOCK_MS, WorkerClients, worker_clients
from smsrelay.streams.fleet import Fleet
from smsrelay.streams.group import Delivery, consumer_name
from smsrelay.streams.policy import check_eviction_policy
from smsrelay.streams.queue import Queue

log = get_logger("smsrelay.worker")

ProviderFactory = Callable[[Settings], Provider]
Upkeep = Callable[[asyncio.Event], Awaitable[None]]
UPKEEP_STOP_S = 2.0
BURST_BLOCK_MS = 100  # a burst run looks for new entries this long before it checks if done
RATED_BLOCK_MS = 50  # with SMSRELAY_SEND_RATE: tokens are taken before a read, kept fresh
BREAKER_POLL_S = 0.2  # how stale a worker's view of the fleet's breaker may be


def _default_provider(settings: Settings) -> Provider:
    from smsrelay.consumers.providers.twilio import TwilioProvider

    return TwilioProvider(settings)


class Worker:
    def __init__(
        self,
        settings: Settings,
        *,
        provider_factory: ProviderFactory | None = None,
        metrics: WorkerMetrics | None = None,
        name: str | None = None,
        upkeep: Sequence[Upkeep] = (),
        outages: Outages | None = None,
    ) -> None:
        self.settings = settings
        self.name = name or consumer_name()
        self.metrics = metrics or WorkerMetrics()
        self.outages = outages or Outages()
        self.metrics.watch(self.outages)
        self.stop_event = asyncio.Event()
        # The heartbeat outlives the stop event: in-flight sends keep their claim while draining.
        self._drained = asyncio.Event()
        self._provider_factory = provider_factory or _default_provider
        self._upkeep = list(upkeep)
        self._inflight: dict[Delivery, asyncio.Task[None]] = {}
        # Entries holding a send slot: an entry gives its slot back as soon as the provider
        # answered, while its settling (sent marker + XACK) finishes outside the slot.
        self._holding: set[Delivery] = set()
        self._slot_freed = asyncio.Event()
        self._probing = False  # this worker holds the open breaker's one probe
        self._probe_lease_ms = int((settings.twilio_timeout_seconds + 5) * 1000)

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

    async def run(self, *, burst: bool = False) -> None:
        """Work until stopped; with `burst`, stop once the streams are empty and nothing is
        in flight or waiting to be retried (tests, batch jobs)."""
        s = self.settings
        clients = worker_clients(s)
        queue = Queue(s, clients.commands, clients.reader, consumer=self.name)
        provider = self._provider_factory(s)
        self.fleet = Fleet(s, clients.commands)
        self.breaker = ProviderBreaker(self.fleet, queue, self.name, self.metrics, self.outages)
        handler = MessageHandler(queue, provider, s, self.metrics, self.outages, self.breaker)
        log.info(
            "worker.started",
            consumer=self.name,
            shards=s.shards,
            concurrency=s.worker_concurrency,
            namespace=s.namespace,
            burst=burst,
        )
        loops: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("claimer", lambda: self._claim_loop(queue, handler)),
            ("heartbeat", lambda: self._heartbeat_loop(queue)),
            ("mover", lambda: self._mover_loop(queue)),
        ]
        if self.breaker.enabled:
            loops.append(("breaker", self._breaker_loop))
        upkeep = [asyncio.create_task(self._guard(name, loop), name=name) for name, loop in loops]
        upkeep += [
            asyncio.create_task(self._guard(f"upkeep-{i}", partial(u, self.stop_event)))
            for i, u in enumerate(self._upkeep)
        ]
        try:
            await self._read_loop(queue, handler, clients, burst)
        finally:
            await self._drain()
            self._drained.set()
            # Upkeep loops end on the stop event within a second; those that do not are cut.
            _, unfinished = await asyncio.wait(upkeep, timeout=UPKEEP_STOP_S)
            for task in unfinished:
                task.cancel()
            await asyncio.gather(*upkeep, return_exceptions=True)
            with contextlib.suppress(Exception):  # tidying up is not worth a stuck stop
                async with asyncio.timeout(2):
                    await queue.group.forget()
            await provider.aclose()
            await clients.aclose()
            log.info("worker.stopped", consumer=self.name)

    async def _guard(self, name: str, loop: Callable[[], Awaitable[None]]) -> None:
        """Run an upkeep loop; if it fails, log it and start it again after a pause."""
        while not self._drained.is_set():
            try:
                await loop()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if is_outage(exc):
                    self.outages.redis_failed(exc)
                else:
                    log.exception("worker.upkeep_failed", loop=name)
            await self._sleep(1.0)

    async def _sleep(self, seconds: float) -> bool:
        """Sleep unless stopping; True when the stop event cut the sleep short."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop_event.wait(), timeout=seconds)
            return True
        return False

    # -- reading ---------------------------------------------------------------------------
    async def _read_loop(
        self, queue: Queue, handler: MessageHandler, clients: WorkerClients, burst: bool
    ) -> None:
        ready = False
        backoff = 0.1
        block_ms = BURST_BLOCK_MS if burst else READ_BLOCK_MS
        if self.settings.send_rate > 0:
            # Tokens are taken before the read: a short block keeps them fresh.
            block_ms = min(block_ms, RATED_BLOCK_MS)
        while not self.stop_event.is_set():
            free = self._free_slots()
            if free <= 0:
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            try:
                if not ready:
                    await check_eviction_policy(clients.commands)
                    await queue.group.ensure()
                    ready = True
                count, probe = await self._allowance(free)
                if count == 0:
                    continue
                batch = await queue.read(count, block_ms)
                if probe and not batch:
                    self._probing = False
                    await self.fleet.give_back_probe(self.name)
                if burst and not batch and not self._inflight and await self._all_done(queue):
                    log.info("worker.burst_done", consumer=self.name)
                    return
            except Exception as exc:
                if "NOGROUP" in str(exc) or "UNBLOCKED" in str(exc):
                    # A stream deleted, or moved to another cluster node (its slot migrated)
                    # while a read was blocked on it: create what is missing, read again.
                    log.warning("worker.group_missing", error=str(exc))
                    ready = False
                    continue
                if not is_outage(exc):
                    raise
                self.outages.redis_failed(exc)
                await self._sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            self.outages.redis.recovered()
            backoff = 0.1
            if batch:
                # One round trip runs begin.lua for the whole batch; its handlers wait for
                # it while the reader reads on.
                shares = handler.decide_in_background(batch)
                for delivery, share in zip(batch, shares, strict=True):
                    self._dispatch(handler, delivery, pending=share, probe=probe)

    async def _allowance(self, free: int) -> tuple[int, bool]:
        """How many entries this worker may read now (0: it waited instead), and whether the
        one it may read is the open breaker's probe. Waiting here is not an attempt."""
        view = self.breaker.view
        if self.breaker.enabled and view.open:
            if view.until_probe_ms > 0 or self._probing:
                await self._sleep(min(max(view.until_probe_ms, 20) / 1000, BREAKER_POLL_S))
                return 0, False
            if await self.fleet.try_probe(self.name, self._probe_lease_ms):
                self._probing = True
                return 1, True
            await self._sleep(BREAKER_POLL_S)
            return 0, False
        if view.pause_ms > 0:  # the provider asked for a pause (429 Retry-After)
            await self._sleep(min(view.pause_ms / 1000, BREAKER_POLL_S))
            return 0, False
        count = min(free, self.settings.worker_batch_size)
        if self.settings.send_rate > 0:
            granted, wait_ms = await self.fleet.take_sends(count)
            if granted == 0:
                self.metrics.send_rate_waits.inc()
                await self._sleep(max(wait_ms, 1) / 1000)
                return 0, False
            count = granted
        return count, False

    async def _all_done(self, queue: Queue) -> bool:
        """Every request stream and delay set of the namespace is empty."""
        async with queue.redis.pipeline(transaction=False) as pipe:
            for keys in queue.shards:
                for stream in keys.lanes:
                    pipe.xlen(stream)
                pipe.zcard(keys.delayed)
            counts = await pipe.execute()
        return not any(counts)

    def _free_slots(self) -> int:
        # Settling entries (slot given back) are bounded too, so an outage that stalls
        # settling cannot let the worker read without limit.
        c = self.settings.worker_concurrency
        return min(c - len(self._holding), 2 * c - len(self._inflight))

    def _release(self, delivery: Delivery) -> None:
        if delivery in self._holding:
            self._holding.discard(delivery)
            self._slot_freed.set()

    def _dispatch(
        self,
        handler: MessageHandler,
        delivery: Delivery,
        pending: PendingDecision | None = None,
        probe: bool = False,
    ) -> None:
        if delivery in self._inflight:
            return  # already being handled here (claimed back while still running)
        if delivery.deliveries > self.settings.max_deliveries:
            coro = handler.poison(delivery)
        else:
            coro = handler.handle(
                delivery, release=partial(self._release, delivery), pending=pending, probe=probe
            )
        self._holding.add(delivery)
        self._inflight[delivery] = asyncio.create_task(self._run_one(coro, delivery, probe))

    async def _run_one(self, coro: Awaitable[None], delivery: Delivery, probe: bool) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if is_outage(exc):
                # The entry stays pending; it is claimed again once Redis is back.
                self.outages.redis_failed(exc)
            else:
                # A bug or an unexpected reply: the entry stays pending and is delivered
                # again later; after SMSRELAY_MAX_DELIVERIES it is dead-lettered as poison.
                log.exception(
                    "sms.processing_failed", entry_id=delivery.entry_id, shard=delivery.shard
                )
        finally:
            self._inflight.pop(delivery, None)
            self._holding.discard(delivery)
            self._slot_freed.set()
            if probe:
                # A probe whose message never reached the provider (expired, sent already,
                # rate-limited...) proved nothing: the next entry may probe at once.
                self._probing = False
                with contextlib.suppress(Exception):
                    await self.fleet.give_back_probe(self.name)

    # -- upkeep ----------------------------------------------------------------------------
    async def _breaker_loop(self) -> None:
        """Keep this worker's view of the fleet's breaker a fraction of a second fresh."""
        while not self.stop_event.is_set():
            await self.breaker.refresh()
            await self._sleep(BREAKER_POLL_S)

    async def _claim_loop(self, queue: Queue, handler: MessageHandler) -> None:
        # A dead worker's entries are recovered at most `interval` after they turn idle; one
        # XAUTOCLAIM per shard per second is cheap, and keeps recovery within idle + 1 s.
        interval = min(max(self.settings.claim_idle_seconds / 10, 0.05), 1.0)
        min_idle_ms = int(self.settings.claim_idle_seconds * 1000)
        while not await self._sleep(interval):
            if self._claims_held_back() or self._provider_blocked():
                continue
            asked_redis = False
            for keys in queue.shards:
                for stream in keys.lanes:  # a dead worker's login codes first
                    if self._free_slots() <= 0:
                        break
                    await self._claim_stream(queue, handler, stream, min_idle_ms)
                    asked_redis = True
            if asked_redis:  # (with every slot busy nothing was asked: no news of Redis)
                self.outages.redis.recovered()

    def _provider_blocked(self) -> bool:
        """The breaker is open or the provider asked for a pause: nothing is taken on."""
        view = self.breaker.view
        return (self.breaker.enabled and view.open) or view.pause_ms > 0

    def _claims_held_back(self) -> bool:
        """True while Redis is away or refuses writes, and for one idle period (plus a
        retry) after.

        While Redis cannot record outcomes, no worker can refresh or settle its in-flight
        entries, so afterwards every one of them looks idle, including sends that a live
        worker has finished and is about to record (its sent marker waits for Redis, retried
        every RETRY_MAX_DELAY_S at most). Claiming them at once would send them again;
        waiting lets their owners record and refresh them first. Entries of workers that
        really died are claimed after the wait.
        """
        if self.outages.redis_down:
            return True
        hold_s = self.settings.claim_idle_seconds + RETRY_MAX_DELAY_S
        return any(
            o.ended_at is not None and clock.monotonic() - o.ended_at < hold_s
            for o in (self.outages.redis, self.outages.redis_writes)
        )

    async def _claim_stream(
        self, queue: Queue, handler: MessageHandler, stream: str, min_idle_ms: int
    ) -> None:
        """Claim idle entries page by page until none is left or no slot is free."""
        cursor = "0-0"
        shard = queue.group.streams[stream]
        while (free := self._free_slots()) > 0 and not self.stop_event.is_set():
            try:
                page = await queue.claim(stream, min_idle_ms, min(free, 100), cursor)
            except Exception as exc:
                if "NOGROUP" not in str(exc):
                    raise
                # The stream was deleted under the worker: nothing pending is left to claim,
                # and the reader creates it and its group again.
                log.warning("worker.group_missing", stream=stream, error=str(exc))
                return
            if page.deleted:
                # Their payloads were trimmed or deleted while pending: Redis dropped them
                # from the PEL. Nothing can be sent; say so loudly.
                log.error(
                    "worker.claimed_deleted_entries",
                    shard=shard,
                    stream=stream,
                    count=len(page.deleted),
                    entry_ids=page.deleted[:20],
                )
            for delivery in page.claimed:
                log.info(
                    "worker.claimed",
                    shard=shard,
                    priority=delivery.priority,
                    entry_id=delivery.entry_id,
                    deliveries=delivery.deliveries,
                )
                self._dispatch(handler, delivery)
            cursor = page.cursor
            if cursor == "0-0":
                return

    async def _heartbeat_loop(self, queue: Queue) -> None:
        interval = min(max(self.settings.claim_idle_seconds / 3, 0.05), 10.0)
        while not self._drained.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), timeout=interval)
            await queue.refresh(list(self._inflight))

    async def _mover_loop(self, queue: Queue) -> None:
        while not self.stop_event.is_set():
            queue.delay_scheduled.clear()
            wait_s = 1.0  # other workers' delays are seen within this
            for keys in queue.shards:
                moved, next_ms, unreadable = await queue.move_due(keys.shard)
                if moved:
                    log.debug("worker.delayed_moved", shard=keys.shard, moved=moved)
                if unreadable:
                    log.error(
                        "worker.delayed_payload_unreadable", shard=keys.shard, dropped=unreadable
                    )
                if next_ms >= 0:
                    wait_s = min(wait_s, next_ms / 1000)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(queue.delay_scheduled.wait(), timeout=max(wait_s, 0.002))

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
