"""A consumer group over a set of streams: create, read, claim, refresh, acknowledge, forget.

The worker reads the request streams through one (group `workers`), the mirror the dead-letter
and outcome streams through another (group `mirror`). Every XREADGROUP, XAUTOCLAIM, XCLAIM and
XGROUP call of smsrelay is here.

On one Redis a read is one XREADGROUP over every stream. On Redis Cluster the streams of
different shards live in different slots, and one command cannot span slots (CROSSSLOT): a
read there is one XREADGROUP per stream (rule 20), see `ShardedReads`.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from smsrelay.schemas.entry import Priority
from smsrelay.streams.clients import is_cluster, text
from smsrelay.streams.keys import priority_of
from smsrelay.streams.wire import RawFields


def consumer_name(prefix: str = "") -> str:
    """Unique per process and start: a restarted worker never inherits a dead one's name."""
    return f"{prefix}{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"


@dataclass(frozen=True, slots=True)
class Delivery:
    """One entry delivered to a consumer: where it lives, its fields, how often delivered.

    Two deliveries of one entry are equal (and hash alike) whatever they carry."""

    stream: str
    shard: int
    entry_id: str
    fields: RawFields = field(compare=False)
    deliveries: int = field(default=1, compare=False)

    @property
    def priority(self) -> Priority:
        """The lane the entry was read from (its stream's, whatever its fields say)."""
        return priority_of(self.stream)


@dataclass(frozen=True, slots=True)
class ClaimPage:
    cursor: str  # "0-0" once the stream's pending list has been walked to its end
    claimed: list[Delivery]
    deleted: list[str]  # pending ids whose entries are gone: nothing can be done with them


class ConsumerGroup:
    def __init__(
        self,
        client: aioredis.Redis,
        reader: aioredis.Redis,
        group: str,
        streams: Mapping[str, int],
        consumer: str,
    ) -> None:
        """`streams` maps each stream to its shard; `reader` takes the blocking reads."""
        self.client = client
        self.reader = reader
        self.group = group
        self.streams = dict(streams)
        self.consumer = consumer
        self._sharded = ShardedReads(self) if is_cluster(reader) else None

    async def ensure(self) -> None:
        """Create the group on every stream (and the stream), where it is missing."""
        for stream in self.streams:
            try:
                await self.client.xgroup_create(stream, self.group, id="0", mkstream=True)
            except aioredis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def read(
        self,
        count: int,
        block_ms: int | None = None,
        *,
        own_pending: bool = False,
        streams: Iterable[str] | None = None,
    ) -> list[Delivery]:
        """New entries (or, with `own_pending`, those already delivered to this consumer)."""
        wanted = list(streams or self.streams)
        if self._sharded is not None:
            return await self._sharded.read(wanted, count, block_ms, own_pending)
        return await self.read_streams(wanted, count, block_ms, own_pending)

    async def wait_for_entries(self, block_ms: int) -> list[Delivery]:
        """Block until an entry arrives on any stream; at most one entry of each stream.

        The worker reads its lanes in order with read.lua (Queue.read) and blocks here only
        when every lane was empty: what wakes it is one entry a stream, and the next read
        takes the rest in lane order (rule 17)."""
        streams = list(self.streams)
        if self._sharded is not None:
            return await self._sharded.read(streams, len(streams), block_ms, False)
        return await self.read_streams(streams, 1, block_ms, False)

    def arrived(self) -> list[Delivery]:
        """Entries that reads left blocked on a cluster brought since (none on one Redis)."""
        return self._sharded.finished() if self._sharded is not None else []

    async def read_streams(
        self,
        streams: Sequence[str],
        count: int,
        block_ms: int | None,
        own_pending: bool,
        **options: Any,
    ) -> list[Delivery]:
        """One XREADGROUP over `streams` (all in one slot on a cluster)."""
        start = "0" if own_pending else ">"
        reply: Any
        if options:  # a node named (cluster): the command as redis-py's xreadgroup sends it
            block = ["BLOCK", block_ms] if block_ms is not None else []
            reader: Any = self.reader
            reply = await reader.execute_command(
                "XREADGROUP",
                "GROUP",
                self.group,
                self.consumer,
                "COUNT",
                count,
                *block,
                "STREAMS",
                *streams,
                *[start] * len(streams),
                **options,
            )
        else:
            reply = await self.reader.xreadgroup(
                self.group, self.consumer, dict.fromkeys(streams, start), count, block_ms
            )
        deliveries: list[Delivery] = []
        for stream, entries in reply or []:
            name = text(stream)
            shard = self.streams[name]
            # (a pending entry deleted meanwhile comes back with no fields: {} here)
            deliveries += [
                Delivery(name, shard, text(entry_id), fields or {}) for entry_id, fields in entries
            ]
        return deliveries

    async def close(self) -> None:
        """Wait for reads still blocked on a cluster (at most one block): what they took stays
        pending on this consumer, and is claimed by another once idle."""
        if self._sharded is not None:
            await self._sharded.close()

    async def claim(
        self,
        stream: str,
        min_idle_ms: int,
        count: int,
        cursor: str = "0-0",
        *,
        with_counts: bool = True,
    ) -> ClaimPage:
        """One page of entries idle longer than `min_idle_ms` (a dead consumer's), now ours."""
        reply = await self.client.xautoclaim(
            stream, self.group, self.consumer, min_idle_ms, start_id=cursor, count=count
        )
        claimed = [(text(entry_id), fields) for entry_id, fields in reply[1]]
        deleted = [text(d) for d in reply[2]] if len(reply) > 2 else []
        counts = (
            await self.delivery_counts(stream, [i for i, _ in claimed])
            if (with_counts and claimed)
            else {}
        )
        shard = self.streams[stream]
        return ClaimPage(
            text(reply[0]),
            [
                Delivery(stream, shard, entry_id, fields, counts.get(entry_id, 1))
                for entry_id, fields in claimed
            ],
            deleted,
        )

    async def delivery_counts(self, stream: str, entry_ids: Sequence[str]) -> dict[str, int]:
        """How many times each entry has been delivered (XPENDING), in one round trip."""
        async with self.client.pipeline(transaction=False) as pipe:
            for entry_id in entry_ids:
                pipe.xpending_range(stream, self.group, min=entry_id, max=entry_id, count=1)
            replies = await pipe.execute()
        return {
            entry_id: int(info[0]["times_delivered"])
            for entry_id, info in zip(entry_ids, replies, strict=True)
            if info
        }

    async def refresh(self, stream: str, entry_ids: Sequence[str]) -> None:
        """Reset the idle time of entries this consumer still works on (XCLAIM JUSTID does so
        without counting a delivery), so no other consumer takes them over."""
        if entry_ids:
            await self.client.xclaim(
                stream, self.group, self.consumer, 0, list(entry_ids), justid=True
            )

    async def ack(self, deliveries: Sequence[Delivery], *, delete: bool) -> None:
        async with self.client.pipeline(transaction=False) as pipe:
            for delivery in deliveries:
                pipe.xack(delivery.stream, self.group, delivery.entry_id)
                if delete:
                    pipe.xdel(delivery.stream, delivery.entry_id)
            await pipe.execute()

    async def forget(self) -> bool:
        """Leave the group tidy: remove this consumer if it holds nothing. False if it does."""
        await self.close()
        for stream in self.streams:
            held = await self.client.xpending_range(
                stream, self.group, min="-", max="+", count=1, consumername=self.consumer
            )
            if held:
                return False
        for stream in self.streams:
            await self.client.xgroup_delconsumer(stream, self.group, self.consumer)
        return True


