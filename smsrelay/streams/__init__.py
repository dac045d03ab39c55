"""The stream layer: every Redis key, client, script and stream operation of smsrelay.

Producers, workers, the mirror, the admin and `smsrelay status` all reach Redis through here
(docs/design.md, "Module map"); it knows nothing of them.
"""

from __future__ import annotations

from smsrelay.streams.group import ClaimPage, ConsumerGroup, Delivery, consumer_name
from smsrelay.streams.keys import FleetKeys, ShardKeys, all_shards, shard_keys, shard_of
from smsrelay.streams.queue import Begin, BeginCall, Queue, Sender, Verdict

__all__ = [
    "Begin",
    "BeginCall",
    "ClaimPage",
    "ConsumerGroup",
    "Delivery",
    "FleetKeys",
    "Queue",
    "Sender",
    "ShardKeys",
    "Verdict",
    "all_shards",
    "consumer_name",
    "shard_keys",
    "shard_of",
]
