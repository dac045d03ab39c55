"""Publishing: one Lua round trip (dedupe + XADD), a disk spool when Redis is away, never a raise.

A form handler calls `publish()` inside its request; whatever Redis does, the call returns
within about `SMSRELAY_PUBLISH_TIMEOUT_SECONDS` (connect + reply), with one of four statuses.
After a timeout or a refused connection a `RedisGate` sends the next requests straight to the
spool while the background flusher probes Redis: an outage costs one request the timeout,
not every request.
"""

from __future__ import annotations

import asyncio
import os
import threading
import weakref
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio as aioredis

from smsrelay.logging import get_logger
from smsrelay.producers.gate import PROBE_FIRST_S, PROBE_MAX_S, RedisGate
from smsrelay.producers.request import PublishResult, Status, finish, prepare
from smsrelay.producers.spool import Spool, SpooledRequest, SpoolOwner, SpoolSurvey
from smsrelay.schemas.entry import Priority
from smsrelay.settings import Settings, spool_root
from smsrelay.streams.clients import (
    REDIS_ERRORS,
    NotReplicated,
    async_producer_client,
    producer_client,
    text,
    wait_replicas,
    wait_replicas_sync,
)
from smsrelay.streams.keys import shard_keys, shard_of
from smsrelay.streams.scripts import Scripts
from smsrelay.streams.wire import publish_call

log = get_logger("smsrelay.producer")

_FLUSH_BATCH = 500
# Errors that say Redis is away (not that it refused one command): they close the gate.
_OUTAGES: tuple[type[BaseException], ...] = (redis.ConnectionError, redis.TimeoutError)
_ASYNC_OUTAGES: tuple[type[BaseException], ...] = (*_OUTAGES, TimeoutError, OSError)
# Every failure of a publish, a cluster's included (a request is spooled, never lost).
# (OSError: a socket error redis-py did not wrap; TimeoutError: the call's own bound)
_ASYNC_FAILURES: tuple[type[BaseException], ...] = (*REDIS_ERRORS, TimeoutError, OSError)


@dataclass(frozen=True)
class SpoolFlush:
    """What a `Producer.drain_spool()` did: how many it published, what the folder still
    holds (`survey`), and the Redis error that stopped it, if one did."""

    published: int
    survey: SpoolSurvey
    error: str | None = None

    @property
    def left(self) -> int:
        return self.survey.total


