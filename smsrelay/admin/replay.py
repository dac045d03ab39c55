"""Bulk replay: dead letters back onto the request stream, within the namespace's replay budget.

Each entry goes through the publish script with the idempotency key `replay:<dead-letter id>`,
so a double click (or a replay restarted after a crash) never queues one dead letter twice.
The entry keeps its message id and gains `replay_of`: the worker's sent marker stops a second
SMS for a message that did go out, and the worker reports the outcome on the outcome stream.

The rate (SMSRELAY_REPLAY_RATE per second) is one budget in Redis for the namespace, shared
by every replay request and every admin process (rule 16).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import cast

from smsrelay import clock
from smsrelay.outage import Outages, until_done
from smsrelay.schemas.dead_letter import DeadLetter, DeadLetterReason
from smsrelay.schemas.entry import SCHEMA_VERSION
from smsrelay.schemas.records import FailedSmsRecord
from smsrelay.streams.clients import text
from smsrelay.streams.keys import shard_of
from smsrelay.streams.queue import Queue
from smsrelay.streams.wire import RawFields

# A budget of one token: replays go out evenly, never in a burst after a pause.
REPLAY_BURST = 1


@dataclass(frozen=True)
class ReplayPlan:
    records: list[FailedSmsRecord]
    skipped: int


def fields_from_record(record: FailedSmsRecord) -> dict[str, str]:
    """The request entry rebuilt from the row, when its dead-letter entry is gone (trimmed)."""
    return {
        "v": SCHEMA_VERSION,
        "id": str(record.id),
        "to": record.phone,
        "body": record.message,
        "created_at": clock.iso(record.created_at),
    }


async def original_fields(queue: Queue, record: FailedSmsRecord) -> dict[str, str]:
    if record.dead_letter_id:
        found = await queue.redis.xrange(
            queue.keys(record.shard).dead,
            min=record.dead_letter_id,
            max=record.dead_letter_id,
            count=1,
        )
        if found:
            entry_id, raw = found[0]
            letter = DeadLetter.from_stream(text(entry_id), cast(RawFields, raw or {}))
            if letter.truncation_note is None:
                return letter.original_fields()
    return fields_from_record(record)


def renew_expiry(fields: dict[str, str], ttl_seconds: float) -> None:
    """A replay is an admin's decision to send now: the message gets the time to live it was
    published with (its own `expires_at` - `created_at`, else SMSRELAY_MESSAGE_TTL_SECONDS)
    again, counted from the replay. Without this an expired message would expire again
    before its first attempt."""
    try:
        created = clock.parse_iso(fields["created_at"])
        lifetime = (clock.parse_iso(fields["expires_at"]) - created).total_seconds()
    except (KeyError, ValueError):
        lifetime = ttl_seconds
    fields.pop("expires_at", None)
    if lifetime > 0:
        fields["expires_at"] = clock.iso(clock.now() + timedelta(seconds=lifetime))


async def publish_one(queue: Queue, record: FailedSmsRecord) -> bool:
    """Queue one record; False when this dead letter was already replayed (a duplicate)."""
    fields = await original_fields(queue, record)
    # An empty replay_of still asks the worker for an outcome (rows without a dead entry).
    fields["replay_of"] = record.dead_letter_id or ""
    fields["id"] = str(record.id)
    if record.reason == DeadLetterReason.UNDELIVERED.value and record.message_sid:
        fields["resend_of"] = record.message_sid  # sent once, never delivered: a new SMS
    renew_expiry(fields, queue.settings.message_ttl_seconds)
    shard = shard_of(fields.get("to", record.phone), queue.settings.shards)
    return await queue.publish(fields, f"replay:{record.dead_letter_id or record.id}", shard)


async def wait_for_budget(queue: Queue) -> None:
    """Take one token of the namespace's replay budget, waiting for it as long as needed."""
    while True:
        granted, wait_ms = await queue.take(
            queue.fleet.replay_budget, queue.settings.replay_rate, REPLAY_BURST
        )
        if granted:
            return
        await asyncio.sleep(max(wait_ms, 1) / 1000)


async def publish_replay(
    queue: Queue,
    outages: Outages,
    records: Sequence[FailedSmsRecord],
    queued: set[uuid.UUID],
    stopping: asyncio.Event,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Publish `records` in order, adding each id to `queued` once it is on the stream.

    A Redis outage pauses the replay (said once in the log); it resumes when Redis is back.
    """
    for n, record in enumerate(records):
        await until_done(partial(wait_for_budget, queue), outages, stopping)
        await until_done(partial(publish_one, queue, record), outages, stopping)
        queued.add(record.id)
        if progress is not None:
            progress(n + 1, len(records))
