"""Where the smsrelay worker's CPU goes: py-spy on a real worker process draining a backlog.

    .venv/bin/python -m bench.profile --latency-ms 0 --concurrency 64 --messages 10000

py-spy (in the `bench` dependency group: `uv sync --group bench`) attaches to the worker
right after it starts and samples it from outside, without pausing it (`--nonblocking`), until
the backlog is drained. py-spy leaves out the samples of a thread waiting (the loop in epoll),
so the shares are shares of the worker's busy time; start-up is cut: only stacks under the
event loop's runner count, and none that import a module. On uvloop (what `smsrelay worker`
runs on where installed) the loop's own work is C with no Python frame: it shows as
"event loop internals".
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import systems
from bench.common import (
    ROOT,
    FakeTwilioProcess,
    cpu_seconds,
    install_cleanup,
    run_tag,
    spawn,
    stop,
    wait_until,
)

# A stack of the running worker passes through the loop's runner (asyncio's or uvloop's).
_LOOP_FILES = ("asyncio/runners.py", "asyncio/base_events.py", "uvloop/__init__.py")

# Leaf frame's file -> what it belongs to (first match wins). On uvloop the loop itself, its
# transports and the C task steps have no Python frame: their time shows as the runner's.
CATEGORIES: tuple[tuple[str, str], ...] = (
    ("/uvloop/", "event loop internals (uvloop/libuv, C)"),
    ("asyncio/runners.py", "event loop internals (uvloop/libuv, C)"),
    ("/twilio/", "twilio SDK (request building, response parsing)"),
    ("/aiohttp/", "aiohttp client (HTTP)"),
    ("/yarl/", "aiohttp client (HTTP)"),
    ("/multidict/", "aiohttp client (HTTP)"),
    ("/redis/", "redis-py"),
    ("/hiredis/", "redis-py"),
    ("/pydantic", "pydantic (entry parsing)"),
    ("/phonenumbers/", "phonenumbers (E.164 check)"),
    ("/structlog/", "structlog"),
    ("/prometheus_client/", "prometheus_client"),
    ("/smsrelay/", "smsrelay's own code"),
    ("/asyncio/", "asyncio event loop and tasks"),
    ("/selectors.py", "asyncio event loop and tasks"),
    ("/logging/", "stdlib logging"),
    ("/json/", "json"),
    ("/email/", "email.utils (the SDK's date parsing)"),
    ("/uuid.py", "uuid"),
    ("/datetime.py", "datetime"),
)

# Inclusive probes: (label, file fragment, function name).
PROBES: tuple[tuple[str, str, str], ...] = (
    ("handle one entry (all of it)", "smsrelay/consumers/handler.py", "handle"),
    ("parse_entry (pydantic + phonenumbers)", "smsrelay/schemas/entry.py", "parse_entry"),
    (
        "begin.lua for a read batch (decide_batch, one pipeline)",
        "smsrelay/consumers/handler.py",
        "decide_batch",
    ),
    ("begin.lua one by one (Queue.begin: claimed entries)", "smsrelay/streams/queue.py", "begin"),
    ("provider send (TwilioProvider.send)", "smsrelay/consumers/providers/twilio.py", "send"),
    (
        "  SDK MessageList.create_async",
        "twilio/rest/api/v2010/account/message/__init__.py",
        "create_async",
    ),
    (
        "  SDK request logging (log_request/log_response)",
        "twilio/http/__init__.py",
        "log_request|log_response",
    ),
    (
        "  SDK MessageInstance (response -> object)",
        "twilio/rest/api/v2010/account/message/__init__.py",
        "__init__",
    ),
    ("  aiohttp ClientSession._request", "aiohttp/client.py", "_request"),
    (
        "sent.lua and other coalesced scripts (ScriptBatcher pipelines)",
        "smsrelay/streams/batching.py",
        "_run",
    ),
    ("redis-py execute_command (all)", "redis/asyncio/client.py", "execute_command"),
    ("redis-py Script.__call__ (EVALSHA)", "redis/commands/core.py", "__call__"),
    ("read loop (XREADGROUP + dispatch)", "smsrelay/consumers/worker.py", "_read_loop"),
    ("structlog calls", "/structlog/", "*"),
    ("prometheus_client calls", "/prometheus_client/", "*"),
    ("segment_count", "smsrelay/schemas/segments.py", "segment_count"),
    ("clock.now / now_iso", "smsrelay/clock.py", "*"),
    (
        "heartbeat / claim / mover upkeep",
        "smsrelay/consumers/worker.py",
        "_heartbeat_loop|_claim_loop|_mover_loop",
    ),
)


@dataclass
class Profile:
    system: str
    latency_ms: float
    concurrency: int
    messages: int
    rate: float
    cpu_us_per_msg: float
    samples: int
    categories: list[tuple[str, float]] = field(default_factory=list)  # self time, %
    probes: list[tuple[str, float]] = field(default_factory=list)  # inclusive, %
    top_self: list[tuple[str, float]] = field(default_factory=list)
    raw_file: str = ""
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _frames(stack: str) -> list[tuple[str, str]]:
    """py-spy raw frames `func (path)` (or `func (path:line)`) -> [(path, func)]."""
    out = []
    for frame in stack.split(";"):
        func, _, rest = frame.partition(" (")
        func = func.rsplit(".", 1)[-1]  # `Class.method` -> `method`
        path = rest.rstrip(")")
        if ":" in path:
            path = path.rsplit(":", 1)[0] if path.rsplit(":", 1)[1].isdigit() else path
        out.append((path, func))
    return out


def _category(path: str) -> str:
    for fragment, name in CATEGORIES:
        if fragment in path:
            return name
    return "other (stdlib, C calls)"


def _probe_hit(frames: list[tuple[str, str]], fragment: str, funcs: str) -> bool:
    names = set(funcs.split("|"))
    return any(fragment in path and (funcs == "*" or func in names) for path, func in frames)


def analyse(
    raw: Path,
) -> tuple[int, list[tuple[str, float]], list[tuple[str, float]], list[tuple[str, float]]]:
    categories: Counter[str] = Counter()
    probes: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        frames = _frames(stack)
        if not any(path.endswith(_LOOP_FILES) for path, _ in frames) or any(
            "importlib._bootstrap" in path for path, _ in frames
        ):
            continue  # not under the event loop, or importing: start-up, not the drain
        if frames[-1][1] == "select" and frames[-1][0].endswith("selectors.py"):
            continue  # the loop waiting in epoll: idle, not CPU
        count = int(count_text)
        total += count
        path, func = frames[-1]
        categories[_category(path)] += count
        short = path.split("site-packages/")[-1].split("/python3.11/")[-1]
        leaves[f"{func} ({short})"] += count
        for label, fragment, funcs in PROBES:
            if _probe_hit(frames, fragment, funcs):
                probes[label] += count
    if total == 0:
        return 0, [], [], []

    def pct(counter: Counter[str], n: int | None = None) -> list[tuple[str, float]]:
        return [(k, round(100 * v / total, 1)) for k, v in counter.most_common(n)]

    ordered = [(label, round(100 * probes[label] / total, 1)) for label, _, _ in PROBES]
    return total, pct(categories), ordered, pct(leaves, 15)


def _pyspy() -> str | None:
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


def profile(
    latency_ms: float,
    concurrency: int,
    messages: int,
    out_dir: Path,
    smsrelay_root: Path = ROOT,
    rate_hz: int = 200,
    system_name: str = "smsrelay",
) -> Profile:
    result = Profile(system_name, latency_ms, concurrency, messages, 0.0, 0.0, 0)
    pyspy = _pyspy()
    if pyspy is None:
        result.error = "py-spy is not installed (uv sync --group bench)"
        return result
    out_dir.mkdir(parents=True, exist_ok=True)
    raw = out_dir / f"profile-{system_name}-{latency_ms:g}ms-{concurrency}.txt"
    result.raw_file = str(raw.relative_to(ROOT) if raw.is_relative_to(ROOT) else raw)
    system = systems.make(system_name, run_tag(), smsrelay_root=smsrelay_root)
    worker = spy = None
    with FakeTwilioProcess(latency_ms) as fake:
        try:
            system.enqueue(0, messages)
            worker = system.start_worker(fake.url, concurrency)
            spy = spawn(
                [
                    pyspy,
                    "record",
                    "--pid",
                    str(worker.pid),
                    "-o",
                    str(raw),
                    "-f",
                    "raw",
                    "-r",
                    str(rate_hz),
                    "--nonblocking",
                    "--full-filenames",
                    "--nolineno",
                ],
                stdout=subprocess.DEVNULL,
            )
            if not wait_until(lambda: fake.accepted() > 0, 60):
                result.error = "the worker sent nothing within 60 s"
                return result
            cpu0, n0 = cpu_seconds(worker.pid), fake.accepted()
            wait_until(lambda: fake.accepted() >= messages, max(120, messages / 50), 0.05)
            cpu1, n1 = cpu_seconds(worker.pid), fake.accepted()
            arrivals = sorted(float(r["at"]) for r in fake.requests())
            drain = arrivals[-1] - arrivals[0] + latency_ms / 1000
            result.rate = (len(arrivals) - 1) / drain if drain > 0 else 0.0
            result.cpu_us_per_msg = (cpu1 - cpu0) / max(n1 - n0, 1) * 1e6
            spy.send_signal(signal.SIGINT)  # py-spy writes its file on Ctrl-C
            try:
                spy.wait(timeout=30)
            except subprocess.TimeoutExpired:
                result.error = "py-spy did not stop"
        finally:
            if spy is not None:
                stop(spy, timeout_s=30)
            if worker is not None:
                stop(worker)
            system.cleanup()
    if raw.exists():
        (result.samples, result.categories, result.probes, result.top_self) = analyse(raw)
    elif not result.error:
        result.error = "py-spy wrote no output (ptrace not permitted?)"
    return result


def to_markdown(p: Profile) -> str:
    lines = [
        f"**{p.system}, {p.latency_ms:g} ms latency, {p.concurrency} in flight, "
        f"{p.messages:,} messages** — {p.rate:,.0f} msg/s under the profiler, worker CPU "
        f"{p.cpu_us_per_msg:,.0f} µs/msg, {p.samples:,} samples (`{p.raw_file}`)",
        "",
    ]
    if p.error:
        return "\n".join([*lines, f"profile failed: {p.error}", ""])
    lines += ["| self time by library (leaf frame) | % of CPU |", "|---|---:|"]
    lines += [f"| {name} | {share} |" for name, share in p.categories]
    lines += ["", "| inclusive (on the stack) | % of CPU |", "|---|---:|"]
    lines += [f"| {name} | {share} |" for name, share in p.probes]
    lines += ["", "| hottest functions (self) | % of CPU |", "|---|---:|"]
    lines += [f"| `{name}` | {share} |" for name, share in p.top_self]
    return "\n".join([*lines, ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--latency-ms", type=float, default=0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    parser.add_argument(
        "--smsrelay-root",
        type=Path,
        default=ROOT,
        help="profile the smsrelay package of another checkout",
    )
    parser.add_argument("--system", choices=("smsrelay", "bare"), default="smsrelay")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    install_cleanup()
    started = time.monotonic()
    result = profile(
        args.latency_ms,
        args.concurrency,
        args.messages,
        args.out,
        args.smsrelay_root.resolve(),
        system_name=args.system,
    )
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
    else:
        print(to_markdown(result))
        print(f"({time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
