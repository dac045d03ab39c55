"""arq peer: one coroutine that sends one SMS with the async twilio SDK.

    BENCH_REDIS_URL=... BENCH_PREFIX=... BENCH_FAKE_URL=... BENCH_CONCURRENCY=64 \
        .venv/bin/python -m bench.peer_arq

arq is asyncio-native: its knob for I/O-bound work is `max_jobs` (jobs in flight per worker),
set to the concurrency; everything else is at its defaults (poll_delay 0.5 s, job_timeout 300 s,
keep_result 3600 s). A job taken by a worker is marked in progress for job_timeout + 10 s; if
the worker dies, another one runs it again once that mark expires.
`BENCH_ARQ_JOB_TIMEOUT` overrides job_timeout (the crash test, labelled in the report);
`BENCH_ARQ_POLL_DELAY` overrides poll_delay and `BENCH_ARQ_UVLOOP` runs it on uvloop (the
"tuned" row: at the default 0.5 s a worker starts at most max_jobs jobs per poll, so 200 ms
jobs run at ~2 x max_jobs per second; uvloop is what smsrelay's worker runs on).
The worker runs with logging at WARNING, like every system here (arq's CLI logs every job at
INFO).
"""

from __future__ import annotations

import logging
import os
from typing import Any, ClassVar

from arq.connections import RedisSettings
from arq.worker import run_worker

from bench.sdk import AsyncSender

PREFIX = os.environ.get("BENCH_PREFIX", "bench-arq")
QUEUE = f"{PREFIX}:queue"
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/7")


async def send_sms(ctx: dict[str, Any], to: str, text: str) -> str:
    sender: AsyncSender = ctx["sender"]
    return await sender.send(to, text)


async def startup(ctx: dict[str, Any]) -> None:
    ctx["sender"] = AsyncSender(
        os.environ["BENCH_FAKE_URL"], int(os.environ.get("BENCH_CONCURRENCY", "64"))
    )


async def shutdown(ctx: dict[str, Any]) -> None:
    sender: AsyncSender | None = ctx.get("sender")
    if sender is not None:
        await sender.close()


class WorkerSettings:
    functions: ClassVar[list[Any]] = [send_sms]
    on_startup = startup
    on_shutdown = shutdown
    redis_settings = RedisSettings.from_dsn(REDIS_URL)
    queue_name = QUEUE
    max_jobs = int(os.environ.get("BENCH_CONCURRENCY", "64"))
    if os.environ.get("BENCH_ARQ_JOB_TIMEOUT"):
        job_timeout = float(os.environ["BENCH_ARQ_JOB_TIMEOUT"])
    if os.environ.get("BENCH_ARQ_POLL_DELAY"):
        poll_delay = float(os.environ["BENCH_ARQ_POLL_DELAY"])


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    if os.environ.get("BENCH_ARQ_UVLOOP"):
        import uvloop

        uvloop.install()  # arq takes its loop from the policy
    run_worker(WorkerSettings)  # type: ignore[arg-type, unused-ignore]


if __name__ == "__main__":
    main()
