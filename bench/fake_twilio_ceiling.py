"""The fake Twilio's throughput ceiling: raw form POSTs from N concurrent aiohttp workers.

    .venv/bin/python bench/fake_twilio_ceiling.py [--concurrency 64] [--duration 3]

By default the fake runs in its own process (as the benchmarks run it), so client and server
do not share one interpreter; `--url` targets a fake already running, `--in-process` runs it
on the client's loop (the ceiling a test that embeds it would see).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import re
import subprocess
import sys
import time
from collections import Counter

import aiohttp

from smsrelay.testing.fake_twilio import FakeTwilio

ACCOUNT_SID = "AC" + "0" * 32


_SEQ = itertools.count()


async def _worker(
    session: aiohttp.ClientSession, url: str, worker: int, deadline: float, counts: Counter[int]
) -> None:
    headers = {"Authorization": aiohttp.encode_basic_auth(ACCOUNT_SID, "token")}
    while time.monotonic() < deadline:
        # A destination per worker and a distinct body per request, so no send is a duplicate.
        body = f"bench {next(_SEQ)}"
        form = {"To": f"+1876{worker:07d}", "From": "+15005550006", "Body": body}
        async with session.post(url, data=form, headers=headers) as resp:
            await resp.read()
            counts[resp.status] += 1


async def drive(base_url: str, concurrency: int, duration_s: float) -> tuple[float, Counter[int]]:
    url = f"{base_url}/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"
    counts: Counter[int] = Counter()
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        # Warm up (connections opened, code paths hot) so the window measures steady state.
        warm_until = time.monotonic() + 0.3
        await asyncio.gather(
            *(_worker(session, url, i, warm_until, counts) for i in range(concurrency))
        )
        counts.clear()
        started = time.monotonic()
        deadline = started + duration_s
        await asyncio.gather(
            *(_worker(session, url, i, deadline, counts) for i in range(concurrency))
        )
        elapsed = time.monotonic() - started
    return sum(counts.values()) / elapsed, counts


async def _in_process(concurrency: int, duration_s: float) -> tuple[float, Counter[int]]:
    async with FakeTwilio() as fake:
        return await drive(fake.url, concurrency, duration_s)


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (Linux /proc), None elsewhere."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _subprocess(concurrency: int, duration_s: float) -> tuple[float, Counter[int]]:
    cmd = [sys.executable, "-m", "smsrelay.testing.fake_twilio", "--port", "0"]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            match = re.search(r"http://\S+", proc.stdout.readline())
            if match is None:
                raise SystemExit("the fake Twilio did not print its URL")
            cpu_before = _cpu_seconds(proc.pid)
            rate, counts = asyncio.run(drive(match.group(0), concurrency, duration_s))
            cpu_after = _cpu_seconds(proc.pid)
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    if cpu_before is not None and cpu_after is not None and cpu_after > cpu_before:
        # Includes the warm-up: a slight overestimate of the server's cost per request.
        per_request_s = (cpu_after - cpu_before) / max(sum(counts.values()), 1)
        print(
            f"server CPU: {per_request_s * 1e6:.0f} us/request "
            f"(~{1 / per_request_s:,.0f} requests/s per fully used core)"
        )
    return rate, counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--url", help="a fake Twilio already running")
    mode.add_argument("--in-process", action="store_true")
    args = parser.parse_args()
    if args.url:
        rate, counts = asyncio.run(drive(args.url, args.concurrency, args.duration))
    elif args.in_process:
        rate, counts = asyncio.run(_in_process(args.concurrency, args.duration))
    else:
        rate, counts = _subprocess(args.concurrency, args.duration)
    where = args.url or ("in-process" if args.in_process else "separate process")
    print(
        f"fake Twilio ceiling ({where}, {args.concurrency} concurrent, {args.duration:g} s): "
        f"{rate:,.0f} requests/s; statuses {dict(counts)}"
    )


if __name__ == "__main__":
    main()
