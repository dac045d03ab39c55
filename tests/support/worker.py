"""A worker in the test's own loop, and what a test reads of the streams it works on."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import redis

from smsrelay.consumers.worker import Worker
from smsrelay.settings import Settings
from smsrelay.streams.keys import ShardKeys
from tests.support.clients import redis_client


@asynccontextmanager
async def running_worker(settings: Settings, **kwargs: Any) -> AsyncIterator[Worker]:
    worker = Worker(settings, **kwargs)
    task = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        worker.stop()
        await asyncio.wait_for(task, timeout=30)


Entries = list[tuple[bytes, dict[bytes, bytes]]]


def entries(reply: object) -> Entries:
    """An XRANGE reply of a client without decode_responses, as the bytes it holds (redis-py
    8 types it as bytes or str, or None)."""
    return cast(Entries, reply or [])


def dead_letters(settings: Settings, shard: int = 0) -> list[dict[str, str]]:
    client = redis_client(settings.redis_url)
    entries = cast(
        list[tuple[bytes, dict[bytes, bytes]]],
        client.xrange(ShardKeys(settings.namespace, shard).dead),
    )
    return [
        {k.decode(errors="replace"): v.decode(errors="replace") for k, v in fields.items()}
        for _, fields in entries
    ]


def stream_state(settings: Settings, shard: int = 0) -> tuple[int, int]:
    """(length of the request stream, pending entries of the worker group)."""
    client = redis_client(settings.redis_url)
    keys = ShardKeys(settings.namespace, shard)
    length = client.xlen(keys.requests)
    try:
        pending = client.xpending(keys.requests, "workers")["pending"]
    except redis.ResponseError:
        pending = 0
    return int(length), int(pending)
