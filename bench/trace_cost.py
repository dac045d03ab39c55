"""What message traces cost, and whether one mirror keeps up with one worker (issue 15).

    python -m bench.trace_cost                      # a smoke run (small, to see it works)
    python -m bench.trace_cost --messages 20000 --rounds 5 --json trace_cost.json

(a) One worker process drains a backlog through the fake Twilio (0 ms, concurrency 64 by
    default), with traces on (SMSRELAY_TRACE_TTL_SECONDS at its default) and off (0), side by
    side: every round runs both, the order alternating, each on a fresh namespace. The rate is
    timed over the drain as bench/e2e.py times it; the worker's CPU per message beside it.
(b) Redis bytes per message of a trace (MEMORY USAGE ... SAMPLES 0 of sampled trace keys)
    after a traces-on drain, and again once two receipts per message (`sent`, `delivered`)
    were applied; the outcome entry each send leaves for the mirror, and the sent marker,
    for scale.
(c) The mirror's ceiling, one process on its own: outcomes per second into sent_sms (the
    backlog the last traces-on drain left), then receipts per second (2 per message, queued
    as the admin service queues them); and a worker with its mirror inside (as `smsrelay
    worker` runs): its rate, and how long after the last send sent_sms held every row. Needs
    Postgres: a database of the run's own is created and dropped (--database-url names the
    server; without one reachable, (c) is skipped).

Timings on a shared machine are noisy: compare the two modes within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

from bench import systems
from bench.common import (
    FakeTwilioProcess,
    cpu_seconds,
    delete_matching,
    install_cleanup,
    median,
    redis_client,
    run_tag,
    spawn,
    stop,
    wait_until,
)
from smsrelay import clock
from smsrelay.settings import Settings
from smsrelay.store.db import Database
from smsrelay.store.mirror import Mirror
from smsrelay.streams.keys import FleetKeys, all_shards

MODES: dict[str, dict[str, str]] = {"on": {}, "off": {"SMSRELAY_TRACE_TTL_SECONDS": "0"}}


@dataclass
class Drain:
    mode: str
    messages: int
    namespace: str = ""
    ok: bool = False
    rate: float = 0.0
    drain_s: float = 0.0
    cpu_us_per_msg: float = 0.0
    error: str = ""


@dataclass
class Report:
    messages: int
    concurrency: int
    rounds: int
    drains: list[Drain] = field(default_factory=list)
    bytes_per_message: dict[str, float] = field(default_factory=dict)
    traces_sampled: int = 0
    mirror: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    database: str = ""  # the run's own, dropped at the end
    namespaces: list[str] = field(default_factory=list)  # every one it made, deleted


def drain(
    fake: FakeTwilioProcess, mode: str, messages: int, concurrency: int
) -> tuple[Drain, systems.System]:
    """One backlog of `messages` drained by one worker; its keys are left for the caller."""
    system = systems.make("smsrelay", run_tag(), overrides=MODES[mode])
    result = Drain(mode, messages, system.prefix)
    fake.reset(0)
    system.enqueue(0, messages)
    worker = system.start_worker(fake.url, concurrency)
    try:
        if not wait_until(lambda: fake.accepted() > 0 or worker.poll() is not None, 60):
            result.error = "no message sent within 60 s"
            return result, system
        cpu0, n0 = cpu_seconds(worker.pid), fake.accepted()
        deadline = time.monotonic() + max(300.0, messages / 50)
        while fake.accepted() < messages:
            if worker.poll() is not None or time.monotonic() > deadline:
                result.error = f"stopped at {fake.accepted()} of {messages} sent"
                return result, system
            time.sleep(0.05)
        cpu1, n1 = cpu_seconds(worker.pid), fake.accepted()
        arrivals = sorted(float(r["at"]) for r in fake.requests())
        result.drain_s = arrivals[-1] - arrivals[0]
        result.rate = (messages - 1) / result.drain_s if result.drain_s > 0 else 0.0
        result.cpu_us_per_msg = (cpu1 - cpu0) / max(1, n1 - n0) * 1e6
        result.ok = True
        return result, system
    finally:
        stop(worker)


def forget(system: systems.System) -> None:
    system.cleanup()
    delete_matching(system.db, "{" + system.prefix + "}:*")  # (the namespace's fleet keys)


def bytes_of(system: systems.System, pattern: str, sample: int) -> tuple[float, int, int]:
    """(mean MEMORY USAGE of up to `sample` keys matching, keys sampled, keys found)."""
    client = redis_client(system.db)
    try:
        keys = list(client.scan_iter(match=pattern, count=1000))
        chosen = random.sample(keys, min(sample, len(keys)))
        sizes = [int(client.memory_usage(k, samples=0) or 0) for k in chosen]
    finally:
        client.close()
    return (sum(sizes) / len(sizes) if sizes else 0.0), len(chosen), len(keys)


def stream_bytes(system: systems.System, settings: Settings) -> int:
    client = redis_client(system.db)
    try:
        return sum(
            int(client.memory_usage(k.outcomes, samples=0) or 0)
            for k in all_shards(settings.namespace, settings.shards)
        )
    finally:
        client.close()


# -- Postgres: a database of the run's own -----------------------------------------------------
def own_database(server_url: str, name: str) -> str | None:
    try:
        with psycopg.connect(server_url, autocommit=True, connect_timeout=3) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg.Error as exc:
        print(f"(no mirror figures: Postgres at {server_url}: {exc})".splitlines()[0])
        return None
    parts = urlsplit(server_url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, ""))


def drop_database(server_url: str, name: str) -> None:
    with psycopg.connect(server_url, autocommit=True, connect_timeout=3) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def mirror_ceiling(system: systems.System, database_url: str, report: Report) -> None:
    """Time one Mirror's drain of the outcomes a drain left, then of 2 receipts a message."""
    settings = system.smsrelay_settings().model_copy(update={"database_url": database_url})
    n = report.messages
    asyncio.run(Database(database_url).ping())  # (the migrations run on a first connection)
    started = time.perf_counter()
    asyncio.run(Mirror(settings, name="bench-mirror").drain())
    report.mirror["outcomes_per_s"] = n / (time.perf_counter() - started)
    # (the SIDs of this drain's messages: the fake has forgotten them if a drain came after)
    with psycopg.connect(database_url) as conn:
        sids = [
            str(row[0])
            for row in conn.execute(
                "SELECT message_sid FROM sent_sms WHERE namespace = %s", [settings.namespace]
            )
        ]
    receipts = FleetKeys(settings.namespace).receipts
    client = redis_client(system.db)
    try:
        pipe = client.pipeline(transaction=False)
        for sid in sids:
            for status in ("sent", "delivered"):
                fields = {
                    "MessageSid": sid,
                    "MessageStatus": status,
                    "ErrorCode": "",
                    "received_at": clock.now_iso(),
                }
                pipe.xadd(receipts, fields)  # type: ignore[arg-type]
        pipe.execute()
    finally:
        client.close()
    started = time.perf_counter()
    asyncio.run(Mirror(settings, name="bench-mirror").drain())
    report.mirror["receipts_per_s"] = 2 * n / (time.perf_counter() - started)
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM sent_sms WHERE namespace = %s AND delivery_status = 'delivered'",
            [settings.namespace],
        ).fetchone()
    if row is None or row[0] != n:
        report.notes.append(f"mirror: {row and row[0]} of {n} rows delivered (expected all)")


