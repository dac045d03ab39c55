"""Memory (issue 16): Redis bytes per queued message, and the worker's RSS while it drains them.

Bytes: N messages published with `Producer.publish` (priority normal, no worker running); the
delta of `INFO memory used_memory` over the publishing, divided by N (server-wide: other users
of the same Redis add noise, which N = 100,000 dilutes), beside the exact `MEMORY USAGE` of
the namespace's keys. The payload is stated: the body's length and the entry's bytes (its
field names and values as the producer wrote them, read back from the stream).

RSS: then one worker (fake Twilio at 0 ms, 64 in flight) drains that backlog while its process
tree's RSS is sampled every `interval_s`; start (the first sample once sending began), peak
(the highest sample, and VmHWM), end (once the last message was accepted).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import systems
from bench.common import (
    FakeTwilioProcess,
    body,
    memory_of,
    redis_client,
    rss_bytes,
    run_tag,
    stop,
    used_memory,
)
from bench.footprint import _peak_bytes

MIB = 1024 * 1024
FLAT_MIB = 5.0  # "flat": the end within this much of the start


@dataclass
class MemoryResult:
    messages: int
    body_bytes: int = 0  # one message's body (UTF-8)
    entry_bytes: int = 0  # one stream entry's field names and values, as written
    fields: int = 0
    field_names: list[str] = field(default_factory=list)
    used_memory_per_msg: float = 0.0  # INFO used_memory delta / messages
    memory_usage_per_msg: float = 0.0  # MEMORY USAGE of the namespace's keys / messages
    keys: int = 0
    concurrency: int = 64
    drain_s: float = 0.0
    rss_start_mib: float = 0.0
    rss_peak_mib: float = 0.0
    rss_hwm_mib: float = 0.0
    rss_end_mib: float = 0.0
    # (seconds since the first sample, messages accepted, RSS MiB)
    samples: list[tuple[float, int, float]] = field(default_factory=list)
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _entry_size(system: systems.System) -> tuple[int, list[str]]:
    """(bytes of the first entry's field names and values, the field names)."""
    client = redis_client(system.db)
    try:
        entries: Any = client.xrange(system.stream, count=1)
    finally:
        client.close()
    if not entries:
        raise RuntimeError(f"nothing in {system.stream}")
    fields: dict[bytes, bytes] = entries[0][1]
    return sum(len(k) + len(v) for k, v in fields.items()), [k.decode() for k in fields]


def measure(
    fake: FakeTwilioProcess,
    messages: int,
    *,
    concurrency: int = 64,
    interval_s: float = 0.25,
    log_dir: Path | None = None,
    smsrelay_root: Path | None = None,
) -> MemoryResult:
    kwargs: dict[str, Any] = {"smsrelay_root": smsrelay_root} if smsrelay_root else {}
    system = systems.make("smsrelay", run_tag(), **kwargs)
    result = MemoryResult(messages, concurrency=concurrency)
    worker = None
    try:
        result.body_bytes = len(body(system.tag, 0).encode())
        before = used_memory()
        system.enqueue(0, messages)
        after = used_memory()
        result.used_memory_per_msg = (after - before) / messages
        total = keys = 0
        for pattern in system.key_patterns():
            size, count = memory_of(system.db, pattern)
            total, keys = total + size, keys + count
        result.memory_usage_per_msg = total / messages
        result.keys = keys
        result.entry_bytes, result.field_names = _entry_size(system)
        result.fields = len(result.field_names)

        fake.reset(0)
        log = log_dir / f"memory-{system.tag}.log" if log_dir else None
        worker = system.start_worker(fake.url, concurrency, log)
        deadline = time.monotonic() + max(300.0, messages / 50)
        first: float | None = None
        while True:
            accepted = fake.accepted()
            now = time.monotonic()
            if accepted > 0:
                rss = round(rss_bytes(worker.pid) / MIB, 1)
                first = now if first is None else first
                result.samples.append((round(now - first, 2), accepted, rss))
            if accepted >= messages:
                result.drain_s = now - (first or now)
                break
            if worker.poll() is not None:
                result.error = f"worker exited with {worker.returncode} at {accepted}"
                return result
            if now > deadline:
                result.error = f"only {accepted} of {messages} sent in time"
                return result
            time.sleep(interval_s)
        result.rss_hwm_mib = round(_peak_bytes(worker.pid) / MIB, 1)
        rss_values = [s[2] for s in result.samples]
        result.rss_start_mib, result.rss_end_mib = rss_values[0], rss_values[-1]
        result.rss_peak_mib = max(rss_values)
    except Exception as exc:  # reported, never fatal
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        if worker is not None:
            stop(worker)
        system.cleanup()
    return result


def at_progress(samples: list[Any], fraction: float) -> float | None:
    """The RSS of the first sample at or past `fraction` of the messages sent."""
    if not samples:
        return None
    goal = fraction * max(int(s[1]) for s in samples)
    return next(float(s[2]) for s in samples if int(s[1]) >= goal)


def goals(m: dict[str, Any]) -> dict[str, Any]:
    """Issue 16: bytes per message ≤ payload + 200; RSS flat (end - start ≤ FLAT_MIB)."""
    out: dict[str, Any] = {}
    if m.get("error") and not m.get("entry_bytes"):
        return out
    out["bytes_limit"] = m["entry_bytes"] + 200
    out["bytes_holds"] = m["used_memory_per_msg"] <= out["bytes_limit"]
    if m.get("samples"):
        out["rss_growth_mib"] = m["rss_end_mib"] - m["rss_start_mib"]
        out["rss_holds"] = out["rss_growth_mib"] <= FLAT_MIB and not m.get("error")
    return out
