"""Coalesce the Lua script calls made in one event-loop tick into one pipelined round trip.

Every handler task calls `begin` before its send and `sent` after; at a few hundred messages
per second many of those calls are issued in the same loop iteration. Sent one by one, each
costs a socket write, a read and redis-py's per-command overhead; pipelined, a batch costs one
of each. Every script still runs atomically on its own, in call order; a batch that fails on
the connection fails each of its callers with that error, exactly as a single call would.
On Redis Cluster the batch is split by node (a pipeline per master, sent concurrently); a
script whose slot moved (MOVED/ASK) is sent again to its new master by redis-py, and one that
a new master does not know yet (NOSCRIPT after a failover) is loaded and run again here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError

_Call = tuple[Any, Sequence[Any], Sequence[Any], "asyncio.Future[Any]", bool]
Replicated = Callable[[Sequence[str]], Awaitable[None]]


class ScriptBatcher:
    def __init__(
        self, client: aioredis.Redis, max_batch: int = 256, replicated: Replicated | None = None
    ) -> None:
        """`replicated(keys)` returns once the replicas hold what was written on those keys'
        masters (SMSRELAY_REDIS_WAIT_REPLICAS); a call made with `replicated=True` answers only
        after it, one wait for the whole batch."""
        self._client = client
        self._max_batch = max_batch
        self._replicated = replicated
        self._pending: list[_Call] = []
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def call(
        self, script: Any, keys: Sequence[Any], args: Sequence[Any], *, replicated: bool = False
    ) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((script, keys, args, future, replicated and bool(self._replicated)))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)  # after the callbacks of this tick: they coalesce
        return await future

    def _flush(self) -> None:
        self._scheduled = False
        batch, self._pending = self._pending, []
        for start in range(0, len(batch), self._max_batch):
            task = asyncio.create_task(self._run(batch[start : start + self._max_batch]))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def run_together(
        self, calls: Sequence[tuple[Any, Sequence[Any], Sequence[Any]]]
    ) -> list[Any]:
        """Run these script calls now as one pipeline, in order: each reply, or its error in
        its place (a connection error in every place)."""
        try:
            return await self.execute(calls)
        except Exception as exc:
            return [exc] * len(calls)

    async def _run(self, batch: list[_Call]) -> None:
        try:
            results = await self.execute([(script, keys, args) for script, keys, args, *_ in batch])
            wait_error: Exception | None = None
            waited = [keys for _, keys, _, _, wait in batch if wait]
            if waited and self._replicated is not None:
                try:
                    await self._replicated([str(key) for keys in waited for key in keys])
                except Exception as exc:  # the scripts ran; their callers try again
                    wait_error = exc
        except asyncio.CancelledError:
            for *_, future, _ in batch:
                future.cancel()
            raise
        except Exception as exc:  # the connection failed: each caller sees it, as alone
            for *_, future, _ in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (*_, future, wait), result in zip(batch, results, strict=True):
            if future.done():  # its caller was cancelled meanwhile
                continue
            if wait and wait_error is not None:
                future.set_exception(wait_error)
            elif isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def execute(self, calls: Sequence[tuple[Any, Sequence[Any], Sequence[Any]]]) -> list[Any]:
        """Replies in order, a command's Redis error in its place; raises when the
        connection fails. A script Redis no longer has (restart, failover) is loaded again."""
        if len(calls) == 1:
            script, keys, args = calls[0]
            return [await _outcome(script(keys=keys, args=args))]
        async with self._client.pipeline(transaction=False) as pipe:
            for script, keys, args in calls:
                # (execute_command: redis-py 8.1 refuses `pipe.evalsha` on a cluster pipeline,
                # redis-py#2914, while it routes EVALSHA by its keys; on a cluster the pipeline
                # is one per node, sent concurrently, each command in its slot's node.)
                pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
            results: list[Any] = await pipe.execute(raise_on_error=False)
        for index, (script, keys, args) in enumerate(calls):
            if isinstance(results[index], NoScriptError):
                results[index] = await _outcome(script(keys=keys, args=args))
        return results


async def _outcome(call: Awaitable[Any]) -> Any:
    """The reply, or the Redis error in its place (how a pipeline reports each command)."""
    try:
        return await call
    except RedisError as exc:
        return exc
