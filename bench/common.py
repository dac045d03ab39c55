"""What every part of the benchmark shares: child processes, the fake Twilio, Redis, statistics.

Child processes each start in their own session (process group), are remembered in one
registry and are killed, group and all, on exit, on SIGTERM/SIGINT and on error.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import math
import os
import platform
import re
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
ACCOUNT_SID = "AC" + "0" * 32
AUTH_TOKEN = "bench-token"
FROM_NUMBER = "+15005550006"  # Twilio's magic "always OK" sender
# Loopback Redis; BENCH_REDIS_HOST/BENCH_REDIS_PORT point the benchmark at another local one.
REDIS_HOST = os.environ.get("BENCH_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("BENCH_REDIS_PORT", "6379"))
SMSRELAY_DB = 0
PEER_DBS = (5, 6, 7, 8, 9)


def run_tag() -> str:
    """A short random tag that names every key, queue and namespace of one run."""
    return secrets.token_hex(3)


def phone(i: int) -> str:
    """A distinct valid US number per message (so no rate limit ever bites, for any system)."""
    return f"+1415{2_000_000 + i % 1_000_000:07d}"


def body(tag: str, i: int) -> str:
    return f"bench {tag} message {i:06d}"


# -- statistics ------------------------------------------------------------------------------
def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (pct in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


# -- child processes -------------------------------------------------------------------------
_children: list[subprocess.Popen[Any]] = []
_children_lock = threading.Lock()


def spawn(
    cmd: Sequence[str],
    env: Mapping[str, str] | None = None,
    *,
    log: Path | None = None,
    stdout: int | None = None,
    cwd: Path = ROOT,
) -> subprocess.Popen[Any]:
    """Start a child in its own process group and remember it for clean-up."""
    out: Any = (
        stdout
        if stdout is not None
        else (open(log, "ab") if log is not None else subprocess.DEVNULL)  # noqa: SIM115
    )
    try:
        proc = subprocess.Popen(
            list(cmd),
            env=dict(env) if env is not None else None,
            stdout=out,
            stderr=subprocess.STDOUT if log else None,
            start_new_session=True,
            cwd=cwd,
        )
    finally:
        if log is not None and stdout is None:
            out.close()
    with _children_lock:
        _children.append(proc)
    return proc


def kill_group(proc: subprocess.Popen[Any], sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def stop(proc: subprocess.Popen[Any], timeout_s: float = 15.0) -> None:
    """SIGTERM the child's group, wait, then SIGKILL whatever is left of it."""
    if proc.poll() is None:
        kill_group(proc, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=timeout_s)
    kill_group(proc, signal.SIGKILL)  # stragglers of the group (forked workers)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)
    with _children_lock:
        if proc in _children:
            _children.remove(proc)


def kill_all() -> None:
    with _children_lock:
        children = list(_children)
        _children.clear()
    for proc in children:
        kill_group(proc, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    kill_all()
    raise SystemExit(128 + signum)


def install_cleanup() -> None:
    """Kill every child on exit and on SIGTERM/SIGINT (call once, from the main thread)."""
    atexit.register(kill_all)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)


@contextlib.contextmanager
def running(
    cmd: Sequence[str],
    env: Mapping[str, str] | None = None,
    *,
    log: Path | None = None,
    cwd: Path = ROOT,
) -> Iterator[subprocess.Popen[Any]]:
    proc = spawn(cmd, env, log=log, cwd=cwd)
    try:
        yield proc
    finally:
        stop(proc)


def tree_pids(pid: int) -> list[int]:
    """The process and all its descendants (Linux /proc)."""
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            with contextlib.suppress(OSError):
                todo += [int(c) for c in (task / "children").read_text().split()]
    return pids


def rss_bytes(pid: int) -> int:
    """Resident set size of the process and its descendants."""
    total = 0
    for p in tree_pids(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of the process and its descendants."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for p in tree_pids(pid):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{p}/stat").read_text().rpartition(")")[2].split()
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


# -- HTTP helpers (loopback only) ------------------------------------------------------------
def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=60) as resp:  # loopback only
        return json.loads(resp.read())


def post_json(url: str, payload: object) -> Any:
    req = urllib.request.Request(
        url,
        data=json.dumps(payload).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=60) as resp:  # loopback only
        return json.loads(resp.read())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the fake Twilio in its own process ------------------------------------------------------
