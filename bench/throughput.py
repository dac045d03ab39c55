"""Quick end-to-end throughput of one smsrelay worker process through the fake Twilio.

    .venv/bin/python bench/throughput.py --messages 5000 --latency-ms 0 --concurrency 64

The fake Twilio and the worker each run in their own process; the messages are published
before the worker starts, and the rate is timed from the first accepted send to the last
(the drain), not start-up.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from typing import Any

import redis

from smsrelay.producers.publish import Producer
from smsrelay.settings import Settings

ACCOUNT_SID = "AC" + "0" * 32


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as resp:  # loopback only
        return json.loads(resp.read())


def wait_port(port: int, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def publish(settings: Settings, count: int) -> None:
    """Publish through the real producer, pipelined in bulk for speed of set-up."""
    with Producer(settings) as producer:
        for i in range(count):
            # 2,000 distinct phones so the default rate limit never bites
            result = producer.publish(f"+1415555{i % 2000:04d}", f"bench message {i}")
            assert result.status == "queued", result


def run(messages: int, latency_ms: float, concurrency: int, redis_url: str) -> dict[str, Any]:
    namespace = f"bench-{secrets.token_hex(3)}"
    port = free_port()
    env = {
        **os.environ,
        "SMSRELAY_REDIS_URL": redis_url,
        "SMSRELAY_NAMESPACE": namespace,
        "SMSRELAY_TWILIO_BASE_URL": f"http://127.0.0.1:{port}",
        "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
        "TWILIO_AUTH_TOKEN": "bench",
        "SMSRELAY_TWILIO_FROM": "+15005550006",
        "SMSRELAY_METRICS_PORT": "0",
        "SMSRELAY_WORKER_CONCURRENCY": str(concurrency),
        "SMSRELAY_LOG_LEVEL": "warning",
        "SMSRELAY_RATE_LIMIT_MAX": "100000",
    }
    fake = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "smsrelay.cli",
            "fake-twilio",
            "--port",
            str(port),
            "--latency-ms",
            str(latency_ms),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
    )
    worker: subprocess.Popen[bytes] | None = None
    try:
        wait_port(port)
        settings = Settings.load(redis_url=redis_url, namespace=namespace, rate_limit_max=100000)
        publish(settings, messages)
        worker = subprocess.Popen(
            [sys.executable, "-m", "smsrelay.cli", "worker", "--no-mirror"], env=env
        )
        deadline = time.monotonic() + 600
        while get_json(f"http://127.0.0.1:{port}/_fake/stats")["accepted"] < messages:
            if time.monotonic() > deadline:
                raise SystemExit("timed out")
            time.sleep(0.2)
        records = get_json(f"http://127.0.0.1:{port}/_fake/requests")
        times = sorted(r["at"] for r in records)
        # `at` is when the request arrived; add the latency to reach the last response
        drain_s = times[-1] - times[0] + latency_ms / 1000
        return {
            "messages": messages,
            "latency_ms": latency_ms,
            "concurrency": concurrency,
            "drain_seconds": round(drain_s, 3),
            "messages_per_second": round((messages - 1) / drain_s, 1),
            "requests": len(records),
        }
    finally:
        if worker is not None:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=30)
        fake.send_signal(signal.SIGTERM)
        fake.wait(timeout=10)
        client = redis.Redis.from_url(redis_url)
        keys = list(client.scan_iter(match=f"{{{namespace}:*", count=1000))
        if keys:
            client.delete(*keys)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--latency-ms", type=float, default=0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    print(json.dumps(run(args.messages, args.latency_ms, args.concurrency, args.redis_url)))


if __name__ == "__main__":
    main()
