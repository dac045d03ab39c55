"""`smsrelay dlq ...` output for people: the result on stdout, nothing else; stderr carries
only what is wrong (issue 12: log lines kept out of the commands' human output)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import redis.asyncio as aioredis

from smsrelay.settings import Settings
from tests.admin.conftest import seed
from tests.admin.test_cli import environment
from tests.store.dlq import unique_phone

pytestmark = pytest.mark.slow


def _no_log_lines(stderr: str) -> None:
    for line in stderr.splitlines():
        assert not line.lstrip().startswith("{"), f"a JSON log line on stderr: {line}"
        assert "event" not in line and "level" not in line, f"a log line on stderr: {line}"


def _unset(settings: Settings, *args: str) -> tuple[int, str, str]:
    """Run a command with SMSRELAY_LOG_LEVEL unset (info), as an operator's shell has it."""
    env = environment(settings)
    env.pop("SMSRELAY_LOG_LEVEL")
    done = subprocess.run(
        [sys.executable, "-m", "smsrelay.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.returncode, done.stdout, done.stderr


async def test_dlq_list_and_replay_print_results_and_no_log_lines(
    admin_settings: Settings, rclient: aioredis.Redis
) -> None:
    phone = unique_phone()
    first, _, _ = await seed(admin_settings, rclient, phone=phone)
    second, _, _ = await seed(admin_settings, rclient, phone=phone)
    code, out, err = _unset(admin_settings, "dlq", "list", "--phone", phone)
    assert (code, err) == (0, "")
    assert out.splitlines()[0].startswith("ID ") and out.splitlines()[-1] == "(1-2 of 2)"

    code, out, err = _unset(admin_settings, "dlq", "replay", "--ids", first, second)
    assert code == 0, err
    assert out == "queued 2 dead letter(s) for replay\n"
    _no_log_lines(err)
    assert re.fullmatch(r"(replaying \[[#.]+\] \d/2\n)+", err), err

    code, out, err = _unset(admin_settings, "dlq", "list", "--phone", phone, "--json")
    assert (code, err) == (0, "")
    assert {r["status"] for r in json.loads(out)["data"]} == {"replayed"}


async def test_a_failing_dlq_command_says_so_in_one_line(admin_settings: Settings) -> None:
    code, out, err = _unset(admin_settings, "dlq", "delete", "0b7e6f5e-8c1d-4a57-9f3e-1a2b3c4d5e6f")
    assert code == 1 and out == ""
    assert err.startswith("smsrelay: no failed SMS with id") and len(err.splitlines()) == 1
