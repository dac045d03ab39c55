"""Tests, benchmarks and the demo share one Redis and one Postgres with other people.

Nothing here may flush a Redis database or its script cache, and the demo writes only into a
database of its own and deletes its keys when it is done (issue 12, defect 4).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from smsrelay.demo import DEMO_DATABASE, delete_namespace_keys, demo_database, with_database
from tests.support.clients import redis_client
from tests.support.servers import ThrowawayPostgres

ROOT = Path(__file__).resolve().parent.parent
# A flush of a whole database, every database, or the server's script or function cache.
_FLUSHES = re.compile(
    r"\b(script_flush|flushdb|flushall|function_flush)\s*\(|"
    r"[\"'](SCRIPT\s+FLUSH|FLUSHDB|FLUSHALL|FUNCTION\s+FLUSH)\b",
    re.IGNORECASE,
)


def test_no_code_flushes_a_shared_redis() -> None:
    found = []
    for folder in ("smsrelay", "tests", "bench", "scripts"):
        for path in sorted((ROOT / folder).rglob("*")):
            if path.suffix not in {".py", ".sh", ".lua", ""} or not path.is_file():
                continue
            if path == Path(__file__).resolve():
                continue
            text = path.read_text(errors="replace")
            found += [
                f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0)}"
                for m in _FLUSHES.finditer(text)
                # a server the test started itself may be flushed, and says so on the line
                if "a private server" not in text[m.start() : text.find(chr(10), m.start())]
            ]
    assert found == [], "flushes of a shared Redis:\n" + "\n".join(found)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://localhost/postgres", "postgresql://localhost/smsrelay_demo"),
        (
            "postgresql://u:p@h:5433/postgres?sslmode=require",
            "postgresql://u:p@h:5433/smsrelay_demo?sslmode=require",
        ),
        (
            "postgresql://h/?dbname=postgres&connect_timeout=3",
            "postgresql://h/smsrelay_demo?connect_timeout=3",
        ),
    ],
)
def test_the_demo_database_url(url: str, expected: str) -> None:
    assert with_database(url, DEMO_DATABASE) == expected


def test_the_demo_uses_a_named_database_as_it_is(database_url: str) -> None:
    assert demo_database(database_url)[0] == database_url


def test_delete_namespace_keys_deletes_only_that_namespace(redis_url: str, namespace: str) -> None:
    client = redis_client(redis_url)
    neighbour = namespace + "x"
    try:
        client.set(f"{{{namespace}:0}}:a", 1)
        client.set(f"{{{namespace}}}:budget:replay", 1)
        client.set(f"{{{neighbour}:0}}:a", 1)
        client.set(f"{{{neighbour}}}:b", 1)
        assert delete_namespace_keys(client, namespace) == 2
        assert client.exists(f"{{{neighbour}:0}}:a", f"{{{neighbour}}}:b") == 2
    finally:
        client.delete(f"{{{neighbour}:0}}:a", f"{{{neighbour}}}:b")
        client.close()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_the_demo_writes_into_a_database_of_its_own_and_cleans_up_its_keys(
    throwaway_postgres: ThrowawayPostgres, redis_url: str, tmp_path: Path
) -> None:
    # Given SMSRELAY_DATABASE_URL naming the server's maintenance database (the default's)
    maintenance = throwaway_postgres.url
    assert maintenance.endswith("/postgres")
    done = subprocess.run(
        [sys.executable, "-m", "smsrelay.cli", "demo"],
        env={
            "PATH": "/usr/bin:/bin",
            "SMSRELAY_REDIS_URL": redis_url,
            "SMSRELAY_DATABASE_URL": maintenance,
            "SMSRELAY_SPOOL_DIR": str(tmp_path / "spool"),
        },
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # Then the narration names the database it writes to, one of its own
    [postgres_line] = [line for line in done.stdout.splitlines() if line.startswith("  Postgres ")]
    assert f"/{DEMO_DATABASE}: mirroring dead letters into failed_sms" in postgres_line
    assert "maintenance database 'postgres'" in postgres_line
    namespace = re.search(r"namespace '(demo-[0-9a-f]{6})'", done.stdout)
    assert namespace is not None
    # And its dead letters are there, and nothing in the maintenance database
    with psycopg.connect(with_database(maintenance, DEMO_DATABASE)) as conn:
        row = conn.execute(
            "SELECT count(*) FROM failed_sms WHERE namespace = %s", (namespace.group(1),)
        ).fetchone()
    assert row is not None and row[0] >= 2
    with psycopg.connect(maintenance) as conn:
        table = conn.execute("SELECT to_regclass('public.failed_sms')").fetchone()
    assert table == (None,)
    # And none of its keys are left in Redis
    client = redis_client(redis_url)
    try:
        left = [
            *client.scan_iter(match=f"{{{namespace.group(1)}:*"),
            *client.scan_iter(match=f"{{{namespace.group(1)}}}:*"),
        ]
    finally:
        client.close()
    assert left == []
