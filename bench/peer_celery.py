"""Celery peer: one task that sends one SMS with the sync twilio SDK.

    BENCH_REDIS_URL=... BENCH_PREFIX=... BENCH_FAKE_URL=... BENCH_CONCURRENCY=64 \
        .venv/bin/celery -A bench.peer_celery worker --pool threads --concurrency 64 \
        -Q <prefix>sms --loglevel WARNING --without-gossip --without-mingle --without-heartbeat

Celery's documented choice for I/O-bound tasks without gevent/eventlet is the threads pool;
`task_acks_late` (with idempotent tasks) is its documented way not to lose a task to a worker
crash: without it a task is acknowledged when it starts and a SIGKILL loses it. Results are
ignored (no backend); prefetch stays at its default (4 per thread). The Redis transport's
`visibility_timeout` (default 3600 s) decides when an unacknowledged message is delivered
again; `BENCH_CELERY_VISIBILITY_TIMEOUT` overrides it for the crash test only (labelled in the
report). Every key carries the run's prefix (`global_keyprefix`). `BENCH_CELERY_WAKE_S` adds
the celery#6941 workaround (the "tuned" row; see `_wake_hub`).
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

from bench.sdk import send_from_worker
from bench.systems import celery_queue as queue_name

TASK_NAME = "bench.send_sms"


def make_app(prefix: str, redis_url: str, visibility_timeout_s: float | None = None) -> Any:
    transport: dict[str, Any] = {"global_keyprefix": f"{prefix}:"}
    if visibility_timeout_s is not None:
        transport["visibility_timeout"] = visibility_timeout_s
    app = Celery("bench_celery", broker=redis_url)
    app.conf.update(
        task_acks_late=True,
        task_ignore_result=True,
        task_default_queue=queue_name(prefix),
        broker_transport_options=transport,
        broker_connection_retry_on_startup=True,
    )
    return app


def _wake_hub(interval_s: float) -> None:
    """celery#6941 workaround: with the threads pool, acks (acks_late) and prefetch refills
    wait for the next event-loop wake-up (seconds, with only Redis sockets); a repeating no-op
    timer bounds that wait."""
    from celery import signals

    def on_ready(sender: Any = None, **_: Any) -> None:
        if sender is not None:
            sender.timer.call_repeatedly(interval_s, lambda *a, **k: None)

    signals.worker_ready.connect(on_ready, weak=False)


def register(app: Any) -> Any:
    """The task on an app; `apply_async((to, text))` publishes one message."""
    return app.task(name=TASK_NAME, ignore_result=True)(send_from_worker)


_vt = os.environ.get("BENCH_CELERY_VISIBILITY_TIMEOUT")
app = make_app(
    os.environ.get("BENCH_PREFIX", "bench-celery"),
    os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/6"),
    float(_vt) if _vt else None,
)
send_sms = register(app)
if os.environ.get("BENCH_CELERY_WAKE_S"):
    _wake_hub(float(os.environ["BENCH_CELERY_WAKE_S"]))
