"""`smsrelay demo` shows delivery receipts: one SMS delivered and one undelivered (30003),
told by the fake Twilio's signed status callbacks to the demo's own admin service, each with
its trace; then a provider outage that opens and closes the breaker (issue 13); the steps
before them say what they said before."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def run_demo(redis_url: str, database_url: str, tmp_path: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "smsrelay.cli", "demo"],
        env={
            "PATH": "/usr/bin:/bin",
            "SMSRELAY_REDIS_URL": redis_url,
            "SMSRELAY_DATABASE_URL": database_url,
            "SMSRELAY_SPOOL_DIR": str(tmp_path / "spool"),
        },
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    return done.stdout


def test_the_demo_shows_a_delivered_and_an_undelivered_sms_with_their_traces(
    redis_url: str, database_url: str, tmp_path: Path
) -> None:
    out = run_demo(redis_url, database_url, tmp_path)
    # Steps 1 to 3 as before
    for heading in ("1. A backend service publishes", "2. The worker takes them", "3. The fake"):
        assert f"\n{heading}" in out
    assert "failed_sms in Postgres holds 2 of this demo's dead letters" in out
    step4 = out[out.index("\n4. Delivery receipts") : out.index("\n5. A bad day")]
    assert "POST /twilio/status-callback" in step4
    assert re.search(
        r"posted 4 signed callbacks \([a-z, ]+\); the admin answered 4 with 2xx", step4
    )
    traces = re.findall(
        r"\n   ([0-9a-f]{8})  \+1415\*\*\*\d{4}: (\w+), SID (SM[0-9a-f]{32}) "
        r"\(smsrelay trace ([0-9a-f-]{36})\)\n((?:     .*\n)+)",
        step4 + "\n",
    )
    assert [(t[1]) for t in traces] == ["delivered", "undelivered"], step4
    for short, _, sid, full, lines in traces:
        assert full.startswith(short)
        events = [
            line.split()[1] for line in lines.splitlines() if not line.strip().startswith("->")
        ]
        assert events[:3] == ["published", "attempt", "sent"], lines
        assert f"sent           {sid}" in lines
    assert "undelivered    Twilio error 30003: Unreachable destination handset" in traces[1][4]
    assert "-> failed_sms: reason undelivered" in traces[1][4]
    assert traces[0][4].rstrip().endswith(f"delivered      {traces[0][2]}")
    # Step 5: a provider outage opens the breaker, probes fail, it closes, nothing is lost
    step5 = out[out.index("\n5. A bad day") : out.index("\nWhere to look next")]
    events = re.findall(r"\n +\d+\.\d s  (breaker OPEN|the probe failed too|breaker closed)", step5)
    assert events[0] == "breaker OPEN" and events[-1] == "breaker closed", step5
    assert events.count("breaker OPEN") == 1, step5
    assert "6 of 6 sent, 0 dead-lettered" in step5
