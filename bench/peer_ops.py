"""What the benchmark driver asks of a peer, run in the peers' environment (bench/peer_env.py).

    python -m bench.peer_ops enqueue SYSTEM TAG START COUNT     # set-up: publish COUNT messages
    python -m bench.peer_ops publish API TAG COUNT WARMUP       # publish cost: µs per call

Each prints one line of JSON. The driver runs in the product's environment, where the peers
are not installed; these are the only places (with the peers' workers) that import them.
"""

from __future__ import annotations

import asyncio
import json
import sys

from bench import systems
from bench.common import body, phone
from bench.publish_cost import time_async, time_sync


def _messages(start: int, count: int, tag: str) -> list[tuple[str, str]]:
    return [(phone(i), body(tag, i)) for i in range(start, start + count)]


# -- set-up ------------------------------------------------------------------------------------
def enqueue_dramatiq(system: systems.System, start: int, count: int) -> None:
    from bench.peer_dramatiq import declare, make_broker

    broker = make_broker(system.prefix, system.url)
    actor = declare(broker)
    try:
        for to, text in _messages(start, count, system.tag):
            actor.send(to, text)
    finally:
        broker.close()


def enqueue_celery(system: systems.System, start: int, count: int) -> None:
    from bench.peer_celery import make_app, register

    app = make_app(system.prefix, system.url)
    task = register(app)
    try:
        for to, text in _messages(start, count, system.tag):
            task.apply_async((to, text))
    finally:
        app.close()


def enqueue_arq(system: systems.System, start: int, count: int) -> None:
    async def run() -> None:
        from arq.connections import RedisSettings, create_pool

        pool = await create_pool(RedisSettings.from_dsn(system.url))
        try:
            queue = f"{system.prefix}:queue"
            for i, (to, text) in enumerate(_messages(start, count, system.tag), start):
                job = await pool.enqueue_job(
                    "send_sms", to, text, _queue_name=queue, _job_id=f"{system.prefix}-{i}"
                )
                if job is None:
                    raise RuntimeError("arq enqueue_job returned None (duplicate job id)")
        finally:
            await pool.aclose()

    asyncio.run(run())


ENQUEUE = {"dramatiq": enqueue_dramatiq, "celery": enqueue_celery, "arq": enqueue_arq}


# -- publish cost ------------------------------------------------------------------------------
def publish_dramatiq(tag: str, count: int, warmup: int) -> list[float]:
    from bench.peer_dramatiq import declare, make_broker

    system = systems.make("dramatiq", tag)
    broker = make_broker(system.prefix, system.url)
    actor = declare(broker)
    try:
        return time_sync(lambda i: actor.send(phone(i), body(tag, i)), count, warmup)
    finally:
        broker.close()
        system.cleanup()


def publish_celery(tag: str, count: int, warmup: int) -> list[float]:
    from bench.peer_celery import make_app, register

    system = systems.make("celery", tag)
    app = make_app(system.prefix, system.url)
    task = register(app)
    try:
        return time_sync(lambda i: task.apply_async((phone(i), body(tag, i))), count, warmup)
    finally:
        app.close()
        system.cleanup()


def publish_arq(tag: str, count: int, warmup: int) -> list[float]:
    from arq.connections import RedisSettings, create_pool

    system = systems.make("arq", tag)

    async def run() -> list[float]:
        pool = await create_pool(RedisSettings.from_dsn(system.url))
        queue = f"{system.prefix}:queue"
        made: list[str] = []
        try:

            async def call(i: int) -> object:
                # arq's default job id (a uuid4 hex); the key prefix only names the queue, so
                # the jobs are found for clean-up by the ids it returns.
                job = await pool.enqueue_job("send_sms", phone(i), body(tag, i), _queue_name=queue)
                if job is not None:
                    made.append(job.job_id)
                return job

            return await time_async(call, count, warmup)
        finally:
            for first in range(0, len(made), 500):
                await pool.delete(*[f"arq:job:{j}" for j in made[first : first + 500]])
            await pool.aclose()

    try:
        return asyncio.run(run())
    finally:
        system.cleanup()


PUBLISH = {"dramatiq": publish_dramatiq, "celery": publish_celery, "arq": publish_arq}


def main(argv: list[str]) -> int:
    if len(argv) == 5 and argv[0] == "enqueue" and argv[1] in systems.SYSTEMS:
        system = systems.make(argv[1], argv[2])
        ENQUEUE[system.kind](system, int(argv[3]), int(argv[4]))
        print(json.dumps({"enqueued": int(argv[4])}))
        return 0
    if len(argv) == 5 and argv[0] == "publish" and argv[1] in PUBLISH:
        print(json.dumps(PUBLISH[argv[1]](argv[2], int(argv[3]), int(argv[4]))))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
