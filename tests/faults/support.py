"""What the fault suite breaks and watches: private servers, real processes, polling, figures.

Every process started here is registered with a `Processes` group that kills what is still
running at the end of the test (pass or fail); every private server lives in a temporary
directory that is removed with it. Loopback addresses only.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import httpx
import redis

from smsrelay.settings import Settings
from smsrelay.streams.keys import WORKER_GROUP, ShardKeys
from tests.conftest import TEST_ACCOUNT_SID, TEST_AUTH_TOKEN, TEST_FROM
from tests.support.servers import LOOPBACK, free_port
from tests.support.wait import wait_for

# -- measured figures ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Figure:
    test: str
    name: str
    value: float | int | str
    unit: str = ""


FIGURES: list[Figure] = []


def record_figure(test: str, name: str, value: float | int | str, unit: str = "") -> None:
    """Keep a measured figure; the suite prints them at the end (and writes them as JSON to
    $SMSRELAY_FAULTS_FIGURES when set, which `scripts/soak` does)."""
    if isinstance(value, float):
        value = round(value, 3)
    FIGURES.append(Figure(test, name, value, unit))


# -- processes -----------------------------------------------------------------------------------


def child_env(**extra: str) -> dict[str, str]:
    """The test's environment without any SMSRELAY_/TWILIO_ variable, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SMSRELAY_", "TWILIO_"))}
    env.update(extra)
    return env


@dataclass
class Managed:
    """One child process with its log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def events(self) -> list[dict[str, Any]]:
        """The JSON log lines of the process (other lines are skipped)."""
        out: list[dict[str, Any]] = []
        for line in self.log_text().splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    event = json.loads(line)
                    if isinstance(event, dict):
                        out.append(event)
        return out

    def event_names(self) -> Counter[str]:
        return Counter(str(e.get("event")) for e in self.events())

    def signal(self, sig: int) -> None:
        if self.alive():
            self.popen.send_signal(sig)

    def kill(self) -> None:
        if self.alive():
            self.popen.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=10)

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout=timeout)

    def rss_kib(self) -> int:
        """Resident set size, from /proc (KiB)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError(f"no VmRSS for {self.name} (pid {self.pid})")

    def tail(self, lines: int = 30) -> str:
        """The last warning/error and non-JSON lines of the log (info lines are skipped)."""
        kept = [
            line
            for line in self.log_text().splitlines()
            if '"level": "info"' not in line and '"level": "debug"' not in line
        ]
        return "\n".join(kept[-lines:])


class Processes:
    """Starts children and kills every one still running when the test ends."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.children: list[Managed] = []

    def start(self, name: str, argv: list[str], env: Mapping[str, str]) -> Managed:
        log = self.directory / f"{name}.log"
        with log.open("ab") as out:
            popen = subprocess.Popen(
                argv, env=dict(env), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        child = Managed(name, popen, log)
        self.children.append(child)
        return child

    def kill_all(self) -> None:
        for child in reversed(self.children):
            child.kill()

    def describe(self) -> str:
        """The last lines of every child's log, for a failure message."""
        return "\n".join(
            f"--- {c.name} (pid {c.pid}, rc {c.popen.poll()}):\n{c.tail()}" for c in self.children
        )


