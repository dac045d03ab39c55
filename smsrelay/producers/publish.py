"""Publishing: one Lua round trip (dedupe + XADD), a disk spool when Redis is away, never a raise.

A form handler calls `publish()` inside its request; whatever Redis does, the call returns
within about `SMSRELAY_PUBLISH_TIMEOUT_SECONDS` (connect + reply), with one of four statuses.
"""

from __future__ import annotations

import asyncio
import os
import threading
import weakref
from dataclasses import dataclass
from typing import Any, Literal

import redis
import redis.asyncio as aioredis
from pydantic import ValidationError

from smsrelay.errors import InvalidMessageError, PublishError
from smsrelay.logging import get_logger
from smsrelay.producers.spool import Spool, SpooledRequest
from smsrelay.schemas.entry import MessageRequest, describe_errors, new_entry_fields
from smsrelay.settings import Settings
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

Status = Literal["queued", "duplicate", "rejected", "spooled"]
_FLUSH_BATCH = 500
# (OSError: a socket error redis-py did not wrap; TimeoutError: the call's own bound)
_ASYNC_FAILURES: tuple[type[BaseException], ...] = (*REDIS_ERRORS, TimeoutError, OSError)
_FLUSH_RETRY_MAX_S = 30.0


@dataclass(frozen=True)
class PublishResult:
    status: Status
    message_id: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        """True when the message will be sent (or already was, for a duplicate)."""
        return self.status != "rejected"


