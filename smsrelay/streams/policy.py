"""Checks of the Redis server a process is about to rely on."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from smsrelay.errors import ConfigError
from smsrelay.logging import get_logger
from smsrelay.streams.clients import text

log = get_logger("smsrelay.redis")

# Redis would delete keys to make room: a request stream, a sent marker (a second SMS), a rate
# window or an idempotency key. `volatile-*` evicts keys with a TTL, which markers, windows
# and idempotency keys all have. Only `noeviction` keeps everything (and refuses writes
# instead, which smsrelay waits out and reports).
SAFE_POLICY = "noeviction"


async def check_eviction_policy(client: aioredis.Redis) -> None:
    """Raise ConfigError when Redis may evict keys; a server that hides its configuration
    (managed Redis without CONFIG) is let through with a warning."""
    try:
        reply: dict[Any, Any] = await client.config_get("maxmemory-policy")
    except aioredis.ResponseError as exc:
        log.warning(
            "redis.policy_unknown",
            error=str(exc),
            advice=f"make sure maxmemory-policy is {SAFE_POLICY}",
        )
        return
    policy = text(reply.get("maxmemory-policy") or reply.get(b"maxmemory-policy"))
    if policy and policy != SAFE_POLICY:
        raise ConfigError(
            f"Redis maxmemory-policy is {policy}: Redis could evict request streams, sent "
            f"markers or rate-limit windows (lost or duplicated SMS). Set it to {SAFE_POLICY} "
            f"(redis-cli CONFIG SET maxmemory-policy {SAFE_POLICY}, and in redis.conf)"
        )
