"""Coalesced Lua calls (ScriptBatcher) and shared batch decisions, against real Redis."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from smsrelay.consumers.handler import PendingDecision
from smsrelay.streams.batching import ScriptBatcher

ECHO = "return {KEYS[1], ARGV[1]}"


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    connection = aioredis.Redis.from_url(redis_url)
    yield connection
    await connection.aclose()


async def test_calls_in_one_tick_go_out_as_one_pipeline_in_order(
    client: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = client.register_script(ECHO)
    await script(keys=["k"], args=["warm"])  # loaded, so the pipeline's EVALSHA finds it
    executed: list[int] = []
    real_execute = aioredis.client.Pipeline.execute

    async def counting(self: Any, raise_on_error: bool = True) -> Any:
        executed.append(len(self.command_stack))
        return await real_execute(self, raise_on_error)

    monkeypatch.setattr(aioredis.client.Pipeline, "execute", counting)
    batcher = ScriptBatcher(client)
    replies = await asyncio.gather(*(batcher.call(script, [f"k{i}"], [i]) for i in range(50)))
    assert [[k.decode(), v.decode()] for k, v in replies] == [[f"k{i}", str(i)] for i in range(50)]
    assert executed == [50]


async def test_a_flushed_script_cache_is_reloaded_for_each_caller(client: aioredis.Redis) -> None:
    # A script this server has never seen stands for one a restart or failover forgot (a
    # SCRIPT FLUSH would forget every other user's scripts on this shared Redis).
    script = client.register_script(f"{ECHO} -- {uuid.uuid4()}")
    assert await client.script_exists(script.sha) == [False]
    batcher = ScriptBatcher(client)
    replies = await asyncio.gather(*(batcher.call(script, ["k"], [i]) for i in range(5)))
    assert [v.decode() for _, v in replies] == ["0", "1", "2", "3", "4"]


async def test_a_connection_error_reaches_every_caller_of_the_batch() -> None:
    down = aioredis.Redis.from_url("redis://127.0.0.1:1/0")  # nothing listens on port 1
    try:
        script = down.register_script(ECHO)
        batcher = ScriptBatcher(down)
        results = await asyncio.gather(
            *(batcher.call(script, ["k"], [i]) for i in range(3)), return_exceptions=True
        )
    finally:
        await down.aclose()
    assert [type(r) for r in results] == [RedisConnectionError] * 3


async def test_a_cancelled_handler_does_not_cancel_its_batch_mates_decision() -> None:
    decided = asyncio.get_running_loop().create_future()
    first, second = PendingDecision(decided, 0), PendingDecision(decided, 1)
    waiting_first = asyncio.ensure_future(first.result())
    waiting_second = asyncio.ensure_future(second.result())
    await asyncio.sleep(0)
    waiting_first.cancel()
    await asyncio.sleep(0)
    mine: Any = ("the second entry's decision",)
    decided.set_result([None, mine])
    assert await waiting_second is mine
    assert waiting_first.cancelled()
