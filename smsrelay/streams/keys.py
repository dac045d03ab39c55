"""Every Redis key of smsrelay, in one place.

All keys of one shard share the hash tag `{<namespace>:<shard>}`, so each Lua script touches a
single cluster slot and the same code runs on Redis Cluster (rule 1 of docs/design.md). A
phone number always maps to the same shard, so its rate-limit window lives beside the
messages sent to it. State shared by the whole fleet of a namespace (the replay budget) has a
tag of its own, `{<namespace>}`, and is consulted per batch, never per message (rule 16).
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from functools import cache, cached_property

from smsrelay.schemas.entry import Priority

WORKER_GROUP = "workers"
MIRROR_GROUP = "mirror"


def shard_of(phone: str, shards: int) -> int:
    """Unsigned CRC-32 (IEEE) of the E.164 text, modulo the shard count.

    The same in every language: `zlib.crc32` is unsigned in Python 3; in JavaScript the
    popular `crc-32` package returns a signed value (`>>> 0` makes it unsigned). Test vector:
    crc32("+14155552672") = 2345989422 (signed: -1948977874), so with 4 shards that number is
    on shard 2, where a signed remainder would give -2.
    """
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
        """The `normal` lane: the stream every publisher used before lanes existed."""
        return f"{self.tag}:requests"

    @cached_property
    def requests_high(self) -> str:
        return f"{self.tag}:requests:high"

    @cached_property
    def requests_bulk(self) -> str:
        return f"{self.tag}:requests:bulk"

    @cached_property
    def lanes(self) -> tuple[str, str, str]:
        """The shard's request streams in read order: high, normal, bulk (rule 17)."""
        return (self.requests_high, self.requests, self.requests_bulk)

    def lane(self, priority: str | None) -> str:
        """The request stream of a priority (anything unknown: `normal`)."""
        if priority == "high":
            return self.requests_high
        if priority == "bulk":
            return self.requests_bulk
        return self.requests

    @cached_property
    def dead(self) -> str:
        return f"{self.tag}:dead"

    @cached_property
    def outcomes(self) -> str:
        """Stream of outcomes the mirror writes to Postgres (a replayed dead letter sent)."""
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
        """Hash of a message in progress: its owner (the sender now allowed to call the
        provider), attempts, attempt times, last error."""
        return f"{self.tag}:msg:{message_id}"

    def rate_limit(self, phone: str) -> str:
        return f"{self.tag}:rl:{phone}"

    def trace(self, message_id: str) -> str:
        """A message's trace: a capped list of `ms|event|detail`, kept
        SMSRELAY_TRACE_TTL_SECONDS (rule 18)."""
        return f"{self.tag}:trace:{message_id}"


@dataclass(frozen=True)
class FleetKeys:
    """Keys of state shared by every process of a namespace, outside any shard."""

    namespace: str

    @cached_property
    def tag(self) -> str:
        return "{" + self.namespace + "}"

    @cached_property
    def replay_budget(self) -> str:
        """The bulk replay's rate (GCRA): one budget across requests and admin processes."""
        return f"{self.tag}:budget:replay"

    @cached_property
    def breaker(self) -> str:
        """The provider breaker (a hash): state, consecutive failures, cooldown, probe."""
        return f"{self.tag}:breaker"

    @cached_property
    def breaker_run(self) -> str:
        """The messages of the current run of systemic failures (a list, capped)."""
        return f"{self.tag}:breaker:run"

    @cached_property
    def send_budget(self) -> str:
        """SMSRELAY_SEND_RATE (GCRA): one budget of provider requests for the fleet."""
        return f"{self.tag}:budget:send"

    @cached_property
    def receipts(self) -> str:
        """Twilio's status callbacks, as the admin received them, for the mirror to apply."""
        return f"{self.tag}:receipts"

    @cached_property
    def delivery_counts(self) -> str:
        """Hash: delivery status -> receipts that moved a message to it, over all time."""
        return f"{self.tag}:stats:delivery"

    @cached_property
    def readiness_probe(self) -> str:
        """A short-lived key the admin writes to tell whether Redis accepts writes."""
        return f"{self.tag}:probe"


def all_shards(namespace: str, shards: int) -> list[ShardKeys]:
    return [shard_keys(namespace, shard) for shard in range(shards)]


@cache
def shard_keys(namespace: str, shard: int = 0) -> ShardKeys:
    """One ShardKeys per (namespace, shard) for the process: hot paths name several keys a
    message, and each name is computed once on its object."""
    return ShardKeys(namespace, shard)


_LANE_SUFFIXES = {"high": "}:requests:high", "normal": "}:requests", "bulk": "}:requests:bulk"}


def priority_of(stream: str) -> Priority:
    """The lane of a request stream, from its name."""
    if stream.endswith(":requests:high"):
        return "high"
    if stream.endswith(":requests:bulk"):
        return "bulk"
    return "normal"


def request_stream_pattern(namespace: str) -> str:
    """A SCAN pattern for every request stream of a namespace, whatever its shard label and
    lane (it matches a few other names too: `shard_label` tells them apart)."""
    escaped = re.sub(r"([\[\]*?\\])", r"\\\1", namespace)
    return "{" + escaped + ":*}:requests*"


def shard_label(namespace: str, key: str) -> str | None:
    """The shard part of a request stream's name (`-4` in `{ns:-4}:requests:high`)."""
    prefix = "{" + namespace + ":"
    suffix = _LANE_SUFFIXES[priority_of(key)]
    if key.startswith(prefix) and key.endswith(suffix) and len(key) > len(prefix + suffix):
        return key[len(prefix) : -len(suffix)]
    return None


def replication_barrier(key: str) -> str:
    """A key in `key`'s slot for the barrier write before a WAIT (streams/clients.py)."""
    start = key.find("{")
    end = key.find("}", start + 1) if start >= 0 else -1
    tag = key[start : end + 1] if start >= 0 and end > start + 1 else "{" + key + "}"
    return f"{tag}:replicated"
