"""Dramatiq peer: one actor that sends one SMS with the sync twilio SDK.

    BENCH_REDIS_URL=... BENCH_PREFIX=... BENCH_FAKE_URL=... BENCH_CONCURRENCY=64 \
        .venv/bin/dramatiq bench.peer_dramatiq --processes 1 --threads 64

Dramatiq's documented set-up for I/O-bound work is worker threads (`--threads`); the broker is
its RedisBroker at its defaults (heartbeat_timeout 60 s, maintenance_chance 1000 per million),
with the default middleware (Retries, TimeLimit, AgeLimit, ...). Messages are acknowledged after
the actor returns, so a crash leaves them in the dead worker's ack set until another worker's
maintenance pass (a random 0.1 % of broker calls) finds the dead worker's heartbeat too old.
"""

from __future__ import annotations

import os
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from bench.sdk import send_from_worker

QUEUE = "sms"
ACTOR = "send_sms"


def make_broker(prefix: str, redis_url: str) -> RedisBroker:
    broker: RedisBroker = RedisBroker(url=redis_url, namespace=prefix)  # type: ignore[no-untyped-call, unused-ignore]
    return broker


def declare(broker: RedisBroker) -> Any:
    """The actor on a broker; `send(to, text)` publishes one message."""
    return dramatiq.actor(actor_name=ACTOR, queue_name=QUEUE, broker=broker)(send_from_worker)


if os.environ.get("BENCH_DRAMATIQ_WORKER"):
    # Imported by the `dramatiq` CLI in the worker: the global broker and the actor.
    broker = make_broker(os.environ["BENCH_PREFIX"], os.environ["BENCH_REDIS_URL"])
    dramatiq.set_broker(broker)
    send_sms = declare(broker)
