"""Every Redis client of smsrelay is built here, with the timeouts and retries its role needs.

redis-py retries a failed command on ConnectionError/TimeoutError. That is harmless for reads
and for our scripts (each settles an entry only if XACK says it was still pending), but a blind
retry of a bare XADD publishes twice: the producer therefore gets no client-side retry at all.
This module is where the deployment mode (one Redis, Cluster, Sentinel) is chosen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry

from smsrelay.settings import Settings

# redis-py 8 speaks RESP3 unless told otherwise; a Lua `false` then reaches us as False, not
# None, and replies take other shapes. Every client here stays on RESP2, the shapes the code reads.
PROTOCOL = 2
# A blocking XREADGROUP must return before the socket times out (reference: redis-streams.md).
READER_SOCKET_TIMEOUT_S = 10.0
READ_BLOCK_MS = 1000
COMMAND_SOCKET_TIMEOUT_S = 10.0


def producer_client(settings: Settings, **extra: Any) -> redis.Redis:
    timeout_s = settings.publish_timeout_seconds
    return redis.Redis.from_url(
        settings.redis_url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
        decode_responses=False,
        protocol=PROTOCOL,
        **extra,
    )


def async_producer_client(settings: Settings) -> aioredis.Redis:
    # No socket_timeout: AsyncProducer bounds each whole call with one asyncio.timeout, where
    # redis-py would arm a timeout around every socket read (a quarter of an XADD's cost).
    # (redis-py 8 would put 5 s on every read by default: None keeps it off.)
    client: aioredis.Redis = aioredis.Redis.from_url(
        settings.redis_url,
        socket_timeout=None,
        socket_connect_timeout=settings.publish_timeout_seconds,
        retry=AsyncRetry(NoBackoff(), 0),
        decode_responses=False,
        protocol=PROTOCOL,
    )
    return client


@dataclass
class WorkerClients:
    """A worker's two clients: scripts and commands share a pool sized to the concurrency;
    blocking reads get a connection of their own so they never wait behind a script call."""

    commands: aioredis.Redis
    reader: aioredis.Redis

    async def aclose(self) -> None:
        await self.reader.aclose()
        await self.commands.aclose()
        await self.commands.connection_pool.disconnect()


def worker_clients(settings: Settings) -> WorkerClients:
    pool = aioredis.ConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.worker_concurrency + 16,
        socket_timeout=COMMAND_SOCKET_TIMEOUT_S,
        socket_connect_timeout=5.0,
        health_check_interval=30,
        protocol=PROTOCOL,
    )
    return WorkerClients(
        commands=aioredis.Redis(connection_pool=pool), reader=reader_client(settings)
    )


def reader_client(settings: Settings) -> aioredis.Redis:
    """For loops that block on XREADGROUP (the worker's reader, the mirror)."""
    client: aioredis.Redis = aioredis.Redis.from_url(
        settings.redis_url,
        socket_timeout=READER_SOCKET_TIMEOUT_S,
        socket_connect_timeout=5.0,
        retry=AsyncRetry(ExponentialBackoff(cap=1.0, base=0.05), 2),
        health_check_interval=30,
        decode_responses=False,
        protocol=PROTOCOL,
    )
    return client


def admin_client(settings: Settings) -> aioredis.Redis:
    """Short timeouts: an HTTP request should fail fast with 503 rather than hang."""
    client: aioredis.Redis = aioredis.Redis.from_url(
        settings.redis_url,
        socket_timeout=5.0,
        socket_connect_timeout=3.0,
        retry=AsyncRetry(ExponentialBackoff(cap=0.5, base=0.05), 1),
        decode_responses=False,
        protocol=PROTOCOL,
    )
    return client


def sync_client(settings: Settings, timeout_s: float = 5.0) -> redis.Redis:
    """For one-shot commands (the demo's checks): short timeouts, a couple of retries."""
    return redis.Redis.from_url(
        settings.redis_url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
        decode_responses=False,
        protocol=PROTOCOL,
    )


def text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode(errors="replace") if isinstance(value, bytes) else value
