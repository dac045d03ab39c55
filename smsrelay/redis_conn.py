"""Redis clients with the timeouts and retry policy each role needs.

redis-py retries a failed command on ConnectionError/TimeoutError. That is harmless for reads
and for our scripts (each settles an entry only if XACK says it was still pending), but a blind
retry of a bare XADD publishes twice: the producer therefore gets no client-side retry at all.
"""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry

# A blocking XREADGROUP must return before the socket times out (reference: redis-streams.md).
WORKER_SOCKET_TIMEOUT_S = 10.0
READ_BLOCK_MS = 1000


def producer_client(url: str, timeout_s: float, **extra: Any) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                retry=Retry(NoBackoff(), 0), retry_on_timeout=False,
                                decode_responses=False, **extra)


def async_producer_client(url: str, timeout_s: float) -> aioredis.Redis:
    # No socket_timeout: AsyncProducer bounds each whole call with one asyncio.timeout, where
    # redis-py would arm a timeout around every socket read (a quarter of an XADD's cost).
    client: aioredis.Redis = aioredis.Redis.from_url(
        url, socket_connect_timeout=timeout_s,
        retry=AsyncRetry(NoBackoff(), 0), retry_on_timeout=False, decode_responses=False)
    return client


def worker_client(url: str, **extra: Any) -> aioredis.Redis:
    client: aioredis.Redis = aioredis.Redis.from_url(
        url, socket_timeout=WORKER_SOCKET_TIMEOUT_S, socket_connect_timeout=5.0,
        retry=AsyncRetry(ExponentialBackoff(cap=1.0, base=0.05), 2),
        health_check_interval=30, decode_responses=False, **extra)
    return client


def sync_client(url: str, timeout_s: float = 5.0) -> redis.Redis:
    """For the CLI and admin reads: short timeouts, a couple of retries."""
    return redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
                                decode_responses=False)


def text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode(errors="replace") if isinstance(value, bytes) else value
