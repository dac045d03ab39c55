"""An open-loop publisher: messages at a fixed rate for a fixed time, whatever the worker does.

    python -m bench.openloop SYSTEM TAG START RATE DURATION_S OUT_JSON

Message i (from START) is due at t0 + (i - START) / RATE; it is published at that time, or at
once when the publisher is late (a late publisher shows as an achieved rate below RATE, which
the driver reports). The epoch time just before each publish call goes to OUT_JSON as a list
(index i - START). smsrelay and the bare loop run this in the product's environment (their
producer), the peers in the peers' environment (bench/peer_env.py) with their own client, as
in bench/peer_ops.py.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench import systems
from bench.common import body, phone


def pace(
    publish: Callable[[int], object], start: int, rate: float, duration_s: float
) -> list[float]:
    count = max(1, round(rate * duration_s))
    times: list[float] = []
    t0 = time.monotonic()
    for n in range(count):
        delay = t0 + n / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        times.append(time.time())
        publish(start + n)
    return times


async def pace_async(
    publish: Callable[[int], Awaitable[object]], start: int, rate: float, duration_s: float
) -> list[float]:
    count = max(1, round(rate * duration_s))
    times: list[float] = []
    t0 = time.monotonic()
    for n in range(count):
        delay = t0 + n / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        times.append(time.time())
        await publish(start + n)
    return times


def run_smsrelay(system: systems.System, start: int, rate: float, duration_s: float) -> list[float]:
    from smsrelay.producers.publish import Producer

    with Producer(system.smsrelay_settings()) as producer:

        def publish(i: int) -> None:
            result = producer.publish(phone(i), body(system.tag, i))
            if result.status != "queued":
                raise RuntimeError(f"smsrelay publish: {result}")

        return pace(publish, start, rate, duration_s)


def run_dramatiq(system: systems.System, start: int, rate: float, duration_s: float) -> list[float]:
    from bench.peer_dramatiq import declare, make_broker

    broker = make_broker(system.prefix, system.url)
    actor = declare(broker)
    try:
        return pace(lambda i: actor.send(phone(i), body(system.tag, i)), start, rate, duration_s)
    finally:
        broker.close()


def run_celery(system: systems.System, start: int, rate: float, duration_s: float) -> list[float]:
    from bench.peer_celery import make_app, register

    app = make_app(system.prefix, system.url)
    task = register(app)
    try:
        return pace(
            lambda i: task.apply_async((phone(i), body(system.tag, i))), start, rate, duration_s
        )
    finally:
        app.close()


def run_arq(system: systems.System, start: int, rate: float, duration_s: float) -> list[float]:
    async def run() -> list[float]:
        from arq.connections import RedisSettings, create_pool

        pool = await create_pool(RedisSettings.from_dsn(system.url))
        queue = f"{system.prefix}:queue"

        async def publish(i: int) -> Any:
            job = await pool.enqueue_job(
                "send_sms",
                phone(i),
                body(system.tag, i),
                _queue_name=queue,
                _job_id=f"{system.prefix}-{i}",
            )
            if job is None:
                raise RuntimeError("arq enqueue_job returned None (duplicate job id)")
            return job

        try:
            return await pace_async(publish, start, rate, duration_s)
        finally:
            await pool.aclose()

    return asyncio.run(run())


RUN = {
    "smsrelay": run_smsrelay,
    "bare": run_smsrelay,
    "dramatiq": run_dramatiq,
    "celery": run_celery,
    "arq": run_arq,
}


def main(argv: list[str]) -> int:
    if len(argv) != 6 or argv[0] not in systems.SYSTEMS:
        print(__doc__, file=sys.stderr)
        return 2
    system = systems.make(argv[0], argv[1])
    times = RUN[system.kind](system, int(argv[2]), float(argv[3]), float(argv[4]))
    Path(argv[5]).write_text(json.dumps(times))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
