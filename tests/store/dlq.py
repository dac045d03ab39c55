"""Dead letters for tests, written exactly as the worker's dead-letter script writes them."""

from __future__ import annotations

import random
import uuid
from typing import Any

import redis.asyncio as aioredis

from smsrelay import clock
from smsrelay.settings import Settings
from smsrelay.store.mirror import Mirror
from smsrelay.streams.clients import text
from smsrelay.streams.keys import ShardKeys, shard_of


def unique_phone() -> str:
    """A valid E.164 number no other test uses (and none of Twilio's magic numbers)."""
    return f"+1415{random.randint(2_000_000, 9_999_999)}"


def dead_letter_fields(
    message_id: str,
    phone: str,
    body: str = "Hi, your booking is in",
    *,
    reason: str = "permanent_error",
    error: str = "Twilio 21610: Attempt to send to unsubscribed recipient",
    attempts: int = 1,
    **extra: str,
) -> dict[str, str]:
    now = clock.now_iso()
    fields = {
        "v": "1",
        "id": message_id,
        "to": phone,
        "body": body,
        "created_at": now,
        "reason": reason,
        "error": error,
        "attempts": str(attempts),
        "first_attempt_at": now,
        "last_attempt_at": now,
        "dead_lettered_at": now,
        "source_entry_id": f"{random.randint(1, 10**12)}-0",
    }
    fields.update(extra)
    return fields


async def add_dead_letter(
    client: aioredis.Redis,
    settings: Settings,
    *,
    message_id: str | None = None,
    phone: str | None = None,
    **kwargs: Any,
) -> tuple[str, str]:
    """XADD a dead letter and count it, as deadletter.lua does; returns (message id, entry id)."""
    message_id = message_id or str(uuid.uuid4())
    phone = phone or unique_phone()
    fields = dead_letter_fields(message_id, phone, **kwargs)
    keys = ShardKeys(settings.namespace, shard_of(phone, settings.shards))
    entry_id = await client.xadd(keys.dead, fields)  # type: ignore[arg-type]
    await client.hincrby(keys.dead_counts, fields["reason"], 1)
    return message_id, text(entry_id)


async def mirror_now(settings: Settings) -> int:
    """Mirror everything waiting in the dead-letter and outcome streams into Postgres."""
    return await Mirror(settings, name="test-mirror").drain()
