"""A login code behind a campaign (issue 16): priority lanes under a bulk backlog, smsrelay only.

B messages are queued with `priority="bulk"` before one worker starts (default concurrency, the
fake Twilio answering after L ms). Once the worker is draining (S sends accepted), H messages
are published with `priority="high"`, one every I ms, from the driver (open loop: each at its
scheduled time, whatever the worker does). A high message's end-to-end latency is
publish → the fake's 201: the publish timestamp is taken (epoch clock) just before
`Producer.publish`, and the answer time is the fake's recorded arrival of that body plus the
latency it was told to add before answering (`at` + L; same machine, same clock).

Bulk throughput "meanwhile" is the number of bulk sends that arrived at the fake during the
publishing window (first high publish, + H x I) per second. The same run without the high
messages (the same backlog, the window starting when S sends were accepted) gives the
reference; the two alternate, `rounds` times each, and the medians are reported.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import systems
from bench.common import FakeTwilioProcess, median, percentile, phone, run_tag, stop, wait_until

HIGH_OFFSET = 500_000  # the high messages' phone numbers: never one of the bulk ones


@dataclass
class LanesRun:
    with_high: bool
    bulk: int
    high: int
    latency_ms: float
    concurrency: int
    ok: bool = False
    window_s: float = 0.0
    bulk_in_window: int = 0
    bulk_window_rate: float = 0.0  # bulk sends per second during the window
    bulk_drain_rate: float = 0.0  # bulk sends per second over the whole drain
    bulk_after_window: int = 0  # bulk sends after the window (> 0: the backlog outlasted it)
    high_latencies_ms: list[float] = field(default_factory=list)
    high_p50_ms: float | None = None
    high_p99_ms: float | None = None
    high_max_ms: float | None = None
    high_delivered: int = 0  # distinct high bodies the fake accepted
    high_duplicates: int = 0
    bulk_delivered: int = 0
    bulk_duplicates: int = 0
    errors: int = 0  # non-201 answers
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_concurrency() -> int:
    """The worker's default concurrency (SMSRELAY_WORKER_CONCURRENCY unset)."""
    from smsrelay.settings import Settings

    value = Settings.model_fields["worker_concurrency"].default
    return int(value)


def _publish(system: systems.System, items: list[tuple[str, str]], priority: str) -> None:
    from smsrelay.producers.publish import Producer

    with Producer(system.smsrelay_settings()) as producer:
        for to, text in items:
            result = producer.publish(to, text, priority=priority)  # type: ignore[arg-type]
            if result.status != "queued":
                raise RuntimeError(f"smsrelay publish: {result}")


def _publish_paced(
    system: systems.System, items: list[tuple[str, str]], interval_s: float, sent: dict[str, float]
) -> None:
    """Each item at its scheduled time (open loop); `sent[body]` = epoch time of the call."""
    from smsrelay.producers.publish import Producer

    with Producer(system.smsrelay_settings()) as producer:
        start = time.monotonic()
        for i, (to, text) in enumerate(items):
            delay = start + i * interval_s - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            sent[text] = time.time()
            result = producer.publish(to, text, priority="high")
            if result.status != "queued":
                raise RuntimeError(f"smsrelay publish (high): {result}")


def measure(
    fake: FakeTwilioProcess,
    *,
    with_high: bool,
    bulk: int,
    high: int,
    interval_ms: float,
    latency_ms: float,
    start_after: int,
    concurrency: int | None = None,
    log_dir: Path | None = None,
    smsrelay_root: Path | None = None,
) -> LanesRun:
    """One drain of `bulk` bulk messages, with or without `high` high ones meanwhile."""
    concurrency = concurrency or default_concurrency()
    kwargs: dict[str, Any] = {"smsrelay_root": smsrelay_root} if smsrelay_root else {}
    system = systems.make("smsrelay", run_tag(), **kwargs)
    run = LanesRun(with_high, bulk, high if with_high else 0, latency_ms, concurrency)
    fake.reset(latency_ms)
    worker = None
    tag = system.tag
    bulk_items = [(phone(i), f"bench {tag} bulk {i:06d}") for i in range(bulk)]
    high_items = [
        (phone(HIGH_OFFSET + i), f"bench {tag} high {i:06d}")
        for i in range(high if with_high else 0)
    ]
    window_s = high * interval_ms / 1000
    try:
        _publish(system, bulk_items, "bulk")
        log = log_dir / f"lanes-{'high' if with_high else 'bulk'}-{tag}.log" if log_dir else None
        worker = system.start_worker(fake.url, concurrency, log)
        proc = worker
        if not wait_until(lambda: fake.accepted() >= start_after or proc.poll() is not None, 60):
            run.error = f"fewer than {start_after} sent within 60 s of start"
            return run
        if worker.poll() is not None:
            run.error = f"worker exited with {worker.returncode}"
            return run
        sent: dict[str, float] = {}
        window_start = time.time()
        if high_items:
            failure: list[BaseException] = []

            def paced() -> None:
                try:
                    _publish_paced(system, high_items, interval_ms / 1000, sent)
                except BaseException as exc:  # reported below
                    failure.append(exc)

            publisher = threading.Thread(target=paced, daemon=True)
            publisher.start()
            publisher.join(timeout=window_s + 60)
            if failure:
                raise failure[0]
            window_start = min(sent.values())
        else:
            time.sleep(window_s)
        total = bulk + len(high_items)
        deadline = time.monotonic() + max(120.0, 20 * total / 1000)
        while (accepted := fake.accepted()) < total:
            if time.monotonic() > deadline:
                run.error = f"timed out with {accepted} of {total} accepted"
                return run
            if worker.poll() is not None:
                run.error = f"worker exited with {worker.returncode} at {accepted}"
                return run
            time.sleep(0.05)
        _score(run, fake.requests(), sent, window_start, window_s, latency_ms)
        run.ok = run.error == ""
        return run
    except Exception as exc:  # a failed run is reported, not fatal to the whole benchmark
        run.error = f"{type(exc).__name__}: {exc}"
        return run
    finally:
        if worker is not None:
            stop(worker)
        system.cleanup()


