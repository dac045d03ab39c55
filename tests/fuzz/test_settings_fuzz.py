"""Settings: every contract variable, any value: accepted and usable, or one clear line.

tests/test_settings.py checks one wrong value per variable; this adds the values that slip
through a range check (inf, 1e300), formats the settings never look at (SIDs, tokens, URLs
that the clients refuse), arbitrary strings for every variable, and the same through the CLI.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path

import psycopg.conninfo
import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st

from smsrelay.errors import ConfigError
from smsrelay.settings import Settings
from tests.fuzz.strategies import fuzz_settings

pytestmark = [pytest.mark.faults, pytest.mark.slow]

# Every variable of the contract's configuration table.
CONTRACT = [
    "SMSRELAY_REDIS_URL",
    "SMSRELAY_DATABASE_URL",
    "SMSRELAY_NAMESPACE",
    "SMSRELAY_RATE_LIMIT_MAX",
    "SMSRELAY_RATE_LIMIT_WINDOW_SECONDS",
    "SMSRELAY_ON_RATE_LIMIT",
    "SMSRELAY_MAX_ATTEMPTS",
    "SMSRELAY_BACKOFF_BASE_SECONDS",
    "SMSRELAY_BACKOFF_MAX_SECONDS",
    "SMSRELAY_BACKOFF_JITTER",
    "SMSRELAY_CLAIM_IDLE_SECONDS",
    "SMSRELAY_WORKER_CONCURRENCY",
    "SMSRELAY_METRICS_PORT",
    "SMSRELAY_REPLAY_RATE",
    "SMSRELAY_ADMIN_TOKEN",
    "TWILIO_ACCOUNT_SID",
    "TWILIO_AUTH_TOKEN",
    "SMSRELAY_TWILIO_FROM",
    "SMSRELAY_TWILIO_MESSAGING_SERVICE_SID",
    "SMSRELAY_TWILIO_BASE_URL",
    "SMSRELAY_TWILIO_TIMEOUT_SECONDS",
    "SMSRELAY_SPOOL_DIR",
    "SMSRELAY_LOG_FORMAT",
    "SMSRELAY_LOG_LEVEL",
    "SMSRELAY_ADMIN_TOKENS",
    "SMSRELAY_METRICS_HOST",
]
DURATIONS = [
    "SMSRELAY_RATE_LIMIT_WINDOW_SECONDS",
    "SMSRELAY_BACKOFF_BASE_SECONDS",
    "SMSRELAY_BACKOFF_MAX_SECONDS",
    "SMSRELAY_CLAIM_IDLE_SECONDS",
    "SMSRELAY_TWILIO_TIMEOUT_SECONDS",
]
SECRET = ("TOKEN", "TOKENS", "_URL")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith(("SMSRELAY_", "TWILIO_")):
            monkeypatch.delenv(name)
    return monkeypatch


def _load(monkeypatch: pytest.MonkeyPatch, variable: str, value: str) -> Settings | str:
    """The settings, or the one-line error (asserted to be one line naming the variable)."""
    monkeypatch.setenv(variable, value)
    try:
        return Settings.load()
    except ConfigError as exc:
        message = str(exc)
        assert "\n" not in message, message
        assert message.startswith(variable + ":"), message
        if variable.endswith(SECRET):  # tokens, and URLs that may hold a password
            assert "(got " not in message, "a secret was echoed"
        return message
    finally:
        monkeypatch.delenv(variable)


# Values that pass today's checks but break the process later (or at once on first use).
WRONG: list[tuple[str, str, str]] = [
    *[(v, "inf", "infinite: int(inf * 1000) raises OverflowError") for v in DURATIONS],
    *[(v, "1e300", "beyond what Redis takes as milliseconds") for v in DURATIONS],
    ("SMSRELAY_REPLAY_RATE", "inf", "infinite rate"),
    ("SMSRELAY_ADMIN_TOKEN", " " * 12, "blank: no client can send it"),
    ("SMSRELAY_ADMIN_TOKEN", "abc\x01defghij", "a control character cannot go in a header"),
    ("SMSRELAY_ADMIN_TOKEN", "abc\x01defghij0123456", "a control character, 16+ characters"),
    ("SMSRELAY_ADMIN_TOKEN", "0123456789abcde", "15 characters: too short to resist guessing"),
    ("SMSRELAY_ADMIN_TOKENS", "ops:viewer:0123456789abcde", "15 characters"),
    (
        "SMSRELAY_ADMIN_TOKENS",
        "ops:viewer:0123456789abcdef,ops:viewer:0123456789abcdeg",
        "two credentials with one name: the audit could not tell them apart",
    ),
    ("SMSRELAY_ADMIN_TOKENS", "ops:reader:0123456789abcdef", "no such role"),
    ("SMSRELAY_METRICS_HOST", "local host", "a space in the host"),
    ("SMSRELAY_METRICS_HOST", "0.0.0.0:9464", "a port in the host"),
    ("TWILIO_ACCOUNT_SID", "my-account", "Twilio account SIDs are AC + 32 hex digits"),
    ("SMSRELAY_TWILIO_MESSAGING_SERVICE_SID", "my-service", "MG + 32 hex digits"),
    ("SMSRELAY_REDIS_URL", "redis://local host:6379/0", "a space in the host"),
    ("SMSRELAY_DATABASE_URL", "postgresql://localhost/db?bogus=1", "libpq refuses it"),
    ("SMSRELAY_TWILIO_BASE_URL", "http://api twilio.com", "a space in the host"),
]


@pytest.mark.parametrize(
    ("variable", "value", "why"), WRONG, ids=[f"{v}={w!r}" for v, w, _ in WRONG]
)
def test_a_value_that_would_break_later_fails_at_start(
    clean_env: pytest.MonkeyPatch, variable: str, value: str, why: str
) -> None:
    # Given a wrong value, When the settings load, Then one line names the variable
    outcome = _load(clean_env, variable, value)
    assert isinstance(outcome, str), f"{variable}={value!r} accepted ({why})"


def test_a_spool_dir_that_is_a_file_fails_at_start(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Given SMSRELAY_SPOOL_DIR naming a regular file (the spool would fail only when Redis
    # is down, i.e. exactly when it is needed, and those publishes would be lost)
    target = tmp_path / "not-a-directory"
    target.write_text("x")
    outcome = _load(clean_env, "SMSRELAY_SPOOL_DIR", str(target))
    assert isinstance(outcome, str), "a regular file accepted as the spool directory"


def _unusable(variable: str, settings: Settings) -> str | None:
    """Why an accepted value cannot work, or None."""
    for name, value in settings.model_dump().items():
        if isinstance(value, float) and not math.isfinite(value):
            return f"{name}={value}"
    if variable in DURATIONS:
        # every duration reaches Redis (or asyncio) in milliseconds, as a 64-bit integer
        for name in (
            "rate_limit_window_seconds",
            "claim_idle_seconds",
            "backoff_max_seconds",
            "backoff_base_seconds",
            "twilio_timeout_seconds",
        ):
            if not 0 <= getattr(settings, name) * 1000 < 2**63:
                return f"{name}={getattr(settings, name)} s does not fit in milliseconds"
    try:
        if variable == "SMSRELAY_REDIS_URL":
            redis.ConnectionPool.from_url(settings.redis_url)  # parses; connects lazily
        if variable == "SMSRELAY_DATABASE_URL":
            psycopg.conninfo.conninfo_to_dict(settings.database_url)
    except (ValueError, psycopg.Error) as exc:
        return f"the client refuses it: {exc}"
    return None


values = st.one_of(
    st.text(max_size=30),
    st.sampled_from(
        [
            "",
            " ",
            "0",
            "-0",
            "1",
            "-1",
            "1.5",
            "1e3",
            "1e309",
            "inf",
            "-inf",
            "nan",
            "NaN",
            "0x10",
            "1_000",
            "true",
            "null",
            "None",
            "  5  ",
            "\t",
            "redis://",
            "redis://:@:0",
            "rediss://h:6380/99",
            "unix:///tmp/r.sock",
            "postgresql://",
            "postgresql://u:p@h:1/db",
            "http://",
            "https://h:99999",
            "+15005550006",
            "AC" + "0" * 32,
            "MG" + "f" * 32,
            "ACME",
            "json",
            "DEBUG",
            "/tmp",
            ".",
        ]
    ),
    st.integers().map(str),
    st.floats().map(str),
)


@fuzz_settings(1500)
@given(variable=st.sampled_from(CONTRACT), value=values)
def test_any_value_is_accepted_and_usable_or_one_line_naming_the_variable(
    clean_env: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    # Given any value of any contract variable, When the settings load
    if "\x00" in value:
        return  # an environment cannot hold NUL
    outcome = _load(clean_env, variable, value)
    # Then it is one line naming the variable (checked in _load), or a usable setting
    if isinstance(outcome, Settings):
        problem = _unusable(variable, outcome)
        assert problem is None, f"{variable}={value!r} accepted: {problem}"


CLI_CASES = [
    ("worker", "SMSRELAY_RATE_LIMIT_WINDOW_SECONDS", "inf"),
    ("worker", "SMSRELAY_CLAIM_IDLE_SECONDS", "1e300"),
    ("worker", "TWILIO_ACCOUNT_SID", "my-account"),
    ("publish", "SMSRELAY_REDIS_URL", "redis://local host:6379/0"),
    ("worker", "SMSRELAY_NAMESPACE", "x" * 65),
    ("publish", "SMSRELAY_MAX_ATTEMPTS", "many"),
]


@pytest.mark.parametrize(
    ("command", "variable", "value"), CLI_CASES, ids=[f"{c}-{v}" for c, v, _ in CLI_CASES]
)
def test_the_commands_stop_at_start_with_one_line(command: str, variable: str, value: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SMSRELAY_", "TWILIO_"))}
    env.update(
        {
            "TWILIO_ACCOUNT_SID": "AC" + "0" * 32,
            "TWILIO_AUTH_TOKEN": "token",
            "SMSRELAY_TWILIO_FROM": "+15005550006",
            "SMSRELAY_METRICS_PORT": "0",
            "SMSRELAY_REDIS_URL": "redis://127.0.0.1:1/0",
            variable: value,
        }
    )
    args: list[str] = [command]
    if command == "publish":
        args += ["--to", "+14155552671", "--body", "hi"]
    # Given a wrong value, When the command starts
    started = time.monotonic()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "smsrelay.cli", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=15,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(
            f"`smsrelay {command}` with {variable}={value!r} was still running "
            "after 15 s instead of stopping at start",
            pytrace=False,
        )
    took = time.monotonic() - started
    # Then it stops at once (exit 2) with one line naming the variable, never a traceback
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith(f"smsrelay: {variable}:"), lines
    assert "Traceback" not in done.stderr
    assert took < 10