class ShardedReads:
    """Reads on Redis Cluster: one XREADGROUP per stream, each sent to its stream's master.

    A read first asks every stream without blocking (concurrently, one round trip per stream,
    connections pooled per node). Only when all are empty does it block, on every stream at
    once, and it returns as soon as one of them answers with entries. The blocked reads of the
    other streams are not cancelled (a cancelled XREADGROUP may have taken entries the reply
    never brought): they stay in flight and what they bring is returned by the next read. Each
    stream is asked for an equal share of `count`, so together they never bring more than one
    read would (rounded up to one entry per stream).
    """

    def __init__(self, group: ConsumerGroup) -> None:
        self.group = group
        self._blocked: dict[str, asyncio.Task[list[Delivery]]] = {}

    async def _node(self, stream: str) -> Any:
        reader: Any = self.group.reader
        # The slot map is loaded on first use, and again after a node failed (redis-py sets
        # this flag then): ask for the node only once the map is current.
        if getattr(reader, "_initialize", False):
            await reader.initialize()
        return reader.get_node_from_key(stream)

    async def _one(
        self, stream: str, count: int, block_ms: int | None, own_pending: bool
    ) -> list[Delivery]:
        # The node is named: XREADGROUP's keys are "movable", and redis-py would otherwise ask
        # the server for them (COMMAND GETKEYS) on every call. A MOVED reply is still followed.
        return await self.group.read_streams(
            [stream], count, block_ms, own_pending, target_nodes=await self._node(stream)
        )

    def finished(self) -> list[Delivery]:
        """Entries of blocked reads that have finished; raises the first one's error."""
        deliveries: list[Delivery] = []
        error: BaseException | None = None
        for stream, task in list(self._blocked.items()):
            if task.done():
                del self._blocked[stream]
                if task.cancelled():
                    continue
                if task.exception() is not None:
                    error = error or task.exception()
                else:
                    deliveries += task.result()
        if error is not None and not deliveries:
            raise error
        return deliveries

    async def read(
        self, streams: Sequence[str], count: int, block_ms: int | None, own_pending: bool
    ) -> list[Delivery]:
        deliveries = self.finished()
        if deliveries:
            return deliveries
        free = [s for s in streams if s not in self._blocked]
        # Each stream gets an equal share: together they never bring (much) more than `count`.
        share = max(1, -(-count // max(len(streams), 1)))
        replies = await asyncio.gather(*(self._one(s, share, None, own_pending) for s in free))
        deliveries = [d for reply in replies for d in reply]
        if deliveries or block_ms is None or own_pending:
            return deliveries
        for stream in free:
            self._blocked[stream] = asyncio.create_task(self._one(stream, share, block_ms, False))
        waiting = set(self._blocked.values())
        deadline = asyncio.get_running_loop().time() + block_ms / 1000 + 1.0
        while waiting:
            timeout = deadline - asyncio.get_running_loop().time()
            if timeout <= 0:
                break
            done, waiting = await asyncio.wait(
                waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if not done:
                break
            deliveries = self.finished()
            if deliveries:
                return deliveries
        return self.finished()

    async def close(self) -> None:
        if self._blocked:
            await asyncio.wait(list(self._blocked.values()), timeout=READER_WAIT_S)
            for task in self._blocked.values():
                task.cancel()
            await asyncio.gather(*self._blocked.values(), return_exceptions=True)
            self._blocked.clear()


READER_WAIT_S = 1.2  # a blocked read returns within its block (1 s for the worker's reads)
