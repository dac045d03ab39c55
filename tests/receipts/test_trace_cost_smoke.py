"""bench/trace_cost.py keeps working: a tiny run measures both modes, the bytes of a trace
and the mirror, and leaves no key or database behind. Behaviour only, never speed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest

from tests.support.clients import redis_client

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def test_a_small_run_measures_everything_and_cleans_up(
    redis_url: str, postgres_url: str, tmp_path: Path
) -> None:
    parts = urlsplit(redis_url)
    out = tmp_path / "trace_cost.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.trace_cost",
            "--messages",
            "60",
            "--rounds",
            "1",
            "--sample",
            "20",
            "--database-url",
            postgres_url,
            "--json",
            str(out),
        ],
        cwd=ROOT,
        env={
            **os.environ,
            "BENCH_REDIS_HOST": parts.hostname or "127.0.0.1",
            "BENCH_REDIS_PORT": str(parts.port or 6379),
        },
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    report = json.loads(out.read_text())
    assert sorted(d["mode"] for d in report["drains"]) == ["off", "on"]
    assert all(d["ok"] and d["rate"] > 0 for d in report["drains"])
    sizes = report["bytes_per_message"]
    assert 0 < sizes["trace"] < sizes["trace_with_receipts"]
    assert sizes["outcome_entry"] > 0 and sizes["sent_marker"] > 0
    mirror = report["mirror"]
    assert mirror["outcomes_per_s"] > 0 and mirror["receipts_per_s"] > 0
    assert mirror["worker_with_mirror_rate"] > 0 and "rows_complete_after_s" in mirror
    assert report["notes"] == []
    for line in ("traces on (default)", "traces off (TTL 0)", "mirror, one process alone"):
        assert line in done.stdout
    # Nothing of its own left: no key of its namespaces, not its database
    assert len(report["namespaces"]) == 3
    client = redis_client(redis_url)
    try:
        for namespace in report["namespaces"]:
            for pattern in (f"{{{namespace}:*", f"{{{namespace}}}:*"):
                assert list(client.scan_iter(match=pattern, count=1000)) == [], pattern
    finally:
        client.close()
    assert report["database"].startswith("smsrelay_bench_")
    with psycopg.connect(postgres_url) as conn:
        left = conn.execute(
            "SELECT datname FROM pg_database WHERE datname = %s", [report["database"]]
        ).fetchall()
    assert left == []
