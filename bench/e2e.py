"""End-to-end throughput: a backlog of SMS drained by one worker through the fake Twilio.

The messages are queued before the worker starts; the rate is timed from the first request the
fake receives to the last one (plus the latency, to reach the last response): the drain, not
start-up. Every system gets the same fake (reset between runs), the same Redis, the same
messages (distinct numbers, so no rate limit bites) and the same concurrency.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import systems
from bench.common import FakeTwilioProcess, cpu_seconds, run_tag, stop, wait_until


@dataclass
class E2EResult:
    system: str
    messages: int
    latency_ms: float
    concurrency: int
    ok: bool
    drain_s: float = 0.0
    rate: float = 0.0  # messages per second over the drain
    accepted: int = 0
    requests: int = 0
    duplicates: int = 0  # bodies the fake accepted more than once
    errors: int = 0  # non-201 answers
    cpu_us_per_msg: float = 0.0  # worker process tree CPU per message, during the drain
    fake_cpu_us_per_msg: float = 0.0  # the fake Twilio's CPU per message, during the drain
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure(
    name: str,
    fake: FakeTwilioProcess,
    messages: int,
    latency_ms: float,
    concurrency: int,
    *,
    timeout_s: float | None = None,
    log_dir: Path | None = None,
    smsrelay_root: Path | None = None,
) -> E2EResult:
    """One drain of `messages` by one worker of system `name`; never raises for a failed run."""
    kwargs: dict[str, Any] = {"smsrelay_root": smsrelay_root} if smsrelay_root else {}
    system = systems.make(name, run_tag(), **kwargs)
    result = E2EResult(name, messages, latency_ms, concurrency, ok=False)
    # Generous: a twentieth of the ideal rate, and at least five minutes.
    ideal = min(concurrency / max(latency_ms / 1000, 1e-3), 20_000)
    timeout_s = timeout_s or max(300.0, 20 * messages / ideal)
    fake.reset(latency_ms)
    worker = None
    try:
        system.enqueue(0, messages)
        log = (
            log_dir / f"e2e-{name}-{latency_ms:g}ms-{concurrency}-{system.tag}.log"
            if log_dir
            else None
        )
        worker = system.start_worker(fake.url, concurrency, log)
        if not wait_until(lambda: fake.accepted() > 0 or worker.poll() is not None, 60):
            result.error = "no message sent within 60 s of start"
            return result
        if worker.poll() is not None:
            result.error = f"worker exited with {worker.returncode}"
            return result
        cpu0, fake0, n0 = cpu_seconds(worker.pid), cpu_seconds(fake.pid), fake.accepted()
        deadline = time.monotonic() + timeout_s
        while (accepted := fake.accepted()) < messages:
            if time.monotonic() > deadline:
                result.error = f"timed out after {timeout_s:.0f} s with {accepted} accepted"
                return result
            if worker.poll() is not None:
                result.error = f"worker exited with {worker.returncode} at {accepted}"
                return result
            time.sleep(0.05)
        cpu1, fake1, n1 = cpu_seconds(worker.pid), cpu_seconds(fake.pid), fake.accepted()
        records = fake.requests()
        arrivals = sorted(float(r["at"]) for r in records)
        result.drain_s = arrivals[-1] - arrivals[0] + latency_ms / 1000
        result.rate = (messages - 1) / result.drain_s if result.drain_s > 0 else 0.0
        result.accepted = n1
        result.requests = len(records)
        result.errors = sum(1 for r in records if r.get("status") != 201)
        bodies = Counter(r.get("body") for r in records if r.get("status") == 201)
        result.duplicates = sum(n - 1 for n in bodies.values() if n > 1)
        if n1 > n0:
            result.cpu_us_per_msg = (cpu1 - cpu0) / (n1 - n0) * 1e6
            result.fake_cpu_us_per_msg = (fake1 - fake0) / (n1 - n0) * 1e6
        result.ok = result.accepted >= messages
        return result
    except Exception as exc:  # a failed run is reported, not fatal to the whole benchmark
        result.error = f"{type(exc).__name__}: {exc}"
        return result
    finally:
        if worker is not None:
            stop(worker)
        system.cleanup()
