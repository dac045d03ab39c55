"""Trimming a stream whose entries a consumer group has settled, never one it has not."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from smsrelay.streams.clients import text


def _id(value: str) -> tuple[int, int]:
    ms, _, seq = value.partition("-")
    return int(ms), int(seq or 0)


async def trim_settled(client: aioredis.Redis, stream: str, group: str, retention_ms: int) -> int:
    """XTRIM MINID: drop entries older than `retention_ms` that `group` has read and settled.

    The bound is the lowest of: the retention cutoff (on the server's clock), the entry after
    the group's last-delivered id (what it has not read stays), and its oldest pending entry
    (what it has read but not settled stays: trimming a pending entry loses its payload).
    A stream without the group is left alone. Returns how many entries were removed.
    """
    try:
        groups: list[dict[Any, Any]] = await client.xinfo_groups(stream)
    except aioredis.ResponseError:  # no such stream
        return 0
    info = next((g for g in groups if text(g["name"]) == group), None)
    if info is None:
        return 0
    seconds, micros = await client.time()
    cutoff = (int(seconds) * 1000 + int(micros) // 1000 - retention_ms, 0)
    last_ms, last_seq = _id(text(info["last-delivered-id"]))
    bounds = [cutoff, (last_ms, last_seq + 1)]
    if int(info["pending"]):
        summary = await client.xpending(stream, group)
        bounds.append(_id(text(summary["min"])))
    ms, seq = min(bounds)
    if ms <= 0:
        return 0
    # exact (`=`), not `~`: an approximate trim removes only whole internal nodes
    return int(await client.xtrim(stream, minid=f"{ms}-{seq}", approximate=False))
