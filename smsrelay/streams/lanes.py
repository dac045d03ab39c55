"""Reading the three lanes of every shard in priority order (rule 17 of docs/design.md).

Each shard's `high`, `normal` and `bulk` streams share its hash tag, so read.lua takes from
all three in one call, in order: high first, then bulk's reserve, then normal, then bulk
again. One call per shard; the calls of all shards go in one pipelined round trip (one
pipeline per node on a cluster). The worker asks for its free send slots and no more, so
nothing read waits in its memory behind other entries.

Bulk's reserve is one slot in ten of what the worker reads, owed while bulk has a backlog:
the owed share is a credit that grows by a tenth of every read, is spent by bulk entries
read, and is capped at one read's tenth rounded up, so an idle bulk lane does not save up a
claim to jump ahead of normal later.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from smsrelay.streams.clients import text
from smsrelay.streams.group import Delivery
from smsrelay.streams.keys import WORKER_GROUP

if TYPE_CHECKING:
    from smsrelay.streams.queue import Queue

BULK_SHARE = 10  # bulk's slots while it has a backlog: one in this many, at least


def split(total: int, parts: int, start: int) -> list[int]:
    """`total` spread over `parts` as evenly as whole numbers go, the remainder to the parts
    from `start` on (round robin): each shard's share of a read."""
    base, extra = divmod(total, parts)
    return [base + (1 if (index - start) % parts < extra else 0) for index in range(parts)]


class LaneReader:
    def __init__(self, queue: Queue) -> None:
        self.queue = queue
        self.bulk_credit = 0  # in 1/BULK_SHARE of a slot: whole numbers, no rounding drift
        self._turn = 0  # the shard that gets the first odd slot of the next read

    def reserve(self, count: int) -> int:
        """How many of `count` slots bulk may take ahead of normal in this read."""
        # Capped at this read's tenth rounded up: an idle bulk lane saves up nothing more.
        self.bulk_credit = min(self.bulk_credit + count, count + BULK_SHARE - 1)
        return min(self.bulk_credit // BULK_SHARE, count)

    def spent(self, bulk_read: int) -> None:
        self.bulk_credit = max(0, self.bulk_credit - bulk_read * BULK_SHARE)

    async def read(self, count: int) -> list[Delivery]:
        queue = self.queue
        shards = queue.shards
        reserve = self.reserve(count)
        turn, self._turn = self._turn, (self._turn + 1) % len(shards)
        counts = split(count, len(shards), turn)
        reserves = split(reserve, len(shards), turn)
        asked = [
            (keys, n, min(r, n)) for keys, n, r in zip(shards, counts, reserves, strict=True) if n
        ]
        calls = [
            (queue.scripts.read, list(keys.lanes), [WORKER_GROUP, queue.consumer, n, r])
            for keys, n, r in asked
        ]
        replies = await queue.batcher.execute(calls)
        deliveries: list[Delivery] = []
        bulk_read = 0
        for (keys, _, _), reply in zip(asked, replies, strict=True):
            if isinstance(reply, Exception):
                raise reply
            for stream, entries in zip(keys.lanes, reply, strict=True):
                deliveries += [
                    Delivery(stream, keys.shard, text(entry_id), _pairs(flat))
                    for entry_id, flat in entries
                ]
            bulk_read += len(reply[2])
        self.spent(bulk_read)
        return deliveries


def _pairs(flat: list[Any]) -> dict[Any, Any]:
    return dict(zip(flat[::2], flat[1::2], strict=False))
