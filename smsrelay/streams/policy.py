"""Checks of the Redis server a process is about to rely on."""

from __future__ import annotations

from typing import Any, cast

import redis.asyncio as aioredis
import redis.asyncio.cluster as aiocluster

from smsrelay.errors import ConfigError
from smsrelay.logging import get_logger
from smsrelay.streams.clients import is_cluster, text

log = get_logger("smsrelay.redis")

# Redis would delete keys to make room: a request stream, a sent marker (a second SMS), a rate
# window or an idempotency key. `volatile-*` evicts keys with a TTL, which markers, windows
# and idempotency keys all have. Only `noeviction` keeps everything (and refuses writes
# instead, which smsrelay waits out and reports).
SAFE_POLICY = "noeviction"


async def check_eviction_policy(client: aioredis.Redis) -> None:
    """Raise ConfigError when Redis may evict keys; a server that hides its configuration
    (managed Redis without CONFIG) is let through with a warning. On a cluster every master
    is asked: each holds shards of its own."""
    try:
        replies: dict[str, Any] = {}
        if is_cluster(client):
            cluster = cast(aiocluster.RedisCluster, client)
            for node in cluster.get_primaries():
                replies[node.name] = await cluster.config_get("maxmemory-policy", target_nodes=node)
        else:
            replies[""] = await client.config_get("maxmemory-policy")
    except aioredis.ResponseError as exc:
        log.warning(
            "redis.policy_unknown",
            error=str(exc),
            advice=f"make sure maxmemory-policy is {SAFE_POLICY}",
        )
        return
    for name, reply in sorted(replies.items()):
        policy = _policy(reply)
        if policy and policy != SAFE_POLICY:
            where = f" (cluster node {name})" if name else ""
            raise ConfigError(
                f"Redis maxmemory-policy is {policy}{where}: Redis could evict request streams, "
                f"sent markers or rate-limit windows (lost or duplicated SMS). Set it to "
                f"{SAFE_POLICY} (redis-cli CONFIG SET maxmemory-policy {SAFE_POLICY}, and in "
                "redis.conf)"
            )


def _policy(reply: dict[Any, Any]) -> str:
    """The policy from CONFIG GET's reply (redis-py makes it a mapping)."""
    return text(reply.get("maxmemory-policy") or reply.get(b"maxmemory-policy"))
