"""Bulk replay: dead letters back onto the request stream, at SMSRELAY_REPLAY_RATE per second.

Each entry goes through the publish script with the idempotency key `replay:<dead-letter id>`,
so a double click (or a replay restarted after a crash) never queues one dead letter twice.
The entry keeps its message id and gains `replay_of`: the worker's sent marker stops a second
SMS for a message that did go out, and the worker reports the outcome on the outcome stream.
"""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from smsrelay import clock
from smsrelay.consumers.outage import OutageLog, until_done
from smsrelay.keys import ShardKeys, shard_of
from smsrelay.lua import Scripts
from smsrelay.redis_conn import text
from smsrelay.schemas.dead_letter import DeadLetter
from smsrelay.schemas.entry import SCHEMA_VERSION
from smsrelay.schemas.records import FailedSmsRecord

if TYPE_CHECKING:
    from smsrelay.admin.service import AdminService


def fields_from_record(record: FailedSmsRecord) -> dict[str, str]:
    """The request entry rebuilt from the row, when its dead-letter entry is gone."""
    return {"v": SCHEMA_VERSION, "id": str(record.id), "to": record.phone,
            "body": record.message, "created_at": clock.iso(record.created_at)}


async def original_fields(service: AdminService, record: FailedSmsRecord) -> dict[str, str]:
    if record.dead_letter_id:
        found = await service.redis.xrange(service.keys(record.shard).dead,
                                           min=record.dead_letter_id,
                                           max=record.dead_letter_id, count=1)
        if found:
            entry_id, raw = found[0]
            return DeadLetter.from_stream(text(entry_id), raw).original_fields()
    return fields_from_record(record)


async def publish_one(service: AdminService, scripts: Scripts,
                      record: FailedSmsRecord) -> bool:
    """Queue one record; False when this dead letter was already replayed (a duplicate)."""
    fields = await original_fields(service, record)
    # An empty replay_of still asks the worker for an outcome (rows without a dead entry).
    fields["replay_of"] = record.dead_letter_id or ""
    fields["id"] = str(record.id)
    settings = service.settings
    keys = ShardKeys(settings.namespace, shard_of(fields.get("to", record.phone),
                                                  settings.shards))
    args: list[str] = [str(settings.idempotency_ttl_seconds), str(record.id)]
    for name, value in fields.items():
        args += [name, value]
    marker = f"replay:{record.dead_letter_id or record.id}"
    reply = await scripts.publish(keys=[keys.requests, keys.idempotency(marker)], args=args)
    return bool(int(reply[0]))


async def publish_replay(service: AdminService, records: Sequence[FailedSmsRecord],
                         queued: set[uuid.UUID], stopping: asyncio.Event,
                         progress: Callable[[int, int], None] | None = None) -> None:
    """Publish `records` in order, adding each id to `queued` once it is on the stream.

    A Redis outage pauses the replay (said once in the log); it resumes when Redis is back.
    """
    scripts = Scripts(service.redis)
    outage = OutageLog("redis")
    interval_s = 1.0 / service.settings.replay_rate
    started = clock.monotonic()
    for n, record in enumerate(records):
        delay = started + n * interval_s - clock.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await until_done(functools.partial(publish_one, service, scripts, record), outage,
                         stopping)
        queued.add(record.id)
        if progress is not None:
            progress(n + 1, len(records))
