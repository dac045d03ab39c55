"""Scale-out: 1, 2 and 4 workers on one Redis and on a 3-master Redis Cluster, same run.

    .venv/bin/python -m bench.cluster_scale                 # 6,000 messages per run
    .venv/bin/python -m bench.cluster_scale --messages 2000 --workers 1,2 --json out.json

Starts its own redis-servers (one standalone, three cluster masters without replicas, AOF off
on all: the figures are about CPU and routing, not the disk) and the fake Twilio (0 ms). Each
run queues the messages on 12 shards first, then starts the workers (`smsrelay worker
--no-mirror`, 64 in flight each) and times the drain from the fake's first request to its last.
CPU seconds of the workers, the Redis servers and the fake over the drain tell where it went.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import redis

from bench.common import (
    ACCOUNT_SID,
    AUTH_TOKEN,
    FROM_NUMBER,
    PYTHON,
    ROOT,
    FakeTwilioProcess,
    body,
    cpu_seconds,
    free_port,
    install_cleanup,
    phone,
    run_tag,
    spawn,
    stop,
    wait_until,
)

SHARDS = 12
CONCURRENCY = 64


@dataclass
class ScaleResult:
    topology: str  # "one Redis" or "cluster (3 masters)"
    workers: int
    messages: int
    drain_s: float = 0.0
    rate: float = 0.0
    duplicates: int = 0
    worker_cpu_s: float = 0.0
    redis_cpu_s: float = 0.0
    fake_cpu_s: float = 0.0
    error: str = ""


class Servers:
    """redis-server processes of the benchmark's own, in a temporary directory."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="smsrelay-scale-"))
        self.procs: list[subprocess.Popen[Any]] = []

    def start(self, *extra: str) -> int:
        port = free_port()
        while port + 10000 > 65535:
            port = free_port()
        directory = self.root / str(port)
        directory.mkdir()
        argv = [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(directory),
            "--save",
            "",
            "--appendonly",
            "no",
            *extra,
        ]
        self.procs.append(spawn(argv, log=directory / "out.log", cwd=directory))
        client = redis.Redis(port=port)
        if not wait_until(lambda: _pings(client), 20):
            raise RuntimeError(f"redis-server on {port} did not start")
        return port

    def cpu(self) -> float:
        return sum(cpu_seconds(p.pid) for p in self.procs)

    def close(self) -> None:
        for proc in self.procs:
            stop(proc, 5)
        shutil.rmtree(self.root, ignore_errors=True)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def start_cluster(servers: Servers, masters: int = 3) -> str:
    ports = [
        servers.start("--cluster-enabled", "yes", "--cluster-node-timeout", "5000")
        for _ in range(masters)
    ]
    create = subprocess.run(
        ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports), "--cluster-yes"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if create.returncode != 0:
        raise RuntimeError(create.stdout[-500:] + create.stderr[-500:])

    def ok() -> bool:
        for port in ports:
            info = redis.Redis(port=port).execute_command("CLUSTER", "INFO")  # type: ignore[no-untyped-call]
            if b"cluster_state:ok" not in info:
                return False
        return True

    if not wait_until(ok, 30):
        raise RuntimeError("the cluster did not come up")
    return "redis://" + ",".join(f"127.0.0.1:{p}" for p in ports) + "/0"


def _env(url: str, mode: str, namespace: str, fake_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SMSRELAY_", "TWILIO_"))}
    env.update(
        {
            "PYTHONPATH": str(ROOT),
            "SMSRELAY_REDIS_URL": url,
            "SMSRELAY_REDIS_MODE": mode,
            "SMSRELAY_NAMESPACE": namespace,
            "SMSRELAY_SHARDS": str(SHARDS),
            "SMSRELAY_TWILIO_BASE_URL": fake_url,
            "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
            "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
            "SMSRELAY_TWILIO_FROM": FROM_NUMBER,
            "SMSRELAY_WORKER_CONCURRENCY": str(CONCURRENCY),
            "SMSRELAY_METRICS_PORT": "0",
            "SMSRELAY_LOG_LEVEL": "warning",
        }
    )
    return env


def run_one(
    topology: str, url: str, mode: str, workers: int, messages: int, fake: FakeTwilioProcess,
    servers: Servers,
) -> ScaleResult:  # fmt: skip
    from smsrelay.producers.publish import Producer
    from smsrelay.settings import Settings

    result = ScaleResult(topology, workers, messages)
    namespace = f"scale-{run_tag()}"
    fake.reset(0.0)
    settings = Settings.load(
        redis_url=url, redis_mode=mode, namespace=namespace, shards=SHARDS, log_level="warning"
    )
    with Producer(settings) as producer:
        for i in range(messages):
            if producer.publish(phone(i), body(namespace, i)).status != "queued":
                result.error = "a publish was not queued"
                return result
    env = _env(url, mode, namespace, fake.url)
    procs = [
        spawn([PYTHON, "-m", "smsrelay.cli", "worker", "--no-mirror"], env, cwd=ROOT)
        for _ in range(workers)
    ]
    try:
        if not wait_until(lambda: fake.accepted() > 0, 60):
            result.error = "nothing sent within 60 s"
            return result
        cpu0 = sum(cpu_seconds(p.pid) for p in procs), servers.cpu(), cpu_seconds(fake.pid)
        if not wait_until(lambda: fake.accepted() >= messages, 600, 0.02):
            result.error = f"timed out with {fake.accepted()} sent"
            return result
        cpu1 = sum(cpu_seconds(p.pid) for p in procs), servers.cpu(), cpu_seconds(fake.pid)
        records = fake.requests()
        arrivals = sorted(float(r["at"]) for r in records)
        result.drain_s = arrivals[-1] - arrivals[0]
        result.rate = (messages - 1) / result.drain_s if result.drain_s > 0 else 0.0
        bodies = [r.get("body") for r in records if r.get("status") == 201]
        result.duplicates = len(bodies) - len(set(bodies))
        result.worker_cpu_s, result.redis_cpu_s, result.fake_cpu_s = (
            round(b - a, 2) for a, b in zip(cpu0, cpu1, strict=True)
        )
        return result
    finally:
        for proc in procs:
            stop(proc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=6000)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--json", dest="json_path", type=Path)
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.workers.split(",")]
    install_cleanup()
    results: list[ScaleResult] = []
    single, cluster = Servers(), Servers()
    try:
        one_url = f"redis://127.0.0.1:{single.start()}/0"
        cluster_url = start_cluster(cluster)
        with FakeTwilioProcess() as fake:
            for workers in counts:  # interleaved: background noise hits both alike
                for topology, url, mode, servers in (
                    ("one Redis", one_url, "standalone", single),
                    ("cluster (3 masters)", cluster_url, "cluster", cluster),
                ):
                    r = run_one(topology, url, mode, workers, args.messages, fake, servers)
                    results.append(r)
                    print(
                        f"{topology:20} {workers} worker(s): {r.rate:7,.0f} msg/s  "
                        f"CPU s: workers {r.worker_cpu_s:5.2f}  redis {r.redis_cpu_s:5.2f}  "
                        f"fake {r.fake_cpu_s:5.2f}  dup {r.duplicates} {r.error}",
                        flush=True,
                    )
    finally:
        single.close()
        cluster.close()
    if args.json_path:
        args.json_path.write_text(json.dumps([asdict(r) for r in results], indent=2))
    return 0 if all(not r.error for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
