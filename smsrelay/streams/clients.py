"""Every Redis client of smsrelay is built here, with the timeouts and retries its role needs.

redis-py retries a failed command on ConnectionError/TimeoutError. That is harmless for reads
and for our scripts (each settles an entry only if XACK says it was still pending), but a blind
retry of a bare XADD publishes twice: the producer therefore gets no client-side retry at all.

This module is where the deployment mode (SMSRELAY_REDIS_MODE) is chosen:
- `standalone`: one Redis (`redis://host:port/db`);
- `cluster`: redis-py's RedisCluster from the seed nodes of the URL; it routes each command by
  its key's slot, follows MOVED/ASK and finds the new master after a failover (rule 20). Every
  key of a shard shares one slot (rule 1), so every script runs where its keys live;
- `sentinel`: the sentinels of the URL name the master (SMSRELAY_REDIS_SENTINEL_MASTER); a
  connection asks them again after a failover.
A cluster client is typed as `Redis` (it answers every command smsrelay sends, routed by key);
the few places that must treat it differently ask `is_cluster()`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

import redis
import redis.asyncio as aioredis
import redis.asyncio.cluster as aiocluster
import redis.asyncio.sentinel as aiosentinel
import redis.cluster as synccluster
import redis.sentinel as syncsentinel
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry

from smsrelay.settings import RedisEndpoints, Settings, redis_endpoints
from smsrelay.streams.keys import replication_barrier

# redis-py 8 speaks RESP3 unless told otherwise; a Lua `false` then reaches us as False, not
# None, and replies take other shapes. Every client here stays on RESP2, the shapes the code reads.
PROTOCOL = 2
# A blocking XREADGROUP must return before the socket times out (reference: redis-streams.md).
READER_SOCKET_TIMEOUT_S = 10.0
READ_BLOCK_MS = 1000
COMMAND_SOCKET_TIMEOUT_S = 10.0
SENTINEL_TIMEOUT_S = 2.0


def is_cluster(client: object) -> bool:
    return isinstance(client, aiocluster.RedisCluster | synccluster.RedisCluster)


def _endpoints(settings: Settings) -> RedisEndpoints:
    return redis_endpoints(settings.redis_url, settings.redis_mode)


class _SentinelMaster(aioredis.Redis):
    """The master named by the sentinels; closing it closes the sentinel connections too."""

    watchers: aiosentinel.Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        if self.watchers is not None:
            for watcher in self.watchers.sentinels:
                await watcher.aclose()


class _SyncSentinelMaster(redis.Redis):
    watchers: syncsentinel.Sentinel | None = None

    def close(self) -> None:
        super().close()
        if self.watchers is not None:
            for watcher in self.watchers.sentinels:
                watcher.close()


def _sentinel_kwargs(settings: Settings) -> dict[str, Any]:
    # The sentinels answer quickly or not at all; their own password is not the master's.
    return {
        "socket_timeout": SENTINEL_TIMEOUT_S,
        "socket_connect_timeout": SENTINEL_TIMEOUT_S,
        "protocol": PROTOCOL,
    }


def _async_client(
    settings: Settings, max_connections: int | None = None, **kwargs: Any
) -> aioredis.Redis:
    """One asyncio client for the deployment mode; `max_connections` is per node."""
    kwargs.setdefault("decode_responses", False)
    kwargs["protocol"] = PROTOCOL
    if settings.redis_mode == "standalone":
        if max_connections is not None:
            kwargs["max_connections"] = max_connections
        client: aioredis.Redis = aioredis.Redis.from_url(settings.redis_url, **kwargs)
        return client
    ends = _endpoints(settings)
    if settings.redis_mode == "cluster":
        cluster = aiocluster.RedisCluster(
            startup_nodes=[aiocluster.ClusterNode(host, port) for host, port in ends.hosts],
            username=ends.username,
            password=ends.password,
            ssl=ends.tls,
            max_connections=max_connections or 2**31,
            **kwargs,
        )
        return cast(aioredis.Redis, cluster)
    sentinel = aiosentinel.Sentinel(  # type: ignore[no-untyped-call]
        list(ends.hosts), sentinel_kwargs=_sentinel_kwargs(settings), ssl=ends.tls
    )
    if max_connections is not None:
        kwargs["max_connections"] = max_connections
    master: _SentinelMaster = sentinel.master_for(
        settings.redis_sentinel_master,
        redis_class=_SentinelMaster,
        db=ends.db,
        username=ends.username,
        password=ends.password,
        **kwargs,
    )
    master.watchers = sentinel
    return master


def _sync_client(settings: Settings, **kwargs: Any) -> redis.Redis:
    kwargs.setdefault("decode_responses", False)
    kwargs["protocol"] = PROTOCOL
    if settings.redis_mode == "standalone":
        return redis.Redis.from_url(settings.redis_url, **kwargs)
    kwargs.pop("single_connection_client", None)  # pools per node / per master there
    ends = _endpoints(settings)
    if settings.redis_mode == "cluster":
        cluster = synccluster.RedisCluster(
            startup_nodes=[
                synccluster.ClusterNode(host, port)  # type: ignore[no-untyped-call]
                for host, port in ends.hosts
            ],
            username=ends.username,
            password=ends.password,
            ssl=ends.tls,
            **kwargs,
        )
        return cast(redis.Redis, cluster)
    sentinel = syncsentinel.Sentinel(  # type: ignore[no-untyped-call]
        list(ends.hosts), sentinel_kwargs=_sentinel_kwargs(settings), ssl=ends.tls
    )
    master: _SyncSentinelMaster = sentinel.master_for(  # type: ignore[no-untyped-call]
        settings.redis_sentinel_master,
        redis_class=_SyncSentinelMaster,
        db=ends.db,
        username=ends.username,
        password=ends.password,
        **kwargs,
    )
    master.watchers = sentinel
    return master


def producer_client(settings: Settings, **extra: Any) -> redis.Redis:
    timeout_s = settings.publish_timeout_seconds
    return _sync_client(
        settings,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
        **extra,
    )


def async_producer_client(settings: Settings) -> aioredis.Redis:
    # No socket_timeout: AsyncProducer bounds each whole call with one asyncio.timeout, where
    # redis-py would arm a timeout around every socket read (a quarter of an XADD's cost).
    # (redis-py 8 would put 5 s on every read by default: None keeps it off.)
    return _async_client(
        settings,
        socket_timeout=None,
        socket_connect_timeout=settings.publish_timeout_seconds,
        retry=AsyncRetry(NoBackoff(), 0),
    )


@dataclass
class WorkerClients:
    """A worker's two clients: scripts and commands share a pool sized to the concurrency;
    blocking reads get a connection of their own so they never wait behind a script call."""

    commands: aioredis.Redis
    reader: aioredis.Redis

    async def aclose(self) -> None:
        await self.reader.aclose()
        await self.commands.aclose()
        if not is_cluster(self.commands):
            await self.commands.connection_pool.disconnect()


def worker_clients(settings: Settings) -> WorkerClients:
    commands = _async_client(
        settings,
        max_connections=settings.worker_concurrency + 16,
        socket_timeout=COMMAND_SOCKET_TIMEOUT_S,
        socket_connect_timeout=5.0,
        health_check_interval=30,
        retry=AsyncRetry(NoBackoff(), 0),  # a failed step is retried by its caller (rule 9)
    )
    return WorkerClients(commands=commands, reader=reader_client(settings))


def reader_client(settings: Settings) -> aioredis.Redis:
    """For loops that block on XREADGROUP (the worker's reader, the mirror)."""
    return _async_client(
        settings,
        socket_timeout=READER_SOCKET_TIMEOUT_S,
        socket_connect_timeout=5.0,
        retry=AsyncRetry(ExponentialBackoff(cap=1.0, base=0.05), 2),
        health_check_interval=30,
    )


def admin_client(settings: Settings) -> aioredis.Redis:
    """Short timeouts: an HTTP request should fail fast with 503 rather than hang."""
    return _async_client(
        settings,
        socket_timeout=5.0,
        socket_connect_timeout=3.0,
        retry=AsyncRetry(ExponentialBackoff(cap=0.5, base=0.05), 1),
    )


def sync_client(settings: Settings, timeout_s: float = 5.0) -> redis.Redis:
    """For one-shot commands (the demo's checks): short timeouts, a couple of retries."""
    return _sync_client(
        settings,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
    )


# -- replicas (SMSRELAY_REDIS_WAIT_REPLICAS) -----------------------------------------------------
#
# WAIT counts the replicas that acknowledged every write made so far *on the connection that
# sends it*. Pooled clients, pipelines split by node and redirected commands do not keep a
# write and its WAIT on one connection, so each WAIT here follows a barrier write on its own
# connection, to a key in the slot of the keys just written: a master replicates its writes in
# one ordered stream, so a replica that holds the barrier holds everything written before it,
# through whatever connection.
BARRIER_TTL_MS = 60_000


# What a client may raise when Redis is away: a cluster client also raises RedisClusterException
# (not a RedisError) when its slot map has a hole during a failover.
REDIS_ERRORS: tuple[type[Exception], ...] = (
    redis.RedisError,
    redis.exceptions.RedisClusterException,
)


class NotReplicated(redis.RedisError):
    """Fewer replicas than SMSRELAY_REDIS_WAIT_REPLICAS acknowledged a write in time."""


def _by_node(client: Any, keys: Iterable[str]) -> dict[str, tuple[Any, str]]:
    """One barrier key per master: node name -> (node, barrier)."""
    nodes: dict[str, tuple[Any, str]] = {}
    for barrier in sorted({replication_barrier(k) for k in keys}):
        node = client.get_node_from_key(barrier)
        nodes.setdefault(node.name, (node, barrier))
    return nodes


async def wait_replicas(
    client: aioredis.Redis, keys: Iterable[str], replicas: int, timeout_ms: int
) -> int:
    """How many replicas hold every write made so far on the masters of `keys` (the fewest
    over those masters), waiting at most `timeout_ms` for `replicas` of them."""
    if not is_cluster(client):
        async with client.pipeline(transaction=False) as pipe:
            pipe.set(replication_barrier(next(iter(keys))), "1", px=BARRIER_TTL_MS)
            pipe.execute_command("WAIT", replicas, timeout_ms)
            replies = await pipe.execute()
        return int(replies[1])
    cluster: Any = client
    if getattr(cluster, "_initialize", False):  # no slot map yet, or a node failed
        await cluster.initialize()
    nodes = _by_node(cluster, keys)
    async with cluster.pipeline(transaction=False) as pipe:
        for node, barrier in nodes.values():
            pipe.set(barrier, "1", px=BARRIER_TTL_MS)
            pipe.execute_command("WAIT", replicas, timeout_ms, target_nodes=node)
        replies = await pipe.execute()
    # A barrier that moved to another master meanwhile was written there, not where its WAIT
    # went: nothing is proven for that slot.
    if any(cluster.get_node_from_key(b).name != name for name, (_, b) in nodes.items()):
        return 0
    return min(int(acked) for acked in replies[1::2])


def wait_replicas_sync(
    client: redis.Redis, keys: Iterable[str], replicas: int, timeout_ms: int
) -> int:
    """`wait_replicas` for the synchronous producer."""
    if not is_cluster(client):
        with client.pipeline(transaction=False) as pipe:
            pipe.set(replication_barrier(next(iter(keys))), "1", px=BARRIER_TTL_MS)
            pipe.execute_command("WAIT", replicas, timeout_ms)  # type: ignore[no-untyped-call]
            replies = pipe.execute()
        return int(replies[1])
    cluster: Any = client
    nodes = _by_node(cluster, keys)
    with cluster.pipeline(transaction=False) as pipe:
        for node, barrier in nodes.values():
            pipe.set(barrier, "1", px=BARRIER_TTL_MS)
            pipe.execute_command("WAIT", replicas, timeout_ms, target_nodes=node)
        replies = pipe.execute()
    if any(cluster.get_node_from_key(b).name != name for name, (_, b) in nodes.items()):
        return 0
    return min(int(acked) for acked in replies[1::2])


def text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode(errors="replace") if isinstance(value, bytes) else value
