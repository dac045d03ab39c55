"""Publish cost: the wall time of one publish call, as a web handler would see it.

Each API publishes `count` messages one call at a time (after a warm-up), timed per call with
`perf_counter_ns`; rounds interleave the systems so background noise hits them alike, and the
report takes the median over rounds of each round's median and p99.

Every call publishes to a phone number not used before in the run (a cold cache, if the
producer keeps one). The floor is a raw redis-py XADD of the same fields smsrelay writes (`v`,
`id`, `to`, `body`, `created_at`), the id and timestamp made per call as any publisher must.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import redis
import redis.asyncio as aioredis

from bench import systems
from bench.common import SMSRELAY_DB, body, median, percentile, phone, redis_url, run_tag

SyncCall = Callable[[int], object]
AsyncCall = Callable[[int], Awaitable[object]]

APIS = (
    ("smsrelay.sync", "smsrelay `Producer.publish`"),
    ("smsrelay.async", "smsrelay `AsyncProducer.publish`"),
    ("xadd.sync", "raw redis-py `XADD` (the floor)"),
    ("xadd.async", "raw redis-py asyncio `XADD` (floor of the async API)"),
    ("dramatiq", "Dramatiq `actor.send`"),
    ("celery", "Celery `task.apply_async`"),
    ("arq", "arq `enqueue_job`"),
)
PEER_OF_API = {"dramatiq": "dramatiq", "celery": "celery", "arq": "arq"}


@dataclass
class PublishCost:
    api: str
    label: str
    count: int
    median_us: float = 0.0
    p99_us: float = 0.0
    rounds_median_us: list[float] = field(default_factory=list)
    rounds_p99_us: list[float] = field(default_factory=list)
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _now_iso() -> str:
    from smsrelay import clock

    return clock.now_iso()


# Every call of the whole run gets a number never used before in this process, so a cache of
# parsed numbers (if the producer keeps one) is always cold: the worst case, every call pays.
_serial = itertools.count(1)


def time_sync(call: SyncCall, count: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        call(next(_serial))
    samples = []
    for _ in range(count):
        i = next(_serial)
        started = time.perf_counter_ns()
        call(i)
        samples.append((time.perf_counter_ns() - started) / 1000)
    return samples


async def time_async(call: AsyncCall, count: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        await call(next(_serial))
    samples = []
    for _ in range(count):
        i = next(_serial)
        started = time.perf_counter_ns()
        await call(i)
        samples.append((time.perf_counter_ns() - started) / 1000)
    return samples


def _smsrelay_sync(tag: str, count: int, warmup: int) -> list[float]:
    from smsrelay.producers.publish import Producer

    system = systems.make("smsrelay", tag)
    try:
        with Producer(system.smsrelay_settings()) as producer:

            def call(i: int) -> object:
                result = producer.publish(phone(i), body(tag, i))
                if result.status != "queued":
                    raise RuntimeError(str(result))
                return result

            return time_sync(call, count, warmup)
    finally:
        system.cleanup()


def _smsrelay_async(tag: str, count: int, warmup: int) -> list[float]:
    from smsrelay.producers.publish import AsyncProducer

    system = systems.make("smsrelay", tag)

    async def run() -> list[float]:
        async with AsyncProducer(system.smsrelay_settings()) as producer:

            async def call(i: int) -> object:
                result = await producer.publish(phone(i), body(tag, i))
                if result.status != "queued":
                    raise RuntimeError(str(result))
                return result

            return await time_async(call, count, warmup)

    try:
        return asyncio.run(run())
    finally:
        system.cleanup()


def _fields(tag: str, i: int) -> dict[str, str]:
    return {
        "v": "1",
        "id": str(uuid.uuid4()),
        "to": phone(i),
        "body": body(tag, i),
        "created_at": _now_iso(),
    }


def _xadd_sync(tag: str, count: int, warmup: int) -> list[float]:
    system = systems.make("smsrelay", tag)
    client = redis.Redis.from_url(redis_url(SMSRELAY_DB))
    try:
        return time_sync(
            lambda i: client.xadd(system.stream, _fields(tag, i)),  # type: ignore[arg-type]
            count,
            warmup,
        )
    finally:
        client.close()
        system.cleanup()


def _xadd_async(tag: str, count: int, warmup: int) -> list[float]:
    system = systems.make("smsrelay", tag)

    async def run() -> list[float]:
        client = aioredis.Redis.from_url(redis_url(SMSRELAY_DB))
        try:

            async def call(i: int) -> object:
                return await client.xadd(system.stream, _fields(tag, i))  # type: ignore[arg-type]

            return await time_async(call, count, warmup)
        finally:
            await client.aclose()

    try:
        return asyncio.run(run())
    finally:
        system.cleanup()


def _peer(api: str) -> Callable[[str, int, int], list[float]]:
    """A peer's publish timings, measured in the peers' environment (bench/peer_env.py)."""

    def measure(tag: str, count: int, warmup: int) -> list[float]:
        from bench.peer_env import run_op

        return [float(x) for x in run_op("publish", api, tag, str(count), str(warmup))]

    return measure


MEASURE: dict[str, Callable[[str, int, int], list[float]]] = {
    "smsrelay.sync": _smsrelay_sync,
    "smsrelay.async": _smsrelay_async,
    "xadd.sync": _xadd_sync,
    "xadd.async": _xadd_async,
    "dramatiq": _peer("dramatiq"),
    "celery": _peer("celery"),
    "arq": _peer("arq"),
}


ALL_APIS = tuple(api for api, _ in APIS)


def measure(
    count: int, rounds: int, warmup: int = 200, apis: tuple[str, ...] = ALL_APIS
) -> list[PublishCost]:
    results = {api: PublishCost(api, label, count) for api, label in APIS if api in apis}
    for _ in range(rounds):
        for api, cost in results.items():
            if cost.error:
                continue
            try:
                samples = MEASURE[api](run_tag(), count, warmup)
            except Exception as exc:  # reported in the table, not fatal
                cost.error = f"{type(exc).__name__}: {exc}"
                continue
            cost.rounds_median_us.append(median(samples))
            cost.rounds_p99_us.append(percentile(samples, 99))
    for cost in results.values():
        if cost.rounds_median_us:
            cost.median_us = median(cost.rounds_median_us)
            cost.p99_us = median(cost.rounds_p99_us)
    return list(results.values())