def _score(
    run: LanesRun,
    records: list[dict[str, Any]],
    sent: dict[str, float],
    window_start: float,
    window_s: float,
    latency_ms: float,
) -> None:
    accepted = [r for r in records if r.get("status") == 201]
    run.errors = len(records) - len(accepted)
    counts = Counter(str(r.get("body")) for r in accepted)
    first_at: dict[str, float] = {}
    for r in accepted:
        text = str(r.get("body"))
        first_at[text] = min(first_at.get(text, float(r["at"])), float(r["at"]))
    high_bodies = set(sent)
    run.high_delivered = sum(1 for b in high_bodies if counts[b] > 0)
    run.high_duplicates = sum(counts[b] - 1 for b in high_bodies if counts[b] > 1)
    bulk_counts = {b: n for b, n in counts.items() if b not in high_bodies}
    run.bulk_delivered = len(bulk_counts)
    run.bulk_duplicates = sum(n - 1 for n in bulk_counts.values() if n > 1)
    lat_s = latency_ms / 1000
    run.high_latencies_ms = sorted(
        round((first_at[b] + lat_s - sent[b]) * 1000, 2) for b in high_bodies if b in first_at
    )
    if run.high_latencies_ms:
        run.high_p50_ms = percentile(run.high_latencies_ms, 50)
        run.high_p99_ms = percentile(run.high_latencies_ms, 99)
        run.high_max_ms = run.high_latencies_ms[-1]
    bulk_at = sorted(first_at[b] for b in bulk_counts)
    window_end = window_start + window_s
    run.window_s = window_s
    run.bulk_in_window = sum(1 for at in bulk_at if window_start <= at < window_end)
    run.bulk_after_window = sum(1 for at in bulk_at if at >= window_end)
    run.bulk_window_rate = run.bulk_in_window / window_s if window_s > 0 else 0.0
    drain = bulk_at[-1] - bulk_at[0] + lat_s if bulk_at else 0.0
    run.bulk_drain_rate = (len(bulk_at) - 1) / drain if drain > 0 else 0.0
    if run.high_delivered < len(high_bodies):
        run.error = f"{len(high_bodies) - run.high_delivered} high messages never sent"
    elif run.bulk_delivered < run.bulk:
        run.error = f"{run.bulk - run.bulk_delivered} bulk messages never sent"
    elif run.bulk_after_window == 0:
        run.error = "the bulk backlog ran out before the window ended (more bulk messages)"


def run_all(
    fake: FakeTwilioProcess,
    *,
    rounds: int,
    bulk: int,
    high: int,
    interval_ms: float,
    latency_ms: float,
    start_after: int,
    log_dir: Path | None = None,
    smsrelay_root: Path | None = None,
    log: Any = print,
) -> list[LanesRun]:
    """`rounds` pairs, the order within a pair alternating (with, without; without, with...)."""
    out = []
    for r in range(rounds):
        for with_high in (True, False) if r % 2 == 0 else (False, True):
            run = measure(
                fake,
                with_high=with_high,
                bulk=bulk,
                high=high,
                interval_ms=interval_ms,
                latency_ms=latency_ms,
                start_after=start_after,
                log_dir=log_dir,
                smsrelay_root=smsrelay_root,
            )
            log(
                f"lanes #{r + 1} {'with' if with_high else 'without'} high: bulk "
                f"{run.bulk_window_rate:,.0f} msg/s in the window; high p50 "
                f"{run.high_p50_ms} ms p99 {run.high_p99_ms} ms {run.error}"
            )
            out.append(run)
    return out


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the rounds, and the goals of issue 16: p99 ≤ 2 x L + 50 ms, ≥ 90 %."""
    with_high = [r for r in rows if r["with_high"] and r["ok"]]
    without = [r for r in rows if not r["with_high"] and r["ok"]]
    out: dict[str, Any] = {"rounds_ok": len(with_high), "rounds_without_ok": len(without)}
    if with_high:
        latency = float(with_high[0]["latency_ms"])
        out["latency_ms"] = latency
        out["p99_goal_ms"] = 2 * latency + 50
        out["high_p50_ms"] = median([float(r["high_p50_ms"]) for r in with_high])
        out["high_p99_ms"] = median([float(r["high_p99_ms"]) for r in with_high])
        pooled = [x for r in with_high for x in r["high_latencies_ms"]]
        out["pooled_p50_ms"] = percentile(pooled, 50)
        out["pooled_p99_ms"] = percentile(pooled, 99)
        out["pooled_max_ms"] = max(pooled)
        out["pooled_n"] = len(pooled)
        out["p99_holds"] = out["pooled_p99_ms"] <= out["p99_goal_ms"]
        out["rate_with"] = median([float(r["bulk_window_rate"]) for r in with_high])
    if without:
        out["rate_without"] = median([float(r["bulk_window_rate"]) for r in without])
    if out.get("rate_with") and out.get("rate_without"):
        out["rate_ratio"] = out["rate_with"] / out["rate_without"]
        out["rate_holds"] = out["rate_ratio"] >= 0.9
    return out