class _ProducerCore:
    """What the sync and async producers share: validation, keys, spool, results."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.spool = Spool(settings.spool_dir)

    def prepare(
        self,
        to: str,
        body: str,
        kind: str | None,
        idempotency_key: str | None,
        meta: dict[str, Any] | None,
    ) -> dict[str, str] | PublishResult:
        """The new entry's stream fields, or the rejection."""
        try:
            request = MessageRequest(
                to=to, body=body, kind=kind, idempotency_key=idempotency_key, meta=meta
            )
            return new_entry_fields(request)
        except ValidationError as exc:
            return PublishResult("rejected", error=describe_errors(exc))

    def script_args(
        self, shard: int, fields: dict[str, str], idempotency_key: str | None
    ) -> tuple[list[str], list[Any]]:
        return publish_call(
            shard_keys(self.settings.namespace, shard),
            fields,
            idempotency_key,
            self.settings.idempotency_ttl_seconds,
        )

    def stream(self, shard: int) -> str:
        return shard_keys(self.settings.namespace, shard).requests

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

    def spool_write(self, fields: dict[str, str], shard: int, reason: str) -> PublishResult:
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
        log.warning("sms.spooled", message_id=message_id, redis_error=reason)
        return PublishResult(
            "spooled",
            message_id=message_id,
            error=f"Redis unreachable, kept in the local spool: {reason}",
        )

    @staticmethod
    def finish(result: PublishResult, strict: bool) -> PublishResult:
        if strict and result.status == "rejected":
            error = result.error or "rejected"
            if result.message_id is None:
                raise InvalidMessageError(error)
            raise PublishError(error)
        return result


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
    """Synchronous producer for web handlers and scripts. Thread-safe."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings.load()
        self._core = _ProducerCore(self.settings)
        self._clients = _ThreadClients(self.settings)
        # Scripts only need a client to register on (no connection): calls pass their own.
        self._scripts = Scripts(producer_client(self.settings))
        self._flusher: threading.Thread | None = None
        self._flusher_lock = threading.Lock()
        self._closed = threading.Event()
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
    ) -> PublishResult:
        fields = self._core.prepare(to, body, kind, idempotency_key, meta)
        if isinstance(fields, PublishResult):
            return self._core.finish(fields, strict)
        shard = self._core.shard(fields["to"])
        try:
            client = self._clients.get()  # connects on a thread's first call: may fail
            if not idempotency_key:
                # Without an idempotency key publish.lua would only XADD: a plain XADD is the
                # same single round trip, without the script call and its wrapper.
                client.xadd(self._core.stream(shard), fields)  # type: ignore[arg-type]
                reply: Any = (1, fields["id"])
            else:
                keys, args = self._core.script_args(shard, fields, idempotency_key)
                reply = self._scripts.publish(keys=keys, args=args, client=client)
            self._core.replicated(client, shard)
        except REDIS_ERRORS as exc:
            result = self._core.spool_write(fields, shard, _describe(exc))
            if result.status == "spooled":
                self._start_flusher()
            return self._core.finish(result, strict)
        return self._core.result_from_reply(reply, kind)

    def flush_spool(self) -> int:
        """Publish what the spool holds; returns how many went out. Raises on Redis errors."""
        published = 0
        for path in self._core.spool.pending()[:_FLUSH_BATCH]:
            with self._core.spool.claim(path) as request:
                if request is None:
                    continue
                keys, args = self._core.script_args(
                    request.shard, request.fields, _flush_key(request)
                )
                client = self._clients.get()
                self._scripts.publish(keys=keys, args=args, client=client)
                self._core.replicated(client, request.shard)
                self._core.spool.done(request)
                published += 1
        if published:
            log.info("sms.spool_flushed", published=published)
        return published

    def spooled(self) -> int:
        """How many requests wait in the local spool."""
        return len(self._core.spool)

    def _start_flusher(self) -> None:
        with self._flusher_lock:
            if self._flusher is not None and self._flusher.is_alive():
                return
            self._flusher = threading.Thread(
                target=self._flush_loop, name="smsrelay-spool", daemon=True
            )
            self._flusher.start()

    def _flush_loop(self) -> None:
        delay = 0.5
        while not self._closed.is_set() and self._core.spool.pending():
            try:
                # Nothing published while files remain: another flusher holds them.
                delay = 0.5 if self.flush_spool() == 0 else 0.0
            except REDIS_ERRORS:
                delay = min(max(delay * 2, 0.5), _FLUSH_RETRY_MAX_S)
            if delay and self._closed.wait(delay):
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

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings.load()
        self._core = _ProducerCore(self.settings)
        self._redis = async_producer_client(self.settings)
        self._scripts = Scripts(self._redis)
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
    ) -> PublishResult:
        fields = self._core.prepare(to, body, kind, idempotency_key, meta)
        if isinstance(fields, PublishResult):
            return self._core.finish(fields, strict)
        shard = self._core.shard(fields["to"])
        try:
            # One bound for the whole call, connect + reply (the client has no read timeout).
            async with asyncio.timeout(self.settings.publish_timeout_seconds * 2):
                if not idempotency_key:  # a plain XADD (see Producer.publish)
                    await self._redis.xadd(self._core.stream(shard), fields)  # type: ignore[arg-type]
                    reply: Any = (1, fields["id"])
                else:
                    keys, args = self._core.script_args(shard, fields, idempotency_key)
                    reply = await self._scripts.publish(keys=keys, args=args)
                await self._core.replicated_async(self._redis, shard)
        except _ASYNC_FAILURES as exc:
            result = await asyncio.to_thread(self._core.spool_write, fields, shard, _describe(exc))
            if result.status == "spooled":
                self._start_flusher()
            return self._core.finish(result, strict)
        return self._core.result_from_reply(reply, kind)

    async def flush_spool(self) -> int:
        published = 0
        for path in self._core.spool.pending()[:_FLUSH_BATCH]:
            with self._core.spool.claim(path) as request:
                if request is None:
                    continue
                keys, args = self._core.script_args(
                    request.shard, request.fields, _flush_key(request)
                )
                async with asyncio.timeout(self.settings.publish_timeout_seconds * 2):
                    await self._scripts.publish(keys=keys, args=args)
                    await self._core.replicated_async(self._redis, request.shard)
                self._core.spool.done(request)
                published += 1
        if published:
            log.info("sms.spool_flushed", published=published)
        return published

    def _start_flusher(self) -> None:
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_loop())

    async def _flush_loop(self) -> None:
        delay = 0.5
        while not self._closed and self._core.spool.pending():
            try:
                delay = 0.5 if await self.flush_spool() == 0 else 0.0
            except _ASYNC_FAILURES:
                delay = min(max(delay * 2, 0.5), _FLUSH_RETRY_MAX_S)
            await asyncio.sleep(delay)

    async def start(self) -> None:
        """Flush requests a previous process left in the spool (call once at start-up)."""
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


__all__ = ["AsyncProducer", "Producer", "PublishResult"]