class _ProducerCore:
    """What the sync and async producers share: keys, spool, gate, results."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.owner = SpoolOwner.of(settings.namespace, settings.redis_url)
        self.spool = Spool(settings.spool_dir, self.owner)
        self.gate = RedisGate()

    def script_args(
        self, shard: int, fields: dict[str, str], idempotency_key: str | None
    ) -> tuple[list[str], list[Any]]:
        return publish_call(
            shard_keys(self.settings.namespace, shard),
            fields,
            idempotency_key,
            self.settings.idempotency_ttl_seconds,
        )

    def flush_call(self, request: SpooledRequest) -> tuple[list[str], list[Any]]:
        # The shard from today's SMSRELAY_SHARDS: the workers read those streams.
        shard = self.shard(request.fields.get("to", ""))
        return self.script_args(shard, request.fields, _flush_key(request))

    def stream(self, shard: int, priority: str | None = None) -> str:
        return shard_keys(self.settings.namespace, shard).lane(priority)

    def shard(self, phone: str) -> int:
        return shard_of(phone, self.settings.shards)

    # -- SMSRELAY_REDIS_WAIT_REPLICAS (rule 19) ---------------------------------------------
    def replicated(self, client: redis.Redis, shard: int) -> None:
        """Raise NotReplicated (the request is then spooled, never lost) unless the configured
        number of replicas hold the entry within the publish timeout; nothing when it is 0.
        A spooled copy of an entry that did reach Redis is the same message id: the worker
        sends it once (begin.lua finds it sent or busy)."""
        wanted = self.settings.redis_wait_replicas
        if wanted:
            acked = wait_replicas_sync(client, [self.stream(shard)], wanted, self._wait_ms())
            self._check_replicas(acked, wanted)

    async def replicated_async(self, client: aioredis.Redis, shard: int) -> None:
        wanted = self.settings.redis_wait_replicas
        if wanted:
            acked = await wait_replicas(client, [self.stream(shard)], wanted, self._wait_ms())
            self._check_replicas(acked, wanted)

    def _wait_ms(self) -> int:
        # Within the publish timeout, and under the socket timeout (the same figure).
        return max(1, int(self.settings.publish_timeout_seconds * 900))

    @staticmethod
    def _check_replicas(acked: int, wanted: int) -> None:
        if acked < wanted:
            raise NotReplicated(
                f"{acked} of the {wanted} replicas SMSRELAY_REDIS_WAIT_REPLICAS asks for "
                "acknowledged the entry in time"
            )

    @staticmethod
    def result_from_reply(reply: Any, kind: str | None) -> PublishResult:
        queued, message_id = int(reply[0]), text(reply[1])
        result = PublishResult("queued" if queued else "duplicate", message_id=message_id)
        log.info("sms.published" if queued else "sms.duplicate", message_id=message_id, kind=kind)
        return result

    def spool_write(
        self, fields: dict[str, str], shard: int, reason: str, tried: bool = True
    ) -> PublishResult:
        message_id = fields["id"]
        try:
            self.spool.write(shard, fields, fields.get("idempotency_key"))
        except OSError as exc:
            log.error(
                "sms.publish_failed",
                message_id=message_id,
                redis_error=reason,
                spool_error=str(exc),
                spool_dir=str(self.spool.directory),
            )
            return PublishResult(
                "rejected",
                message_id=message_id,
                error=f"Redis unreachable ({reason}) and the spool at "
                f"{self.spool.directory} is not writable ({exc})",
            )
        log.warning("sms.spooled", message_id=message_id, redis_error=reason, tried=tried)
        why = reason if tried else f"{reason} (moments ago; not tried again until it answers)"
        return PublishResult(
            "spooled",
            message_id=message_id,
            error=f"Redis unreachable, kept in the local spool: {why}",
        )

    def warn_about_strangers(self) -> None:
        """Say once, at start, that the spool holds requests this producer will not publish."""
        others = len(self.spool.files()) - len(self.spool.pending())
        root = spool_root()
        legacy = (
            sum(1 for p in root.glob("*.json") if not p.name.startswith("."))
            if root != self.spool.directory and root.is_dir()
            else 0
        )
        if others or legacy:
            log.warning(
                "sms.spool_not_ours",
                other_or_legacy=others,
                spool_dir=str(self.spool.directory),
                legacy_in_old_folder=legacy,
                old_folder=str(root),
                hint="`smsrelay spool-flush` says whose they are; this producer leaves them",
            )


class _ThreadClients:
    """One single-connection Redis client per calling thread.

    A pooled client checks a connection out and back in on every command, and polls its
    socket for stray data each time: about 20 µs of a 60 µs XADD. A client of its own per
    thread skips both and never waits for another thread's call (a shared single connection
    would queue every thread behind one that waits out a timeout). A thread's client is
    closed when the thread ends, or all of them by `close()`. Its connection is made when it
    is created, so `get()` may raise a RedisError; after a broken connection redis-py
    connects again on the next command.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._local = threading.local()
        self._all: weakref.WeakSet[redis.Redis] = weakref.WeakSet()
        self._lock = threading.Lock()

    def get(self) -> redis.Redis:
        client: redis.Redis | None = getattr(self._local, "client", None)
        # After a fork (gunicorn --preload) the child must not talk on its parent's socket.
        if client is None or self._local.pid != os.getpid():
            client = producer_client(self._settings, single_connection_client=True)
            self._local.client, self._local.pid = client, os.getpid()
            with self._lock:
                self._all.add(client)
        return client

    def close(self) -> None:
        with self._lock:
            clients = list(self._all)
        for client in clients:
            client.close()