def run(args: argparse.Namespace) -> Report:
    report = Report(args.messages, args.concurrency, args.rounds)
    tag = run_tag()
    database = report.database = f"smsrelay_bench_{tag}"
    database_url = own_database(args.database_url, database) if not args.no_mirror else None
    with FakeTwilioProcess(0) as fake:
        last_on: systems.System | None = None
        try:
            for r in range(args.rounds):
                for mode in ("on", "off") if r % 2 == 0 else ("off", "on"):
                    result, system = drain(fake, mode, args.messages, args.concurrency)
                    report.drains.append(result)
                    report.namespaces.append(system.prefix)
                    print(
                        f"  round {r + 1} traces {mode:<3}  "
                        + (f"{result.rate:8,.0f} msg/s" if result.ok else result.error),
                        flush=True,
                    )
                    if mode == "on" and result.ok:
                        if last_on is not None:
                            forget(last_on)
                        last_on = system
                    else:
                        forget(system)
            if last_on is not None:
                measure_bytes(last_on, report, args.sample)
                if database_url is not None:
                    mirror_ceiling(last_on, database_url, report)
                    measure_bytes(last_on, report, args.sample, "trace_with_receipts")
        finally:
            if last_on is not None:
                forget(last_on)
        if database_url is not None:
            mirror_in_worker_lag(fake, database_url, args.concurrency, report)
    if database_url is not None:
        drop_database(args.database_url, database)
    return report


def measure_bytes(system: systems.System, report: Report, sample: int, name: str = "trace") -> None:
    settings = system.smsrelay_settings()
    shards = "{" + system.prefix + ":*}"
    mean, sampled, found = bytes_of(system, f"{shards}:trace:*", sample)
    report.bytes_per_message[name] = mean
    report.traces_sampled = sampled
    if found != report.messages:
        report.notes.append(f"{name}: {found} trace keys for {report.messages} messages")
    if name == "trace":
        report.bytes_per_message["outcome_entry"] = stream_bytes(system, settings) / report.messages
        report.bytes_per_message["sent_marker"] = bytes_of(system, f"{shards}:sent:*", sample)[0]


