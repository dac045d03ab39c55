"""Run the whole benchmark and write BENCHMARKS.md.

    .venv/bin/python -m bench.run              # full: ~45 min, writes BENCHMARKS.md
    .venv/bin/python -m bench.run --quick      # ~5 min, writes bench/out/BENCHMARKS-quick.md
    .venv/bin/python -m bench.run --smoke      # <1 min (CI), writes bench/out/BENCHMARKS-smoke.md

Needs Redis on 127.0.0.1:6379. Dramatiq, Celery and arq run from an environment of their own
(bench/peers/venv, pinned in bench/peers/requirements.txt), made on first use (`--smoke` uses it
only when it is there, or with --install-peers); py-spy (`uv sync --group bench`) for the
profile phase, which is skipped without it.
`--phases` picks phases, `--systems` picks systems; the raw results go to bench/out/*.json.
Issue 16's measurements are the phases `lanes` (a login code behind a bulk backlog), `memory`
(Redis bytes per queued message, worker RSS while draining) and `latency` (end-to-end latency at
50 % and 90 % of each system's maximum), e.g.
`python -m bench.run --phases lanes,memory,latency --output bench/out/BENCHMARKS-measure.md`.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import re
import shlex
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import (
    crash,
    e2e,
    footprint,
    lanes_bench,
    latency,
    memory_bench,
    peer_env,
    publish_cost,
    report,
    systems,
)
from bench.common import ROOT, FakeTwilioProcess, code_state, install_cleanup, machine

PHASES = (
    "ceiling",
    "publish",
    "e2e",
    "crash",
    "footprint",
    "profile",
    "lanes",
    "memory",
    "latency",
)
OUT = ROOT / "bench" / "out"


@dataclass
class Config:
    mode: str
    e2e_messages: int
    repeats: int
    e2e_scenarios: list[tuple[float, int]]
    publish_count: int
    publish_rounds: int
    crash_in_flight: int
    crash_cap_s: float
    queued_messages: int
    rss_messages: int
    profile_runs: list[tuple[float, int, int]]  # (latency ms, concurrency, messages)
    ceiling_duration_s: float
    systems: list[str] = field(default_factory=lambda: list(systems.SYSTEMS))
    crash_systems: list[str] = field(default_factory=lambda: list(systems.SYSTEMS))
    rss_systems: list[str] = field(default_factory=lambda: list(systems.SYSTEMS))
    settle_s: float = 3.0  # a new worker's start-up allowance (crash survivor, RSS "before")
    crash_background: bool = False  # run the crash scenarios beside the other phases
    phases: list[str] = field(default_factory=lambda: list(PHASES))
    output: str = "BENCHMARKS.md"
    smsrelay_root: str = str(ROOT)
    # Make the peers' environment when it is missing (a minute, once); the smoke run (CI)
    # uses it only when it is already there.
    install_peers: bool = True
    # Issue 16's "Measure": a login code behind a bulk backlog (smsrelay only) ...
    lanes_bulk: int = 20_000
    lanes_high: int = 100
    lanes_interval_ms: float = 50.0
    lanes_latency_ms: float = 50.0
    lanes_start_after: int = 2000  # sends accepted before the high messages start
    lanes_rounds: int = 3  # pairs of runs, with and without the high messages
    # ... Redis bytes per queued message and the worker's RSS while it drains them ...
    memory_messages: int = 100_000
    # ... and end-to-end latency at fixed fractions of each system's own maximum.
    latency_duration_s: float = 15.0
    latency_loads: list[float] = field(default_factory=lambda: [0.5, 0.9])
    latency_provider_ms: list[float] = field(default_factory=lambda: [0.0, 200.0])
    latency_systems: list[str] = field(
        default_factory=lambda: ["smsrelay", "bare", "dramatiq", "celery", "arq"]
    )
    latency_concurrency: int = 64
    latency_max_messages: int = 3000  # per maximum measured here (when no e2e row to reuse)
    latency_max_repeats: int = 3  # drains per maximum measured here (median)


SCENARIOS = [(0.0, 64), (200.0, 64), (200.0, 256)]

PRESETS: dict[str, Config] = {
    "full": Config(
        "full",
        5000,
        3,
        SCENARIOS,
        5000,
        3,
        20,
        1800.0,
        10_000,
        50_000,
        [(0.0, 64, 30_000), (200.0, 256, 20_000)],
        3.0,
        crash_background=True,
    ),
    "quick": Config(
        "quick",
        2000,
        1,
        SCENARIOS,
        1000,
        1,
        20,
        150.0,
        2000,
        5000,
        [(0.0, 64, 5000), (200.0, 256, 5000)],
        2.0,
        crash_background=True,
        output="bench/out/BENCHMARKS-quick.md",
        lanes_rounds=1,
        memory_messages=20_000,
        latency_duration_s=5.0,
        latency_max_messages=1500,
        latency_max_repeats=1,
    ),
    # CI: behaviour, not speed. Small counts, peers only where they are quick.
    "smoke": Config(
        "smoke",
        300,
        1,
        [(0.0, 64)],
        200,
        1,
        10,
        30.0,
        300,
        300,
        [],
        1.0,
        phases=["publish", "e2e", "crash", "footprint", "lanes", "memory", "latency"],
        crash_systems=["smsrelay"],
        rss_systems=["smsrelay", "bare"],
        settle_s=1.5,
        output="bench/out/BENCHMARKS-smoke.md",
        install_peers=False,
        lanes_bulk=2000,
        lanes_high=10,
        lanes_start_after=200,
        lanes_rounds=1,
        memory_messages=2000,
        latency_duration_s=2.0,
        latency_loads=[0.5],
        latency_provider_ms=[0.0],
        latency_systems=["smsrelay", "bare"],
        latency_max_messages=300,
        latency_max_repeats=1,
    ),
}


def _log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def _interpreter() -> str:
    exe = Path(sys.executable)
    return str(exe.relative_to(ROOT)) if exe.is_relative_to(ROOT) else str(exe)


def available_systems(wanted: list[str], install: bool = True) -> tuple[list[str], list[str]]:
    """The wanted systems that can run, and the missing ones. The peers run from an
    environment of their own (bench/peer_env.py), made here on first use when `install`."""
    peers = [name for name in wanted if systems.KIND.get(name, name) in systems.PEERS]
    if not peers:
        return list(wanted), []
    try:
        peer_env.peer_python(install=install)
    except peer_env.PeersUnavailable as exc:
        _log(f"peers unavailable: {exc}")
        return [name for name in wanted if name not in peers], peers
    return list(wanted), []


def run_ceiling(cfg: Config) -> list[dict[str, Any]]:
    from bench.fake_twilio_ceiling import drive

    out = []
    with FakeTwilioProcess() as fake:
        for conc in sorted({c for _, c in cfg.e2e_scenarios}):
            rate, _ = asyncio.run(drive(fake.url, conc, cfg.ceiling_duration_s))
            fake.reset()
            out.append({"concurrency": conc, "rate": rate})
            _log(f"fake Twilio ceiling at {conc}: {rate:,.0f} req/s")
    return out


def run_publish(cfg: Config) -> list[dict[str, Any]]:
    peers = [p for p in systems.PEERS if p in cfg.systems]
    apis = tuple(
        a
        for a, _ in publish_cost.APIS
        if publish_cost.PEER_OF_API.get(a, "smsrelay") in (*peers, "smsrelay")
    )
    costs = publish_cost.measure(cfg.publish_count, cfg.publish_rounds, apis=apis)
    for c in costs:
        _log(f"publish {c.label}: median {c.median_us:.1f} µs, p99 {c.p99_us:.0f} µs {c.error}")
    return [c.as_dict() for c in costs]


def run_e2e(cfg: Config, log_dir: Path) -> list[dict[str, Any]]:
    rows = []
    root = Path(cfg.smsrelay_root)
    with FakeTwilioProcess() as fake:
        for rep in range(cfg.repeats):
            for lat, conc in cfg.e2e_scenarios:
                shift = rep % len(cfg.systems)
                order = cfg.systems[shift:] + cfg.systems[:shift]
                for name in order:
                    r = e2e.measure(
                        name, fake, cfg.e2e_messages, lat, conc, log_dir=log_dir, smsrelay_root=root
                    )
                    _log(
                        f"e2e #{rep + 1} {name} {lat:g} ms/{conc}: {r.rate:,.0f} msg/s "
                        f"(worker {r.cpu_us_per_msg:,.0f} µs/msg) {r.error}"
                    )
                    rows.append(r.as_dict())
    return rows


def run_crash(
    cfg: Config, log_dir: Path, waiting: threading.Event | None = None
) -> list[dict[str, Any]]:
    _log(f"crash recovery, scenarios in parallel (cap {cfg.crash_cap_s:g} s)")
    only = tuple(s for s in cfg.systems if s != "bare" and s in cfg.crash_systems)
    results = crash.run_all(
        cfg.mode,
        cfg.crash_in_flight,
        cfg.crash_cap_s,
        log_dir=log_dir,
        only=only,
        settle_s=cfg.settle_s,
        waiting=waiting,
    )
    for r in results:
        _log(
            f"crash {r.system} [{r.setting}]: {r.recovery_s} s, "
            f"{r.recovered}/{r.in_flight} {r.error}"
        )
    return [r.as_dict() for r in results]


def run_footprint(cfg: Config, log_dir: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    queued = []
    for name in cfg.systems:
        if name == "bare" or name in systems.TUNED:
            continue  # the same entries / code as smsrelay / their peer
        q = footprint.queued_bytes(name, cfg.queued_messages)
        _log(f"queued bytes {name}: {q.bytes_per_msg:,.0f} B/msg {q.error}")
        queued.append(q.as_dict())
    rss = []
    with FakeTwilioProcess() as fake:
        for name in (s for s in cfg.systems if s in cfg.rss_systems and s not in systems.TUNED):
            r = footprint.worker_rss(
                name, cfg.rss_messages, fake, settle_s=cfg.settle_s, log_dir=log_dir
            )
            _log(f"RSS {name}: {r.before_mib} -> {r.after_mib} MiB {r.error}")
            rss.append(r.as_dict())
    return queued, rss


def run_lanes(cfg: Config, log_dir: Path) -> list[dict[str, Any]]:
    with FakeTwilioProcess() as fake:
        runs = lanes_bench.run_all(
            fake,
            rounds=cfg.lanes_rounds,
            bulk=cfg.lanes_bulk,
            high=cfg.lanes_high,
            interval_ms=cfg.lanes_interval_ms,
            latency_ms=cfg.lanes_latency_ms,
            start_after=cfg.lanes_start_after,
            log_dir=log_dir,
            smsrelay_root=Path(cfg.smsrelay_root),
            log=_log,
        )
    return [r.as_dict() for r in runs]


def run_memory(cfg: Config, log_dir: Path) -> dict[str, Any]:
    with FakeTwilioProcess() as fake:
        m = memory_bench.measure(
            fake, cfg.memory_messages, log_dir=log_dir, smsrelay_root=Path(cfg.smsrelay_root)
        )
    _log(
        f"memory: {m.used_memory_per_msg:,.0f} B/msg used_memory "
        f"({m.memory_usage_per_msg:,.0f} MEMORY USAGE; entry {m.entry_bytes} B); RSS "
        f"{m.rss_start_mib} -> peak {m.rss_peak_mib} -> {m.rss_end_mib} MiB {m.error}"
    )
    return m.as_dict()


def run_latency(cfg: Config, log_dir: Path, e2e_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    names = [s for s in cfg.latency_systems if s in cfg.systems]
    with FakeTwilioProcess() as fake:
        runs = latency.run_all(
            fake,
            names,
            provider_ms=cfg.latency_provider_ms,
            loads=cfg.latency_loads,
            concurrency=cfg.latency_concurrency,
            duration_s=cfg.latency_duration_s,
            max_messages=cfg.latency_max_messages,
            e2e_rows=e2e_rows,
            log_dir=log_dir,
            smsrelay_root=Path(cfg.smsrelay_root),
            log=_log,
            max_repeats=cfg.latency_max_repeats,
        )
    return [r.as_dict() for r in runs]


def run_profiles(cfg: Config) -> list[dict[str, Any]]:
    from bench import profile

    out = []
    for lat, conc, messages in cfg.profile_runs:
        p = profile.profile(lat, conc, messages, OUT, Path(cfg.smsrelay_root))
        _log(f"profile {lat:g} ms/{conc}: {p.samples} samples, {p.rate:,.0f} msg/s {p.error}")
        out.append(p.as_dict())
    return out


KEPT = "`bench.run` does not rewrite this section"


def write_report(output: Path, text: str) -> None:
    """Write the report, carrying over the sections of the file it replaces that other
    commands wrote (their text says KEPT): bench.cluster_scale's, bench.trace_cost's."""
    kept: list[str] = []
    if output.exists():
        sections = re.split(r"(?m)^(?=## )", output.read_text())
        kept = [section.rstrip() + "\n" for section in sections if KEPT in section]
    output.write_text(text.rstrip() + "\n" + "".join("\n" + section for section in kept))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="smsrelay vs Dramatiq, Celery, arq and a bare asyncio loop"
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="a few minutes, small counts")
    mode.add_argument("--smoke", action="store_true", help="under a minute (CI)")
    parser.add_argument("--phases", help=f"comma-separated subset of {','.join(PHASES)}")
    parser.add_argument("--systems", help=f"comma-separated subset of {','.join(systems.SYSTEMS)}")
    parser.add_argument("--repeats", type=int, help="end-to-end repeats (median reported)")
    parser.add_argument("--messages", type=int, help="messages per end-to-end run")
    parser.add_argument("--output", help="where to write the report (BENCHMARKS.md for full)")
    parser.add_argument("--json", dest="json_path", help="where to write the raw results")
    parser.add_argument(
        "--smsrelay-root",
        type=Path,
        help="benchmark the smsrelay package of another checkout (A/B)",
    )
    parser.add_argument(
        "--install-peers",
        action="store_true",
        help="make the peers' environment if missing (the default but for --smoke)",
    )
    parser.add_argument(
        "--render",
        type=Path,
        metavar="RESULTS_JSON",
        help="only write the report again from a results file",
    )
    args = parser.parse_args(argv)
    if args.render:
        saved = json.loads(args.render.read_text())
        output = Path(args.output or saved["config"]["output"])
        output = output if output.is_absolute() else ROOT / output
        write_report(output, report.render(saved))
        _log(f"wrote {output} from {args.render}")
        return 0
    preset = "smoke" if args.smoke else "quick" if args.quick else "full"
    cfg = Config(**asdict(PRESETS[preset]))
    if args.phases:
        cfg.phases = [p for p in args.phases.split(",") if p]
        unknown = set(cfg.phases) - set(PHASES)
        if unknown:
            parser.error(f"unknown phases: {', '.join(sorted(unknown))}")
    if args.systems:
        cfg.systems = [s for s in args.systems.split(",") if s]
        unknown = set(cfg.systems) - set(systems.SYSTEMS)
        if unknown:
            parser.error(f"unknown systems: {', '.join(sorted(unknown))}")
    cfg.repeats = args.repeats or cfg.repeats
    cfg.e2e_messages = args.messages or cfg.e2e_messages
    cfg.output = args.output or cfg.output
    if args.smsrelay_root:
        cfg.smsrelay_root = str(args.smsrelay_root.resolve())
    if args.install_peers:
        cfg.install_peers = True
    cfg.systems, missing = available_systems(cfg.systems, cfg.install_peers)
    if missing:
        _log(f"skipping {', '.join(missing)}: no peers' environment (python -m bench.peer_env)")

    install_cleanup()
    OUT.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    log_dir = OUT / f"logs-{preset}-{stamp}"
    log_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    results: dict[str, Any] = {
        "command": " ".join(
            [
                _interpreter(),
                "-m bench.run",
                *map(shlex.quote, argv if argv is not None else sys.argv[1:]),
            ]
        ),
        "started": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "config": asdict(cfg),
        "machine": asdict(machine()),
        "code": code_state(Path(cfg.smsrelay_root)),
        "missing_systems": missing,
    }
    _log(f"{preset} run: phases {', '.join(cfg.phases)}; systems {', '.join(cfg.systems)}")
    crash_future: concurrent.futures.Future[list[dict[str, Any]]] | None = None
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    if "crash" in cfg.phases and cfg.crash_background:
        # The crash scenarios mostly wait (minutes, for the peers' default timeouts) with idle
        # workers: they run beside the other phases instead of after them.
        waiting = threading.Event()
        crash_future = pool.submit(run_crash, cfg, log_dir, waiting)
        # Their set-up (a dozen processes starting) would disturb the measurements: the other
        # phases start once every victim is dead and the scenarios only wait.
        waiting.wait(timeout=300)
        _log("crash scenarios are waiting; the other phases run beside them")
    if "ceiling" in cfg.phases:
        results["ceiling"] = run_ceiling(cfg)
    if "publish" in cfg.phases:
        results["publish"] = run_publish(cfg)
    if "e2e" in cfg.phases:
        results["e2e"] = run_e2e(cfg, log_dir)
    if crash_future is not None:
        _log("waiting for the crash-recovery scenarios")
        results["crash"] = crash_future.result()
    elif "crash" in cfg.phases:
        results["crash"] = run_crash(cfg, log_dir)
    if "footprint" in cfg.phases:
        results["queued_bytes"], results["rss"] = run_footprint(cfg, log_dir)
    if "profile" in cfg.phases:
        results["profiles"] = run_profiles(cfg)
    if "lanes" in cfg.phases:
        results["lanes"] = run_lanes(cfg, log_dir)
    if "memory" in cfg.phases:
        results["memory"] = run_memory(cfg, log_dir)
    if "latency" in cfg.phases:
        results["latency"] = run_latency(cfg, log_dir, results.get("e2e", []))
    pool.shutdown(wait=False)
    results["elapsed_s"] = time.monotonic() - started

    json_path = Path(args.json_path) if args.json_path else OUT / f"results-{preset}-{stamp}.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=2))
    output = Path(cfg.output)
    output = output if output.is_absolute() else ROOT / output
    output.parent.mkdir(parents=True, exist_ok=True)
    write_report(output, report.render(results))
    _log(f"wrote {output} and {json_path} in {results['elapsed_s'] / 60:.1f} min")
    for target, got, ok in report.targets(results) + report.targets16(results):
        _log(f"{'HOLDS' if ok else 'FAILS'}  {target}: {got}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