class Producer:
    """Synchronous producer for web handlers and scripts. Thread-safe.

    `background_flush=False` starts no flusher thread: nothing is published behind the
    caller's back (`smsrelay spool-flush` drains the spool itself, with `drain_spool()`).
    """

    def __init__(self, settings: Settings | None = None, *, background_flush: bool = True) -> None:
        self.settings = settings or Settings.load()
        self._core = _ProducerCore(self.settings)
        self._clients = _ThreadClients(self.settings)
        # Scripts only need a client to register on (no connection): calls pass their own.
        self._scripts = Scripts(producer_client(self.settings))
        self._background = background_flush
        self._flusher: threading.Thread | None = None
        self._flusher_lock = threading.Lock()
        self._pid = os.getpid()
        self._closed = threading.Event()
        if background_flush:
            self._core.warn_about_strangers()
            if self._core.spool.pending():
                self._start_flusher()

    @classmethod
    def from_env(cls) -> Producer:
        return cls(Settings.load())

    def publish(
        self,
        to: str,
        body: str,
        *,
        kind: str | None = None,
        idempotency_key: str | None = None,
        meta: dict[str, Any] | None = None,
        strict: bool = False,
        priority: Priority = "normal",
        ttl_seconds: float | None = None,
    ) -> PublishResult:
        fields = prepare(to, body, kind, idempotency_key, meta, priority, ttl_seconds)
        if isinstance(fields, PublishResult):
            return finish(fields, strict)
        shard = self._core.shard(fields["to"])
        gated = self._core.gate.closed()
        if gated is not None:
            return finish(self._spool(fields, shard, gated, tried=False), strict)
        try:
            client = self._clients.get()  # connects on a thread's first call: may fail
            if not idempotency_key:
                # Without an idempotency key publish.lua would only XADD: a plain XADD is the
                # same single round trip, without the script call and its wrapper.
                client.xadd(self._core.stream(shard, fields.get("priority")), fields)  # type: ignore[arg-type]
                reply: Any = (1, fields["id"])
            else:
                keys, args = self._core.script_args(shard, fields, idempotency_key)
                reply = self._scripts.publish(keys=keys, args=args, client=client)
            self._core.replicated(client, shard)
        except REDIS_ERRORS as exc:
            reason = _describe(exc)
            if isinstance(exc, _OUTAGES):
                self._core.gate.fail(reason)
            return finish(self._spool(fields, shard, reason), strict)
        return self._core.result_from_reply(reply, kind)

    def _spool(
        self, fields: dict[str, str], shard: int, reason: str, tried: bool = True
    ) -> PublishResult:
        result = self._core.spool_write(fields, shard, reason, tried)
        if result.status == "spooled" and self._background:
            self._start_flusher()
        return result

    def flush_spool(
        self, limit: int = _FLUSH_BATCH, *, spool: Spool | None = None, adopt_legacy: bool = False
    ) -> int:
        """Publish up to `limit` of this producer's spooled requests; returns how many went
        out (held ones are skipped). Raises on Redis errors.

        `spool`: another folder (with this producer's owner); `adopt_legacy`: publish files
        that record no namespace too, into this producer's namespace and Redis.
        """
        spool = self._core.spool if spool is None else spool
        paths = spool.pending() + (spool.legacy() if adopt_legacy else [])
        published = 0
        for path in paths:
            if published >= limit:
                break
            with spool.claim(path, adopt_legacy=adopt_legacy) as request:
                if request is None:
                    continue
                keys, args = self._core.flush_call(request)
                client = self._clients.get()
                self._scripts.publish(keys=keys, args=args, client=client)
                self._core.replicated(client, request.shard)
                spool.done(request)
                published += 1
        if published:
            log.info("sms.spool_flushed", published=published)
        return published

    def drain_spool(self, *, spool: Spool | None = None, adopt_legacy: bool = False) -> SpoolFlush:
        """Publish every spooled request of this producer that no other flusher holds, then
        say what the folder still holds. A Redis error stops it (`SpoolFlush.error`)."""
        spool = self._core.spool if spool is None else spool
        published, error = 0, None
        try:
            while (batch := self.flush_spool(spool=spool, adopt_legacy=adopt_legacy)) > 0:
                published += batch
        except redis.RedisError as exc:
            error = _describe(exc)
        return SpoolFlush(published, spool.survey(), error)

    def spooled(self) -> int:
        """How many of this producer's requests wait in the local spool."""
        return len(self._core.spool)

    @property
    def spool(self) -> Spool:
        return self._core.spool

    def _start_flusher(self) -> None:
        if self._pid != os.getpid():
            # A forked child: the parent's thread did not come along, and its lock may have
            # been held at the fork.
            self._pid, self._flusher, self._flusher_lock = os.getpid(), None, threading.Lock()
        with self._flusher_lock:
            if self._flusher is not None and self._flusher.is_alive():
                return
            self._flusher = threading.Thread(
                target=self._flush_loop, name="smsrelay-spool", daemon=True
            )
            self._flusher.start()

    def _flush_loop(self) -> None:
        """Publish the spool; while the gate is closed, probe Redis and open it."""
        pause = PROBE_FIRST_S
        while not self._closed.is_set():
            gated = self._core.gate.closed() is not None
            if not gated and not self._core.spool.pending():
                return
            try:
                if gated:
                    self._clients.get().ping()
                    self._core.gate.open()
                # Nothing published while files remain: another flusher holds them.
                pause = 0.5 if self.flush_spool() == 0 else 0.0
            except REDIS_ERRORS as exc:
                if isinstance(exc, _OUTAGES):
                    self._core.gate.fail(_describe(exc))
                pause = min(max(pause * 2, PROBE_FIRST_S), PROBE_MAX_S)
            if pause and self._closed.wait(pause):
                return

    def close(self) -> None:
        self._closed.set()
        self._clients.close()

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncProducer:
    """asyncio producer; `await producer.publish(...)`. One per event loop."""

    def __init__(self, settings: Settings | None = None, *, background_flush: bool = True) -> None:
        self.settings = settings or Settings.load()
        self._core = _ProducerCore(self.settings)
        self._redis = async_producer_client(self.settings)
        self._scripts = Scripts(self._redis)
        self._background = background_flush
        self._flusher: asyncio.Task[None] | None = None
        self._closed = False

    @classmethod
    def from_env(cls) -> AsyncProducer:
        return cls(Settings.load())

    async def publish(
        self,
        to: str,
        body: str,
        *,
        kind: str | None = None,
        idempotency_key: str | None = None,
        meta: dict[str, Any] | None = None,
        strict: bool = False,
        priority: Priority = "normal",
        ttl_seconds: float | None = None,
    ) -> PublishResult:
        fields = prepare(to, body, kind, idempotency_key, meta, priority, ttl_seconds)
        if isinstance(fields, PublishResult):
            return finish(fields, strict)
        shard = self._core.shard(fields["to"])
        gated = self._core.gate.closed()
        if gated is not None:
            return finish(await self._spool(fields, shard, gated, tried=False), strict)
        try:
            # One bound for the whole call, connect + reply (the client has no read timeout).
            async with asyncio.timeout(self.settings.publish_timeout_seconds * 2):
                if not idempotency_key:  # a plain XADD (see Producer.publish)
                    await self._redis.xadd(self._core.stream(shard, fields.get("priority")), fields)  # type: ignore[arg-type]
                    reply: Any = (1, fields["id"])
                else:
                    keys, args = self._core.script_args(shard, fields, idempotency_key)
                    reply = await self._scripts.publish(keys=keys, args=args)
                await self._core.replicated_async(self._redis, shard)
        except _ASYNC_FAILURES as exc:
            reason = _describe(exc)
            if isinstance(exc, _ASYNC_OUTAGES):
                self._core.gate.fail(reason)
            return finish(await self._spool(fields, shard, reason), strict)
        return self._core.result_from_reply(reply, kind)

    async def _spool(
        self, fields: dict[str, str], shard: int, reason: str, tried: bool = True
    ) -> PublishResult:
        result = await asyncio.to_thread(self._core.spool_write, fields, shard, reason, tried)
        if result.status == "spooled" and self._background:
            self._start_flusher()
        return result

    async def flush_spool(self, limit: int = _FLUSH_BATCH) -> int:
        published = 0
        for path in self._core.spool.pending():
            if published >= limit:
                break
            with self._core.spool.claim(path) as request:
                if request is None:
                    continue
                keys, args = self._core.flush_call(request)
                async with asyncio.timeout(self.settings.publish_timeout_seconds * 2):
                    await self._scripts.publish(keys=keys, args=args)
                    await self._core.replicated_async(self._redis, request.shard)
                self._core.spool.done(request)
                published += 1
        if published:
            log.info("sms.spool_flushed", published=published)
        return published

    def spooled(self) -> int:
        """How many of this producer's requests wait in the local spool."""
        return len(self._core.spool)

    @property
    def spool(self) -> Spool:
        return self._core.spool

    def _start_flusher(self) -> None:
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_loop())

    async def _flush_loop(self) -> None:
        """Publish the spool; while the gate is closed, probe Redis and open it."""
        pause = PROBE_FIRST_S
        while not self._closed:
            gated = self._core.gate.closed() is not None
            if not gated and not self._core.spool.pending():
                return
            try:
                if gated:
                    async with asyncio.timeout(self.settings.publish_timeout_seconds * 2):
                        await self._redis.ping()
                    self._core.gate.open()
                pause = 0.5 if await self.flush_spool() == 0 else 0.0
            except _ASYNC_OUTAGES as exc:
                self._core.gate.fail(_describe(exc))
                pause = min(max(pause * 2, PROBE_FIRST_S), PROBE_MAX_S)
            except _ASYNC_FAILURES:
                pause = min(max(pause * 2, PROBE_FIRST_S), PROBE_MAX_S)
            await asyncio.sleep(pause)

    async def start(self) -> None:
        """Flush requests a previous process left in the spool (call once at start-up)."""
        if self._background:
            self._core.warn_about_strangers()
            if self._core.spool.pending():
                self._start_flusher()

    async def aclose(self) -> None:
        self._closed = True
        if self._flusher is not None:
            self._flusher.cancel()
        await self._redis.aclose()

    async def __aenter__(self) -> AsyncProducer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _flush_key(request: SpooledRequest) -> str:
    # A spooled request without a caller's key still gets one (its message id), so that a
    # flush interrupted between XADD and unlink does not publish the same request twice.
    return request.idempotency_key or f"spool:{request.message_id}"


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


__all__ = ["AsyncProducer", "Producer", "PublishResult", "SpoolFlush", "Status"]
