"""The ceiling: a bare asyncio loop, XREADGROUP -> twilio SDK create -> XACK, nothing else.

    BENCH_REDIS_URL=... BENCH_STREAM=... BENCH_FAKE_URL=... BENCH_CONCURRENCY=64 \
        .venv/bin/python -m bench.bare_loop

No parsing, rate limit, sent marker, retries, metrics or logs: what this stack (redis-py
asyncio + the SDK's aiohttp client, on uvloop where installed, like `smsrelay worker`) costs
per message at best. Reads the smsrelay stream
entries (fields `to`, `body`) through its own consumer group. Stops on SIGTERM/SIGINT, letting
the sends in flight finish.
"""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import redis.asyncio as aioredis

from bench.sdk import AsyncSender

GROUP = "bare"


async def main() -> None:
    url = os.environ["BENCH_REDIS_URL"]
    stream = os.environ["BENCH_STREAM"]
    concurrency = int(os.environ.get("BENCH_CONCURRENCY", "64"))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    client = aioredis.Redis.from_url(url, max_connections=concurrency + 4)
    reader = aioredis.Redis.from_url(url)
    sender = AsyncSender(os.environ["BENCH_FAKE_URL"], concurrency)
    with_slot = asyncio.Event()
    inflight: set[asyncio.Task[None]] = set()

    async def one(entry_id: bytes, to: str, text: str) -> None:
        await sender.send(to, text)
        await client.xack(stream, GROUP, entry_id)

    def done(task: asyncio.Task[None]) -> None:
        inflight.discard(task)
        with_slot.set()

    try:
        try:
            await client.xgroup_create(stream, GROUP, id="0", mkstream=True)
        except aioredis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        while not stop.is_set():
            free = concurrency - len(inflight)
            if free <= 0:
                with_slot.clear()
                await with_slot.wait()
                continue
            reply: Any = await reader.xreadgroup(
                GROUP, "bare-1", {stream: ">"}, count=free, block=1000
            )
            for _, entries in reply or []:
                for entry_id, fields in entries:
                    task = asyncio.create_task(
                        one(entry_id, fields[b"to"].decode(), fields[b"body"].decode())
                    )
                    inflight.add(task)
                    task.add_done_callback(done)
        if inflight:
            await asyncio.wait(inflight, timeout=10)
    finally:
        await sender.close()
        await reader.aclose()
        await client.aclose()


def run() -> None:
    """On uvloop where installed, as `smsrelay worker` runs: the ceiling of the same stack."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
        return
    uvloop.run(main())


if __name__ == "__main__":
    run()
