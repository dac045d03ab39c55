"""The systems under test, each behind the same small interface.

A `System` is one instance of one system for one measurement: its own Redis namespace or key
prefix (derived from a fresh tag), so measurements never see each other's data, and
`cleanup()` deletes exactly the keys it made.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import (
    ACCOUNT_SID,
    AUTH_TOKEN,
    FROM_NUMBER,
    PYTHON,
    ROOT,
    SMSRELAY_DB,
    body,
    delete_matching,
    phone,
    redis_url,
    spawn,
)

SYSTEMS = ("smsrelay", "bare", "dramatiq", "celery", "arq", "celery_tuned", "arq_tuned")
# The peers at their documented configuration for I/O-bound work: the targets' yardstick.
PEERS = ("dramatiq", "celery", "arq")
# The same peers with one known throughput trap removed (shown beside them, for fairness).
TUNED = ("celery_tuned", "arq_tuned")
LABELS = {
    "smsrelay": "smsrelay (1 worker process)",
    "bare": "bare asyncio loop on uvloop (ceiling)",
    "dramatiq": "Dramatiq (1 process, N threads)",
    "celery": "Celery (threads pool of N)",
    "arq": "arq (max_jobs=N)",
    "celery_tuned": "Celery, + 0.1 s hub wake-up (celery#6941 workaround)",
    "arq_tuned": "arq, + poll_delay=0.05 s, on uvloop",
}
KIND = {"celery_tuned": "celery", "arq_tuned": "arq"}
TUNING = {
    "celery_tuned": {"BENCH_CELERY_WAKE_S": "0.1"},
    "arq_tuned": {"BENCH_ARQ_POLL_DELAY": "0.05", "BENCH_ARQ_UVLOOP": "1"},
}
# Each peer in its own database, so no two systems' keys can meet (smsrelay: DB 0, namespaced).
PEER_DB = {"dramatiq": 5, "celery": 6, "arq": 7}


def celery_queue(prefix: str) -> str:
    """The Celery queue of a run (bench.peer_celery declares it; the driver names it)."""
    return f"{prefix}sms"


def _messages(start: int, count: int, tag: str) -> Iterator[tuple[str, str]]:
    for i in range(start, start + count):
        yield phone(i), body(tag, i)


@dataclass
class System:
    name: str
    tag: str
    # Settings for the crash test (labelled in the report): smsrelay's claim idle time,
    # Celery's visibility timeout, arq's job timeout.
    overrides: dict[str, str] = field(default_factory=dict)
    smsrelay_root: Path = ROOT

    # -- identity --------------------------------------------------------------------------
    @property
    def kind(self) -> str:
        """The software under test (a tuned variant runs the same code as its peer)."""
        return KIND.get(self.name, self.name)

    @property
    def prefix(self) -> str:
        return f"bench-{self.name.replace('_', '-')}-{self.tag}"

    @property
    def db(self) -> int:
        return PEER_DB.get(self.kind, SMSRELAY_DB)

    @property
    def url(self) -> str:
        return redis_url(self.db)

    @property
    def stream(self) -> str:
        return "{" + self.prefix + ":0}:requests"

    def key_patterns(self) -> list[str]:
        if self.kind in ("smsrelay", "bare"):
            return ["{" + self.prefix + ":*"]
        if self.kind == "arq":
            return [f"{self.prefix}*", f"arq:*:{self.prefix}*"]
        return [f"{self.prefix}*"]  # Dramatiq namespace, Celery global_keyprefix

    def cleanup(self) -> None:
        for pattern in self.key_patterns():
            delete_matching(self.db, pattern)

    # -- publishing (set-up, not timed here: bench.publish_cost times it) ---------------------
    def enqueue(self, start: int, count: int) -> None:
        publish = {
            "smsrelay": self._enqueue_smsrelay,
            "bare": self._enqueue_smsrelay,
            "dramatiq": self._enqueue_peer,
            "celery": self._enqueue_peer,
            "arq": self._enqueue_peer,
        }[self.kind]
        publish(start, count)

    def smsrelay_settings(self) -> Any:
        from smsrelay.settings import Settings

        return Settings.load(redis_url=self.url, namespace=self.prefix)

    def _enqueue_smsrelay(self, start: int, count: int) -> None:
        from smsrelay.producers.publish import Producer

        with Producer(self.smsrelay_settings()) as producer:
            for to, text in _messages(start, count, self.tag):
                result = producer.publish(to, text)
                if result.status != "queued":
                    raise RuntimeError(f"smsrelay publish: {result}")

    def _enqueue_peer(self, start: int, count: int) -> None:
        """In the peers' environment, where their packages are (bench/peer_env.py)."""
        from bench.peer_env import run_op

        run_op("enqueue", self.name, self.tag, str(start), str(count))

    # -- the worker ------------------------------------------------------------------------
    def worker_cmd(self, concurrency: int) -> list[str]:
        python = PYTHON
        if self.kind in PEERS:
            from bench.peer_env import peer_python

            python = peer_python()  # the peers run from their own environment
        if self.kind == "smsrelay":
            # --no-mirror: no Postgres in the benchmark; the mirror only reads dead letters.
            return [PYTHON, "-m", "smsrelay.cli", "worker", "--no-mirror"]
        if self.kind == "bare":
            return [PYTHON, "-m", "bench.bare_loop"]
        if self.kind == "dramatiq":
            return [
                python,
                "-m",
                "dramatiq",
                "bench.peer_dramatiq",
                "--processes",
                "1",
                "--threads",
                str(concurrency),
            ]
        if self.kind == "celery":
            return [
                python,
                "-m",
                "celery",
                "-A",
                "bench.peer_celery",
                "worker",
                "--pool",
                "threads",
                "--concurrency",
                str(concurrency),
                "-Q",
                celery_queue(self.prefix),
                "--loglevel",
                "WARNING",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "--hostname",
                f"{self.prefix}-%h-{os.getpid()}",
            ]
        return [python, "-m", "bench.peer_arq"]

    def worker_env(self, fake_url: str, concurrency: int) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("SMSRELAY_", "TWILIO_", "BENCH_"))
        }
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys([str(self.smsrelay_root), str(ROOT)]))
        env.update(
            {
                "BENCH_REDIS_URL": self.url,
                "BENCH_PREFIX": self.prefix,
                "BENCH_FAKE_URL": fake_url,
                "BENCH_CONCURRENCY": str(concurrency),
                "BENCH_STREAM": self.stream,
                "BENCH_DRAMATIQ_WORKER": "1",
            }
        )
        env.update(TUNING.get(self.name, {}))
        if self.kind == "smsrelay":
            env.update(
                {
                    "SMSRELAY_REDIS_URL": self.url,
                    "SMSRELAY_NAMESPACE": self.prefix,
                    "SMSRELAY_TWILIO_BASE_URL": fake_url,
                    "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
                    "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
                    "SMSRELAY_TWILIO_FROM": FROM_NUMBER,
                    "SMSRELAY_WORKER_CONCURRENCY": str(concurrency),
                    "SMSRELAY_METRICS_PORT": "0",
                    # Every system logs at WARNING: no per-message log line anywhere.
                    "SMSRELAY_LOG_LEVEL": "warning",
                }
            )
        env.update(self.overrides)
        return env

    def start_worker(
        self, fake_url: str, concurrency: int, log: Path | None = None
    ) -> subprocess.Popen[Any]:
        """The worker in its own process group (smsrelay's from `smsrelay_root`)."""
        cwd = self.smsrelay_root if self.kind == "smsrelay" else ROOT
        return spawn(
            self.worker_cmd(concurrency), self.worker_env(fake_url, concurrency), log=log, cwd=cwd
        )


SystemFactory = Callable[[str, str], System]


def make(
    name: str, tag: str, overrides: dict[str, str] | None = None, smsrelay_root: Path = ROOT
) -> System:
    if name not in SYSTEMS:
        raise ValueError(f"unknown system {name!r}; one of {', '.join(SYSTEMS)}")
    return System(name, tag, dict(overrides or {}), smsrelay_root)
