"""A consumer group over a set of streams: create, read, claim, refresh, acknowledge, forget.

The worker reads the request streams through one (group `workers`), the mirror the dead-letter
and outcome streams through another (group `mirror`). Every XREADGROUP, XAUTOCLAIM, XCLAIM and
XGROUP call of smsrelay is here.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from smsrelay.streams.clients import text
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
        start = "0" if own_pending else ">"
        wanted: Any = {stream: start for stream in (streams or self.streams)}
        reply: Any = await self.reader.xreadgroup(
            self.group, self.consumer, wanted, count=count, block=block_ms
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
        for stream in self.streams:
            held = await self.client.xpending_range(
                stream, self.group, min="-", max="+", count=1, consumername=self.consumer
            )
            if held:
                return False
        for stream in self.streams:
            await self.client.xgroup_delconsumer(stream, self.group, self.consumer)
        return True
