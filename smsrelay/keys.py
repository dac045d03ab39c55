"""Every Redis key of smsrelay, in one place.

All keys of one shard share the hash tag `{<namespace>:<shard>}`, so each Lua script touches a
single cluster slot and the same code runs on Redis Cluster. A phone number always maps to the
same shard, so its rate-limit window lives beside the messages sent to it.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import cache, cached_property

WORKER_GROUP = "workers"
MIRROR_GROUP = "mirror"


def shard_of(phone: str, shards: int) -> int:
    """Stable across processes and languages (CRC-32 of the E.164 text)."""
    return zlib.crc32(phone.encode()) % shards if shards > 1 else 0


@dataclass(frozen=True)
class ShardKeys:
    namespace: str
    shard: int = 0

    @cached_property
    def tag(self) -> str:
        return "{" + f"{self.namespace}:{self.shard}" + "}"

    @cached_property
    def requests(self) -> str:
        return f"{self.tag}:requests"

    @cached_property
    def dead(self) -> str:
        return f"{self.tag}:dead"

    @cached_property
    def outcomes(self) -> str:
        """Stream of outcomes of replayed dead letters (sent), mirrored into Postgres."""
        return f"{self.tag}:outcomes"

    @cached_property
    def delayed(self) -> str:
        """Sorted set: message id -> due time (ms) of its next attempt or deferred send."""
        return f"{self.tag}:delayed"

    @cached_property
    def delayed_payload(self) -> str:
        """Hash: message id -> JSON of the entry fields to put back on the stream when due."""
        return f"{self.tag}:delayed:payload"

    @cached_property
    def dead_counts(self) -> str:
        """Hash: dead-letter reason -> count, summed over every worker and restart."""
        return f"{self.tag}:stats:dead"

    @cached_property
    def admin_retry_counts(self) -> str:
        """Hash: admin retry outcome -> count."""
        return f"{self.tag}:stats:admin_retries"

    def idempotency(self, key: str) -> str:
        return f"{self.tag}:idem:{key}"

    def sent(self, message_id: str) -> str:
        """The sent marker: the provider's SID once it accepted the message."""
        return f"{self.tag}:sent:{message_id}"

    def state(self, message_id: str) -> str:
        """Hash of a message in progress: owner entry, attempts, attempt times, last error."""
        return f"{self.tag}:msg:{message_id}"

    def send_lock(self, message_id: str) -> str:
        """Held while an admin retry sends a message, so two retries send at most one SMS."""
        return f"{self.tag}:lock:{message_id}"

    def rate_limit(self, phone: str) -> str:
        return f"{self.tag}:rl:{phone}"


def all_shards(namespace: str, shards: int) -> list[ShardKeys]:
    return [ShardKeys(namespace, shard) for shard in range(shards)]


@cache
def shard_keys(namespace: str, shard: int = 0) -> ShardKeys:
    """One ShardKeys per (namespace, shard) for the process: hot paths name several keys a
    message, and each name is computed once on its object."""
    return ShardKeys(namespace, shard)