class FakeTwilioProcess:
    """`smsrelay.testing.fake_twilio` on a free loopback port, driven through `/_fake/`."""

    def __init__(self, latency_ms: float = 0.0) -> None:
        self.latency_ms = latency_ms
        self.proc: subprocess.Popen[Any] | None = None
        self.url = ""

    def __enter__(self) -> FakeTwilioProcess:
        cmd = [
            PYTHON,
            "-m",
            "smsrelay.testing.fake_twilio",
            "--port",
            "0",
            "--latency-ms",
            str(self.latency_ms),
        ]
        self.proc = spawn(cmd, stdout=subprocess.PIPE)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        match = re.search(r"http://\S+", line)
        if match is None:
            stop(self.proc)
            raise RuntimeError(f"the fake Twilio did not start: {line!r}")
        self.url = match.group(0)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            stop(self.proc)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def reset(self, latency_ms: float | None = None) -> None:
        post_json(f"{self.url}/_fake/reset", {})
        if latency_ms is not None:
            self.set_latency(latency_ms)

    def set_latency(self, latency_ms: float) -> None:
        self.latency_ms = latency_ms
        post_json(f"{self.url}/_fake/latency", {"seconds": latency_ms / 1000})

    def accepted(self) -> int:
        return int(get_json(f"{self.url}/_fake/stats")["accepted"])

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = get_json(f"{self.url}/_fake/stats")
        return result

    def requests(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = get_json(f"{self.url}/_fake/requests")
        return result

    def messages(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = get_json(f"{self.url}/_fake/messages")
        return result


# -- Redis -----------------------------------------------------------------------------------
def redis_url(db: int) -> str:
    return f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"


def redis_client(db: int) -> redis.Redis:
    return redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db)


def delete_matching(db: int, pattern: str) -> int:
    """Delete the keys of one run (its own prefix); never a flush of a shared database."""
    client = redis_client(db)
    deleted = 0
    try:
        batch: list[bytes] = []
        for key in client.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) >= 500:
                n: Any = client.unlink(*batch)
                deleted += int(n)
                batch = []
        if batch:
            rest: Any = client.unlink(*batch)
            deleted += int(rest)
    finally:
        client.close()
    return deleted


def memory_of(db: int, pattern: str) -> tuple[int, int]:
    """(bytes by MEMORY USAGE ... SAMPLES 0, key count) of the keys matching a pattern."""
    client = redis_client(db)
    total = keys = 0
    try:
        for key in client.scan_iter(match=pattern, count=1000):
            usage: Any = client.memory_usage(key, samples=0)
            total += int(usage or 0)
            keys += 1
    finally:
        client.close()
    return total, keys


def used_memory() -> int:
    client = redis_client(SMSRELAY_DB)
    try:
        info: Any = client.info("memory")
        return int(info["used_memory"])
    finally:
        client.close()


# -- the machine -----------------------------------------------------------------------------
@dataclass
class Machine:
    cpus: int
    cpu_model: str
    memory_gib: float
    python: str
    redis_version: str
    os: str
    packages: dict[str, str] = field(default_factory=dict)


def machine() -> Machine:
    model = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    client = redis_client(SMSRELAY_DB)
    try:
        server: Any = client.info("server")
        redis_version = str(server["redis_version"])
    finally:
        client.close()
    from importlib import metadata

    packages = {}
    for name in (
        "twilio",
        "aiohttp",
        "redis",
        "hiredis",
        "uvloop",
        "dramatiq",
        "celery",
        "kombu",
        "arq",
        "requests",
    ):
        with contextlib.suppress(metadata.PackageNotFoundError):
            packages[name] = metadata.version(name)
    return Machine(
        cpus=os.cpu_count() or 0,
        cpu_model=model,
        memory_gib=round(mem_kib / 1024 / 1024, 1),
        python=platform.python_version(),
        redis_version=redis_version,
        os=f"{platform.system()} {platform.release()}",
        packages=packages,
    )


def code_state(root: Path) -> dict[str, Any]:
    """The smsrelay code under test: its commit and the files changed since (a moving tree)."""

    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=False
            ).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""

    changed = [
        line[3:]
        for line in git("status", "--porcelain", "--", "smsrelay").splitlines()
        if not line[3:].endswith((".pyc", "/"))
    ]
    return {
        "root": str(root),
        "commit": git("rev-parse", "--short", "HEAD"),
        "changed": [c for c in changed if "__pycache__" not in c],
    }


def wait_until(predicate: Any, timeout_s: float, interval_s: float = 0.05) -> bool:
    """Poll `predicate()` until true or the deadline; bounded, never forever."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return bool(predicate())