def worker_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of `smsrelay worker` for these settings (JSON logs at info)."""
    env = child_env(
        SMSRELAY_REDIS_URL=settings.redis_url,
        SMSRELAY_DATABASE_URL=settings.database_url,
        SMSRELAY_NAMESPACE=settings.namespace,
        SMSRELAY_TWILIO_BASE_URL=settings.twilio_base_url,
        TWILIO_ACCOUNT_SID=TEST_ACCOUNT_SID,
        TWILIO_AUTH_TOKEN=TEST_AUTH_TOKEN,
        SMSRELAY_TWILIO_FROM=TEST_FROM,
        SMSRELAY_METRICS_PORT="0",
        SMSRELAY_LOG_FORMAT="json",
        SMSRELAY_LOG_LEVEL="info",
        SMSRELAY_SPOOL_DIR=str(settings.spool_dir),
        SMSRELAY_CLAIM_IDLE_SECONDS=f"{settings.claim_idle_seconds:g}",
        SMSRELAY_BACKOFF_BASE_SECONDS=f"{settings.backoff_base_seconds:g}",
        SMSRELAY_BACKOFF_JITTER=f"{settings.backoff_jitter:g}",
        SMSRELAY_TWILIO_TIMEOUT_SECONDS=f"{settings.twilio_timeout_seconds:g}",
        SMSRELAY_SHUTDOWN_GRACE_SECONDS=f"{settings.shutdown_grace_seconds:g}",
        SMSRELAY_RATE_LIMIT_MAX=str(settings.rate_limit_max),
        SMSRELAY_RATE_LIMIT_WINDOW_SECONDS=f"{settings.rate_limit_window_seconds:g}",
        SMSRELAY_ON_RATE_LIMIT=settings.on_rate_limit,
        SMSRELAY_MAX_ATTEMPTS=str(settings.max_attempts),
        SMSRELAY_MAX_DELIVERIES=str(settings.max_deliveries),
        SMSRELAY_WORKER_CONCURRENCY=str(settings.worker_concurrency),
        SMSRELAY_BREAKER_THRESHOLD=str(settings.breaker_threshold),
        SMSRELAY_BREAKER_COOLDOWN_SECONDS=f"{settings.breaker_cooldown_seconds:g}",
        SMSRELAY_SEND_RATE=f"{settings.send_rate:g}",
        SMSRELAY_MESSAGE_TTL_SECONDS=f"{settings.message_ttl_seconds:g}",
        SMSRELAY_SHARDS=str(settings.shards),
    )
    if settings.send_burst is not None:
        env["SMSRELAY_SEND_BURST"] = str(settings.send_burst)
    env.update(extra)
    return env


def start_worker(
    procs: Processes,
    settings: Settings,
    name: str,
    *,
    mirror: bool = False,
    ready: bool = True,
    **extra: str,
) -> Managed:
    """`smsrelay worker` as a real process; waits for its `worker.started` line."""
    argv = [sys.executable, "-m", "smsrelay.cli", "worker"]
    if not mirror:
        argv.append("--no-mirror")
    env = worker_env(settings, **extra)
    assert env["SMSRELAY_LOG_LEVEL"] in ("debug", "info"), "readiness is read from the log"
    child = procs.start(name, argv, env)
    if ready:
        wait_for(
            lambda: not child.alive() or "worker.started" in child.log_text(),
            30,
            f"{name} to start",
        )
        assert child.alive(), f"{name} exited at start:\n{child.tail()}"
    return child


ADMIN_TOKEN = "faults-admin-token-0123456789"


def start_admin(procs: Processes, settings: Settings, port: int, **extra: str) -> Managed:
    """`smsrelay admin` as a real process (token ADMIN_TOKEN); waits until /healthz answers."""
    env = worker_env(settings, SMSRELAY_ADMIN_TOKEN=ADMIN_TOKEN, **extra)
    child = procs.start(
        "admin",
        [sys.executable, "-m", "smsrelay.cli", "admin", "--host", LOOPBACK, "--port", str(port)],
        env,
    )

    def healthy() -> bool:
        if not child.alive():
            return True
        try:
            return httpx.get(f"http://{LOOPBACK}:{port}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(healthy, 30, "the admin to answer /healthz")
    assert child.alive(), child.tail()
    return child


# -- the fake Twilio as a process ----------------------------------------------------------------


class FakeTwilioProcess:
    """`smsrelay fake-twilio --port P`, driven over its `/_fake/` control endpoints."""

    def __init__(
        self,
        procs: Processes,
        name: str = "fake-twilio",
        port: int | None = None,
        latency_ms: float = 0.0,
    ) -> None:
        self.procs = procs
        self.name = name
        self.port = port or free_port()
        self.latency_ms = latency_ms
        self.child: Managed | None = None
        self._http = httpx.Client(base_url=self.url, timeout=30)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self) -> None:
        argv = [
            sys.executable,
            "-m",
            "smsrelay.cli",
            "fake-twilio",
            "--host",
            LOOPBACK,
            "--port",
            str(self.port),
            "--latency-ms",
            f"{self.latency_ms:g}",
        ]
        child = self.procs.start(self.name, argv, child_env())
        self.child = child
        wait_for(
            lambda: not child.alive() or "listening on" in child.log_text(),
            30,
            "the fake Twilio to listen",
        )
        assert child.alive(), child.tail()

    def kill(self) -> None:
        if self.child is not None:
            self.child.kill()

    def close(self) -> None:
        self._http.close()
        self.kill()

    def _get(self, path: str) -> Any:
        response = self._http.get(path)
        response.raise_for_status()
        return response.json()

    def stats(self) -> dict[str, Any]:
        return cast(dict[str, Any], self._get("/_fake/stats"))

    def messages(self) -> list[dict[str, Any]]:
        return cast(list[dict[str, Any]], self._get("/_fake/messages"))

    def requests(self) -> list[dict[str, Any]]:
        return cast(list[dict[str, Any]], self._get("/_fake/requests"))

    def script(self, to: str, steps: Iterable[Any], default: Any = None) -> None:
        response = self._http.post(
            "/_fake/script", json={"to": to, "steps": list(steps), "default": default}
        )
        response.raise_for_status()

    def set_latency(self, seconds: float) -> None:
        self._http.post("/_fake/latency", json={"seconds": seconds}).raise_for_status()


# -- reading the pipeline's state ----------------------------------------------------------------


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


@dataclass
class Pipeline:
    """Read-only views of one namespace's shard 0 on a Redis."""

    client: redis.Redis
    namespace: str
    keys: ShardKeys = field(init=False)

    def __post_init__(self) -> None:
        self.keys = ShardKeys(self.namespace, 0)

    def backlog(self) -> tuple[int, int, int]:
        """(request stream length, pending entries of the worker group, delayed messages)."""
        length = int(self.client.xlen(self.keys.requests))
        try:
            info = self.client.xpending(self.keys.requests, WORKER_GROUP)
            pending = int(info["pending"])
        except redis.ResponseError:
            pending = 0
        delayed = int(self.client.zcard(self.keys.delayed))
        return length, pending, delayed

    def drained(self) -> bool:
        return self.backlog() == (0, 0, 0)

    def length(self, key: str) -> int:
        return int(self.client.xlen(key))

    def add(self, fields: Mapping[bytes, bytes]) -> str:
        """XADD raw fields to the request stream (as any publisher in any language may)."""
        return _text(cast(bytes, self.client.xadd(self.keys.requests, cast(Any, fields))))

    def request_ids(self) -> list[str]:
        """The `id` field of every entry on the request stream, in order."""
        entries = cast(
            list[tuple[bytes, dict[bytes, bytes]]], self.client.xrange(self.keys.requests)
        )
        return [_text(fields.get(b"id", b"")) for _, fields in entries]

    def dead_letters(self) -> list[dict[str, str]]:
        entries = cast(list[tuple[bytes, dict[bytes, bytes]]], self.client.xrange(self.keys.dead))
        return [{_text(k): _text(v) for k, v in fields.items()} for _, fields in entries]

    def sent_markers(self, message_ids: Iterable[str]) -> set[str]:
        """The message ids among `message_ids` that have a sent marker."""
        ids = list(message_ids)
        found: set[str] = set()
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            values = cast(list[bytes | None], self.client.mget([self.keys.sent(i) for i in chunk]))
            found.update(i for i, v in zip(chunk, values, strict=True) if v is not None)
        return found


def delete_namespace(client: redis.Redis, namespace: str) -> None:
    keys = [
        *client.scan_iter(match=f"{{{namespace}:*", count=1000),
        *client.scan_iter(match=f"{{{namespace}}}:*", count=1000),
    ]
    for start in range(0, len(keys), 1000):
        client.delete(*keys[start : start + 1000])


@contextlib.contextmanager
def closing_client(client: redis.Redis) -> Iterator[redis.Redis]:
    try:
        yield client
    finally:
        client.close()


# -- publishing ----------------------------------------------------------------------------------


def phone(n: int) -> str:
    """A distinct valid US number per n < 10,000 (libphonenumber accepts 415-555-xxxx)."""
    return f"+1415555{n:04d}"


def publish_all(settings: Settings, messages: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Publish (to, body) pairs; all must be queued. Returns body -> message id."""
    from smsrelay.producers.publish import Producer

    ids: dict[str, str] = {}
    with Producer(settings) as producer:
        for to, body in messages:
            result = producer.publish(to, body)
            assert result.status == "queued", result
            assert result.message_id is not None
            ids[body] = result.message_id
    return ids
