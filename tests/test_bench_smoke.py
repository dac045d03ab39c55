"""The benchmark keeps working: a small run (`python -m bench.run --smoke`) end to end.

Behaviour only, never speed: every system that ran delivered every message exactly once, the
crash test recovered the killed worker's messages, and the report names every section.
The peers (Dramatiq, Celery, arq) take part when the `bench` dependency group is installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_bench_smoke_run_delivers_everything_and_writes_the_report(
    redis_url: str, tmp_path: Path
) -> None:
    # Given a Redis (the bench uses its own namespaces and prefixes) and an output folder
    parts = urlsplit(redis_url)
    env = {
        **os.environ,
        "BENCH_REDIS_HOST": parts.hostname or "127.0.0.1",
        "BENCH_REDIS_PORT": str(parts.port or 6379),
    }
    report, results = tmp_path / "BENCHMARKS.md", tmp_path / "results.json"

    # When the smoke preset runs
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.run",
            "--smoke",
            "--output",
            str(report),
            "--json",
            str(results),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=220,
        check=False,
    )

    # Then it finishes cleanly and writes both files
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(results.read_text())
    text = report.read_text()

    # and every end-to-end run delivered each message exactly once, smsrelay and the bare loop
    # among them
    ran = {row["system"] for row in data["e2e"]}
    assert {"smsrelay", "bare"} <= ran
    for row in data["e2e"]:
        assert row["ok"], row
        assert row["accepted"] == row["messages"], row
        assert row["duplicates"] == 0, row
        assert row["errors"] == 0, row
        assert row["rate"] > 0 and row["drain_s"] > 0, row

    # and every publish API measured something
    for cost in data["publish"]:
        assert not cost["error"], cost
        assert 0 < cost["median_us"] <= cost["p99_us"], cost

    # and the killed worker's messages were sent by the other one, each once
    crash = [c for c in data["crash"] if c["system"] == "smsrelay"]
    assert crash, data["crash"]
    for c in crash:
        assert not c["error"], c
        assert c["recovered"] == c["in_flight"], c
        assert c["recovery_s"] is not None and c["recovery_s"] >= 0, c
        assert c["duplicates"] == 0, c

    # and the footprint numbers are plausible (a stream entry is tens to hundreds of bytes)
    queued = {q["system"]: q for q in data["queued_bytes"]}
    assert 20 < queued["smsrelay"]["bytes_per_msg"] < 2000, queued["smsrelay"]
    for rss in data["rss"]:
        assert not rss["error"], rss
        assert rss["before_mib"] > 0 and rss["after_mib"] > 0, rss

    # and the high messages published behind the bulk backlog were each sent exactly once,
    # after at least the provider's latency, while bulk kept going
    lanes = data["lanes"]
    assert {r["with_high"] for r in lanes} == {True, False}, lanes
    for run in lanes:
        assert run["ok"], run
        assert run["errors"] == 0 and run["bulk_duplicates"] == 0, run
        assert run["bulk_delivered"] == run["bulk"], run
        assert run["bulk_window_rate"] > 0 and run["bulk_after_window"] > 0, run
        if run["with_high"]:
            assert run["high"] > 0, run
            assert run["high_delivered"] == run["high"], run
            assert run["high_duplicates"] == 0, run
            assert len(run["high_latencies_ms"]) == run["high"], run
            assert all(run["latency_ms"] <= x < 60_000 for x in run["high_latencies_ms"]), run

    # and the memory phase queued and then drained every message: a stream entry is tens to
    # hundreds of bytes in Redis, and the worker's RSS was sampled from start to end
    memory = data["memory"]
    assert not memory["error"], memory
    assert memory["entry_bytes"] > memory["body_bytes"] > 0, memory
    assert 20 < memory["memory_usage_per_msg"] < 2000, memory
    assert memory["samples"] and memory["samples"][-1][1] >= memory["messages"], memory
    assert 0 < memory["rss_start_mib"] <= memory["rss_peak_mib"] <= memory["rss_hwm_mib"], memory

    # and under an open-loop load every published message was sent exactly once, no sooner
    # than the provider's latency after its publish, with ordered percentiles
    runs = data["latency"]
    assert {"smsrelay", "bare"} <= {r["system"] for r in runs}, runs
    for r in runs:
        assert r["ok"], {k: v for k, v in r.items() if k != "latencies_ms"}
        assert r["max_rate"] > 0 and r["published"] > 0, r["error"]
        assert r["delivered"] == r["published"] and r["missing"] == 0, r["error"]
        assert r["duplicates"] == 0 and r["errors"] == 0, r["error"]
        assert len(r["latencies_ms"]) == r["published"]
        assert min(r["latencies_ms"]) >= r["latency_ms"] - 1.0
        assert r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"] <= r["max_ms"] < 60_000

    # and the report has the machine, the command and every section that ran
    for heading in (
        "## Machine and command",
        "## 1. Publish cost",
        "## 2. End-to-end",
        "## 3. Crash recovery",
        "## 4. Footprint",
        "## Goals of issue 16",
        "## 6. A login code behind a campaign",
        "## 7. Memory",
        "## 8. End-to-end latency",
    ):
        assert heading in text
    assert "bench.run --smoke" in text


def test_a_full_report_keeps_the_sections_other_commands_wrote(tmp_path: Path) -> None:
    # bench.cluster_scale and bench.trace_cost write their own sections of BENCHMARKS.md;
    # a later `bench.run` rewrites the rest and must not drop them
    from bench.run import KEPT, write_report

    report = tmp_path / "BENCHMARKS.md"
    report.write_text(f"# old\n\n## 1. Publish\nold\n\n## 9. Scale-out\nmine; {KEPT}.\n")
    write_report(report, "# new\n\n## 1. Publish\nnew\n")
    text = report.read_text()
    assert "old" not in text
    assert text.index("## 1. Publish\nnew") < text.index(f"## 9. Scale-out\nmine; {KEPT}.")
