"""Footprint: Redis bytes per queued message, and a worker's RSS before and after a workload.

Bytes per message: queue M messages with no worker running, then sum `MEMORY USAGE key
SAMPLES 0` over every key the system made (exact, and blind to other users of the server), and
for reference the delta of `INFO memory used_memory` (server-wide, so noisy on a shared Redis).

RSS: start a worker on an empty queue, let it settle, read the RSS of its process tree (a
Dramatiq worker is a supervisor plus a worker process); publish N messages while it runs
(fake Twilio at 0 ms), wait until all are accepted, read the RSS again, and the peak (VmHWM).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import systems
from bench.common import (
    FakeTwilioProcess,
    memory_of,
    rss_bytes,
    run_tag,
    stop,
    tree_pids,
    used_memory,
    wait_until,
)


@dataclass
class QueuedBytes:
    system: str
    messages: int
    bytes_per_msg: float = 0.0  # MEMORY USAGE sum / messages
    used_memory_per_msg: float = 0.0  # INFO used_memory delta / messages (noisy)
    keys: int = 0
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class WorkerRss:
    system: str
    messages: int
    before_mib: float = 0.0
    after_mib: float = 0.0
    peak_mib: float = 0.0
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def queued_bytes(name: str, messages: int) -> QueuedBytes:
    result = QueuedBytes(name, messages)
    system = systems.make(name, run_tag())
    try:
        before = used_memory()
        system.enqueue(0, messages)
        after = used_memory()
        total, keys = 0, 0
        for pattern in system.key_patterns():
            size, count = memory_of(system.db, pattern)
            total, keys = total + size, keys + count
        result.bytes_per_msg = total / messages
        result.used_memory_per_msg = (after - before) / messages
        result.keys = keys
    except Exception as exc:  # reported, never fatal
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        system.cleanup()
    return result


def _peak_bytes(pid: int) -> int:
    total = 0
    for p in tree_pids(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) * 1024
    return total


def worker_rss(
    name: str,
    messages: int,
    fake: FakeTwilioProcess,
    concurrency: int = 64,
    settle_s: float = 3.0,
    log_dir: Path | None = None,
) -> WorkerRss:
    result = WorkerRss(name, messages)
    system = systems.make(name, run_tag())
    fake.reset(0)
    worker = None
    mib = 1024 * 1024
    try:
        log = log_dir / f"rss-{name}-{system.tag}.log" if log_dir else None
        worker = system.start_worker(fake.url, concurrency, log)
        time.sleep(settle_s)
        if worker.poll() is not None:
            result.error = f"worker exited with {worker.returncode}"
            return result
        result.before_mib = round(rss_bytes(worker.pid) / mib, 1)
        system.enqueue(0, messages)
        if not wait_until(lambda: fake.accepted() >= messages, max(300, messages / 20), 0.25):
            result.error = f"only {fake.accepted()} of {messages} sent in time"
            return result
        time.sleep(1.0)
        result.after_mib = round(rss_bytes(worker.pid) / mib, 1)
        result.peak_mib = round(_peak_bytes(worker.pid) / mib, 1)
    except Exception as exc:  # reported, never fatal
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        if worker is not None:
            stop(worker)
        system.cleanup()
    return result
