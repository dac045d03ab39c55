"""End-to-end latency under a steady load (issue 16): each system at 50 % and 90 % of its own max.

For each provider latency and each system: its maximum throughput (the end-to-end phase's
median for the same latency and concurrency in the same run when there is one, else a drain of
a backlog measured here, as bench/e2e.py does), then for each load L a worker on an empty queue
(one probe message sent first, so the worker is up), and an open-loop publisher in a process of
its own (bench/openloop.py, in the system's environment) publishing at L x max for a fixed
time. A message's latency is publish call → the fake's 201: the publish timestamp (epoch,
just before the call) against the fake's recorded arrival of that body + the latency it adds.
Messages still unsent when the wait ends count as infinitely late (they show as "> wait").
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import e2e, systems
from bench.common import (
    PYTHON,
    ROOT,
    FakeTwilioProcess,
    body,
    median,
    percentile,
    run_tag,
    spawn,
    stop,
    wait_until,
)

START = 1  # index 0 is the probe


@dataclass
class LatencyRun:
    system: str
    latency_ms: float
    concurrency: int
    load: float  # fraction of max_rate
    max_rate: float
    max_source: str  # "e2e phase" or "measured here"
    target_rate: float
    duration_s: float
    ok: bool = False
    published: int = 0
    achieved_rate: float = 0.0  # what the publisher managed
    delivered: int = 0
    missing: int = 0  # never sent within the wait: infinitely late
    duplicates: int = 0
    errors: int = 0
    wait_s: float = 0.0
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    latencies_ms: list[float] = field(default_factory=list)  # publish order; missing left out
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _e2e_max(rows: list[dict[str, Any]], name: str, latency_ms: float, conc: int) -> float | None:
    rates = [
        float(r["rate"])
        for r in rows
        if r["system"] == name
        and r["ok"]
        and float(r["latency_ms"]) == latency_ms
        and int(r["concurrency"]) == conc
    ]
    return median(rates) if rates else None


def max_rate(
    name: str,
    fake: FakeTwilioProcess,
    latency_ms: float,
    concurrency: int,
    messages: int,
    e2e_rows: list[dict[str, Any]],
    log_dir: Path | None,
    smsrelay_root: Path | None,
    repeats: int = 1,
) -> tuple[float | None, str, str]:
    """(rate, source, error): the e2e phase's median from this run, else the median of
    `repeats` drains here (one short drain can be far off on a shared machine)."""
    reused = _e2e_max(e2e_rows, name, latency_ms, concurrency)
    if reused:
        return reused, "e2e phase", ""
    rates, errors = [], []
    for _ in range(repeats):
        r = e2e.measure(
            name,
            fake,
            messages,
            latency_ms,
            concurrency,
            log_dir=log_dir,
            smsrelay_root=smsrelay_root,
        )
        if r.ok:
            rates.append(r.rate)
        else:
            errors.append(r.error)
    source = "measured here" + (
        f" (median of {', '.join(f'{x:,.0f}' for x in rates)})" if len(rates) > 1 else ""
    )
    return (median(rates) if rates else None), source, "; ".join(errors)


def _publisher_cmd(system: systems.System) -> tuple[list[str], dict[str, str] | None]:
    if system.kind in systems.PEERS:
        from bench.peer_env import peer_env, peer_python

        return [peer_python(), "-m", "bench.openloop"], peer_env()
    return [PYTHON, "-m", "bench.openloop"], None


def measure_at(
    name: str,
    fake: FakeTwilioProcess,
    *,
    latency_ms: float,
    concurrency: int,
    load: float,
    max_rate_: float,
    max_source: str,
    duration_s: float,
    log_dir: Path | None = None,
    smsrelay_root: Path | None = None,
) -> LatencyRun:
    kwargs: dict[str, Any] = {"smsrelay_root": smsrelay_root} if smsrelay_root else {}
    system = systems.make(name, run_tag(), **kwargs)
    rate = load * max_rate_
    run = LatencyRun(name, latency_ms, concurrency, load, max_rate_, max_source, rate, duration_s)
    fake.reset(latency_ms)
    worker = publisher = None
    try:
        log = (
            log_dir / f"latency-{name}-{latency_ms:g}ms-{load:g}-{system.tag}.log"
            if log_dir
            else None
        )
        worker = system.start_worker(fake.url, concurrency, log)
        system.enqueue(0, 1)  # the probe: the worker is up once it is sent
        proc = worker
        if not wait_until(lambda: fake.accepted() >= 1 or proc.poll() is not None, 90):
            run.error = "the probe was not sent within 90 s of start"
            return run
        if worker.poll() is not None:
            run.error = f"worker exited with {worker.returncode}"
            return run
        time.sleep(0.5)
        fake.reset(latency_ms)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "times.json"
            cmd, env = _publisher_cmd(system)
            args = [name, system.tag, str(START), f"{rate:.3f}", f"{duration_s:g}", str(out)]
            publisher = spawn([*cmd, *args], env, log=log, cwd=ROOT)
            code = publisher.wait(timeout=duration_s * 3 + 60)
            if code != 0:
                run.error = f"the publisher exited with {code}"
                return run
            times: list[float] = json.loads(out.read_text())
        run.published = len(times)
        span = times[-1] - times[0]
        run.achieved_rate = (len(times) - 1) / span if span > 0 else 0.0
        # The wait for the last sends: what is left at the target rate, twice, and 10 s.
        waited = time.monotonic()
        wait_until(
            lambda: fake.accepted() >= run.published or proc.poll() is not None,
            max(10.0, 2 * run.published / max(rate, 1.0)),
            0.1,
        )
        run.wait_s = time.monotonic() - waited
        _score(run, fake.requests(), times, system.tag)
        run.ok = not run.error
        return run
    except Exception as exc:  # a failed run is reported, not fatal to the whole benchmark
        run.error = f"{type(exc).__name__}: {exc}"
        return run
    finally:
        if publisher is not None:
            stop(publisher)
        if worker is not None:
            stop(worker)
        system.cleanup()


def _score(run: LatencyRun, records: list[dict[str, Any]], times: list[float], tag: str) -> None:
    index = {body(tag, START + n): n for n in range(len(times))}
    first_at: dict[int, float] = {}
    seen: dict[int, int] = {}
    for r in records:
        n = index.get(str(r.get("body")))
        if n is None:
            continue
        if r.get("status") != 201:
            run.errors += 1
            continue
        seen[n] = seen.get(n, 0) + 1
        first_at[n] = min(first_at.get(n, math.inf), float(r["at"]))
    run.delivered = len(first_at)
    run.missing = len(times) - run.delivered
    run.duplicates = sum(c - 1 for c in seen.values() if c > 1)
    lat_s = run.latency_ms / 1000
    # In publish order (a backlog building up shows as a rising run, a stall as a spike).
    run.latencies_ms = [round((first_at[n] + lat_s - times[n]) * 1000, 2) for n in sorted(first_at)]
    every = sorted(run.latencies_ms) + [math.inf] * run.missing
    if every:
        p50, p95, p99 = (percentile(every, p) for p in (50, 95, 99))
        run.p50_ms, run.p95_ms, run.p99_ms = (None if math.isinf(v) else v for v in (p50, p95, p99))
        run.max_ms = None if run.missing else every[-1]
    if run.missing:
        run.error = f"{run.missing} of {len(times)} not sent after a {run.wait_s:.0f} s wait"
    if run.achieved_rate and run.achieved_rate < 0.95 * run.target_rate:
        extra = f"the publisher managed {run.achieved_rate:,.0f}/s only"
        run.error = f"{run.error}; {extra}" if run.error else extra


def run_all(
    fake: FakeTwilioProcess,
    names: list[str],
    *,
    provider_ms: list[float],
    loads: list[float],
    concurrency: int,
    duration_s: float,
    max_messages: int,
    e2e_rows: list[dict[str, Any]],
    log_dir: Path | None = None,
    smsrelay_root: Path | None = None,
    log: Any = print,
    max_repeats: int = 1,
) -> list[LatencyRun]:
    out: list[LatencyRun] = []
    for i, latency_ms in enumerate(provider_ms):
        order = names[i % len(names) :] + names[: i % len(names)]
        for name in order:
            messages = max_messages if latency_ms == 0 else max(200, max_messages // 3)
            top, source, error = max_rate(
                name,
                fake,
                latency_ms,
                concurrency,
                messages,
                e2e_rows,
                log_dir,
                smsrelay_root,
                max_repeats,
            )
            log(f"latency {name} {latency_ms:g} ms: max {top or 0:,.0f} msg/s ({source}) {error}")
            for load in loads:
                if top is None:
                    run = LatencyRun(
                        name, latency_ms, concurrency, load, 0.0, source, 0.0, duration_s
                    )
                    run.error = f"no maximum: {error}"
                else:
                    run = measure_at(
                        name,
                        fake,
                        latency_ms=latency_ms,
                        concurrency=concurrency,
                        load=load,
                        max_rate_=top,
                        max_source=source,
                        duration_s=duration_s,
                        log_dir=log_dir,
                        smsrelay_root=smsrelay_root,
                    )
                log(
                    f"latency {name} {latency_ms:g} ms at {load:.0%} "
                    f"({run.achieved_rate:,.0f}/{run.target_rate:,.0f} msg/s): p50 {run.p50_ms} "
                    f"p95 {run.p95_ms} p99 {run.p99_ms} ms {run.error}"
                )
                out.append(run)
    return out


def goals(rows: list[dict[str, Any]]) -> list[tuple[str, str, bool | None]]:
    """Issue 16: smsrelay's p99 at 50 % ≤ 1.2x the bare loop's, and below every peer's p50."""
    out: list[tuple[str, str, bool | None]] = []
    at_half = {(r["system"], float(r["latency_ms"])): r for r in rows if float(r["load"]) == 0.5}
    for (name, latency_ms), ours in sorted(at_half.items()):
        if name != "smsrelay":
            continue

        def p(row: dict[str, Any] | None, key: str) -> float | None:
            if row is None or (not row["ok"] and not row["published"]):
                return None
            value = row[key]
            return math.inf if value is None else float(value)

        mine = p(ours, "p99_ms")
        bare = p(at_half.get(("bare", latency_ms)), "p99_ms")
        if mine is not None and bare is not None:
            out.append(
                (
                    f"latency at 50 %, {latency_ms:g} ms provider: smsrelay p99 ≤ 1.2x the bare "
                    "loop's p99",
                    f"{mine:,.1f} vs {bare:,.1f} ms = {mine / bare:.2f}x",
                    mine <= 1.2 * bare,
                )
            )
        peers = [
            (peer, v)
            for peer in systems.PEERS
            if (v := p(at_half.get((peer, latency_ms)), "p50_ms")) is not None
        ]
        if mine is not None and peers:
            best = min(peers, key=lambda x: x[1])
            out.append(
                (
                    f"latency at 50 %, {latency_ms:g} ms provider: smsrelay p99 below every "
                    "peer's p50",
                    f"{mine:,.1f} ms vs lowest peer p50 {best[0]} {best[1]:,.1f} ms",
                    mine < best[1],
                )
            )
    return out
