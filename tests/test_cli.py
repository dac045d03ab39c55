"""The command line as a user meets it: publish, status, schema, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from smsrelay.settings import Settings


def smsrelay(settings: Settings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SMSRELAY_", "TWILIO_"))}
    base.update(
        {
            "SMSRELAY_REDIS_URL": settings.redis_url,
            "SMSRELAY_NAMESPACE": settings.namespace,
            "SMSRELAY_SPOOL_DIR": str(settings.spool_dir),
            **env,
        }
    )
    return subprocess.run(
        [sys.executable, "-m", "smsrelay.cli", *args],
        env=base,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_publish_prints_the_id_and_status_counts_it(settings: Settings) -> None:
    published = smsrelay(
        settings, "publish", "--to", "+14155552671", "--body", "hello", "--idempotency-key", "cli-1"
    )
    assert published.returncode == 0, published.stderr
    message_id = published.stdout.strip()
    assert len(message_id) == 36
    again = smsrelay(
        settings,
        "publish",
        "--to",
        "+14155552671",
        "--body",
        "hello",
        "--idempotency-key",
        "cli-1",
        "--json",
    )
    assert json.loads(again.stdout) == {
        "status": "duplicate",
        "messageId": message_id,
        "error": None,
    }
    status = smsrelay(settings, "status", "--json")
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["now"]["backlog"] == 1
    assert report["shards"][0]["requestStream"] == f"{{{settings.namespace}:0}}:requests"
    assert report["shards"][0]["lifetime"] == {
        "deadLettersByReason": {},
        "adminRetriesByOutcome": {},
    }
    human = smsrelay(settings, "status")
    assert "now: backlog 1" in human.stdout


def test_bad_publish_is_one_line_and_exit_1(settings: Settings) -> None:
    result = smsrelay(settings, "publish", "--to", "12345", "--body", "hello")
    assert result.returncode == 1
    assert result.stderr.strip().startswith("smsrelay: rejected: to:")
    assert "Traceback" not in result.stderr


def test_redis_down_publish_spools_and_status_says_redis_error(settings: Settings) -> None:
    down = {"SMSRELAY_REDIS_URL": "redis://127.0.0.1:1/0"}
    published = smsrelay(settings, "publish", "--to", "+14155552671", "--body", "x", **down)
    assert published.returncode == 0
    assert "spooled" in published.stderr
    status = smsrelay(settings, "status", **down)
    assert status.returncode == 1
    assert status.stderr.startswith("smsrelay: Redis error:")
    assert "Traceback" not in status.stderr


def test_schema_prints_the_json_schema(settings: Settings) -> None:
    result = smsrelay(settings, "schema")
    assert json.loads(result.stdout)["required"] == ["v", "id", "to", "body", "created_at"]