def mirror_in_worker_lag(
    fake: FakeTwilioProcess, database_url: str, concurrency: int, report: Report
) -> None:
    """A worker with its mirror inside (as `smsrelay worker` runs): its rate, and how long
    after the last send sent_sms held every row."""
    n = report.messages
    extra = {"SMSRELAY_DATABASE_URL": database_url}
    system = systems.make("smsrelay", run_tag(), overrides={**MODES["on"], **extra})
    report.namespaces.append(system.prefix)
    fake.reset(0)
    system.enqueue(0, n)
    cmd = [a for a in system.worker_cmd(concurrency) if a != "--no-mirror"]
    worker = spawn(cmd, system.worker_env(fake.url, concurrency))
    try:

        def rows() -> int:
            with psycopg.connect(database_url) as conn:
                found = conn.execute(
                    "SELECT count(*) FROM sent_sms WHERE namespace = %s", [system.prefix]
                ).fetchone()
            return int(found[0]) if found else 0

        if not wait_until(lambda: fake.accepted() >= n or worker.poll() is not None, 600):
            report.notes.append("mirror inside the worker: the drain did not finish")
            return
        sent_done = time.monotonic()
        arrivals = sorted(float(r["at"]) for r in fake.requests())
        if len(arrivals) > 1 and arrivals[-1] > arrivals[0]:
            report.mirror["worker_with_mirror_rate"] = (n - 1) / (arrivals[-1] - arrivals[0])
        if wait_until(lambda: rows() >= n, 120, interval_s=0.1):
            report.mirror["rows_complete_after_s"] = time.monotonic() - sent_done
        else:
            report.notes.append(f"mirror inside the worker: {rows()} of {n} rows after 120 s")
    finally:
        stop(worker)
        forget(system)


def print_table(report: Report) -> None:
    def of(mode: str) -> list[Drain]:
        return [d for d in report.drains if d.mode == mode and d.ok]

    print()
    print(
        f"trace cost: {report.messages:,} messages a drain, provider 0 ms, concurrency "
        f"{report.concurrency}, {report.rounds} round(s), on/off alternating"
    )
    print(f"  {'':<22} {'msg/s (median)':>15} {'worker CPU us/msg':>18}   runs (msg/s)")
    medians: dict[str, tuple[float, float]] = {}
    for mode, label in (("on", "traces on (default)"), ("off", "traces off (TTL 0)")):
        runs = of(mode)
        if not runs:
            print(f"  {label:<22} {'no run':>15}")
            continue
        rate, cpu = median([d.rate for d in runs]), median([d.cpu_us_per_msg for d in runs])
        medians[mode] = (rate, cpu)
        shown = " ".join(f"{d.rate:,.0f}" for d in runs)
        print(f"  {label:<22} {rate:>15,.0f} {cpu:>18,.0f}   {shown}")
    if len(medians) == 2:
        (on_rate, on_cpu), (off_rate, off_cpu) = medians["on"], medians["off"]

        def change(on: float, off: float, width: int) -> str:
            # (a drain too short for the CPU clock's ticks measures 0)
            return f"{(on / off - 1) * 100:>+{width}.1f}%" if off > 0 else f"{'-':>{width + 1}}"

        print(
            f"  {'on against off':<22} {change(on_rate, off_rate, 14)} "
            f"{change(on_cpu, off_cpu, 17)}"
        )
    b = report.bytes_per_message
    if b:
        print(
            f"  Redis per message: trace {b.get('trace', 0):,.0f} B after the send "
            f"({report.traces_sampled} keys sampled)"
            + (
                f", {b['trace_with_receipts']:,.0f} B with 2 receipts"
                if "trace_with_receipts" in b
                else ""
            )
            + f"; outcome entry {b.get('outcome_entry', 0):,.0f} B until mirrored; "
            f"sent marker {b.get('sent_marker', 0):,.0f} B"
        )
    m = report.mirror
    if m:
        worker = medians.get("on", (0.0, 0.0))[0]
        print(
            f"  mirror, one process alone: {m.get('outcomes_per_s', 0):,.0f} outcomes/s, "
            f"{m.get('receipts_per_s', 0):,.0f} receipts/s into sent_sms "
            f"(the worker sends {worker:,.0f} msg/s)"
        )
        if "worker_with_mirror_rate" in m:
            lag = m.get("rows_complete_after_s")
            print(
                f"  a worker with its mirror: {m['worker_with_mirror_rate']:,.0f} msg/s, "
                + (
                    f"sent_sms complete {lag:.1f} s after the last send"
                    if lag is not None
                    else "sent_sms incomplete"
                )
            )
    for note in report.notes:
        print(f"  note: {note}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.trace_cost", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--messages", type=int, default=300, help="per drain (default: a smoke run)"
    )
    parser.add_argument("--rounds", type=int, default=2, help="each runs traces on and off")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--sample", type=int, default=200, help="trace keys measured")
    parser.add_argument(
        "--database-url",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="the Postgres server for (c); a database of the run's own is made and dropped",
    )
    parser.add_argument("--no-mirror", action="store_true", help="skip (c)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    if args.messages < 2 or args.rounds < 1 or args.concurrency < 1:
        parser.error("--messages >= 2, --rounds >= 1 and --concurrency >= 1")
    install_cleanup()
    report = run(args)
    print_table(report)
    if args.json:
        with open(args.json, "w") as out:
            json.dump(asdict(report), out, indent=2)
    return 0 if all(d.ok for d in report.drains) else 1


if __name__ == "__main__":
    sys.exit(main())
