"""Settings: defaults of the contract, and one clear line for every wrong value."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from smsrelay.errors import ConfigError
from smsrelay.settings import Settings


def test_defaults_are_the_contract(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("SMSRELAY_", "TWILIO_")):
            monkeypatch.delenv(name)
    s = Settings.load()
    assert s.redis_url == "redis://localhost:6379/0"
    assert s.database_url == "postgresql://localhost/postgres"
    assert s.namespace == "smsrelay"
    assert (s.rate_limit_max, s.rate_limit_window_seconds, s.on_rate_limit) == (
        5, 3600, "dead_letter")
    assert (s.max_attempts, s.backoff_base_seconds, s.backoff_max_seconds, s.backoff_jitter) == (
        3, 1, 60, 0.1)
    assert (s.claim_idle_seconds, s.worker_concurrency, s.metrics_port, s.replay_rate) == (
        30, 64, 9464, 50)
    assert s.admin_token is None
    assert s.twilio_base_url == "https://api.twilio.com"
    assert s.twilio_timeout_seconds == 10
    assert (s.log_format, s.log_level) == ("json", "info")


@pytest.mark.parametrize(("variable", "value", "expected"), [
    ("SMSRELAY_RATE_LIMIT_MAX", "-1", "SMSRELAY_RATE_LIMIT_MAX"),
    ("SMSRELAY_RATE_LIMIT_MAX", "five", "SMSRELAY_RATE_LIMIT_MAX"),
    ("SMSRELAY_RATE_LIMIT_WINDOW_SECONDS", "0", "SMSRELAY_RATE_LIMIT_WINDOW_SECONDS"),
    ("SMSRELAY_REDIS_URL", "http://x", "SMSRELAY_REDIS_URL: must start with redis://"),
    ("SMSRELAY_REDIS_URL", "redis://host:notaport", "SMSRELAY_REDIS_URL"),
    ("SMSRELAY_DATABASE_URL", "mysql://x", "SMSRELAY_DATABASE_URL"),
    ("SMSRELAY_NAMESPACE", "a{b}", "SMSRELAY_NAMESPACE"),
    ("SMSRELAY_ON_RATE_LIMIT", "drop", "SMSRELAY_ON_RATE_LIMIT"),
    ("SMSRELAY_MAX_ATTEMPTS", "0", "SMSRELAY_MAX_ATTEMPTS"),
    ("SMSRELAY_BACKOFF_BASE_SECONDS", "-1", "SMSRELAY_BACKOFF_BASE_SECONDS"),
    ("SMSRELAY_BACKOFF_MAX_SECONDS", "-1", "SMSRELAY_BACKOFF_MAX_SECONDS"),
    ("SMSRELAY_BACKOFF_JITTER", "2", "SMSRELAY_BACKOFF_JITTER"),
    ("SMSRELAY_CLAIM_IDLE_SECONDS", "0", "SMSRELAY_CLAIM_IDLE_SECONDS"),
    ("SMSRELAY_WORKER_CONCURRENCY", "0", "SMSRELAY_WORKER_CONCURRENCY"),
    ("SMSRELAY_METRICS_PORT", "70000", "SMSRELAY_METRICS_PORT"),
    ("SMSRELAY_REPLAY_RATE", "0", "SMSRELAY_REPLAY_RATE"),
    ("SMSRELAY_ADMIN_TOKEN", "short", "SMSRELAY_ADMIN_TOKEN"),
    ("SMSRELAY_TWILIO_FROM", "12345", "SMSRELAY_TWILIO_FROM"),
    ("SMSRELAY_TWILIO_BASE_URL", "ftp://x", "SMSRELAY_TWILIO_BASE_URL"),
    ("SMSRELAY_TWILIO_TIMEOUT_SECONDS", "0", "SMSRELAY_TWILIO_TIMEOUT_SECONDS"),
    ("SMSRELAY_LOG_FORMAT", "xml", "SMSRELAY_LOG_FORMAT"),
    ("SMSRELAY_LOG_LEVEL", "loud", "SMSRELAY_LOG_LEVEL"),
])
def test_a_wrong_value_is_one_line_naming_the_variable(
        monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as info:
        Settings.load()
    message = str(info.value)
    assert message.startswith(expected)
    assert "\n" not in message
    if variable.endswith(("TOKEN", "_URL")):
        assert value not in message  # secrets (passwords in URLs, tokens) are never echoed


def test_sending_needs_credentials_and_a_sender(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "SMSRELAY_TWILIO_FROM",
                 "SMSRELAY_TWILIO_MESSAGING_SERVICE_SID"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match="TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN"):
        Settings.load().require_sender()
    monkeypatch.setenv("TWILIO_ACCOUNT_SID", "AC" + "1" * 32)
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "secret")
    with pytest.raises(ConfigError, match="SMSRELAY_TWILIO_FROM or SMSRELAY_TWILIO_MESSAGING"):
        Settings.load().require_sender()
    monkeypatch.setenv("SMSRELAY_TWILIO_MESSAGING_SERVICE_SID", "MG" + "1" * 32)
    Settings.load().require_sender()


def _smsrelay(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SMSRELAY_", "TWILIO_"))}
    return subprocess.run([sys.executable, "-m", "smsrelay.cli", *args], env={**base, **env},
                          capture_output=True, text=True, timeout=60, check=False)


def test_the_cli_stops_with_one_line_and_no_traceback() -> None:
    bad = _smsrelay("worker", SMSRELAY_RATE_LIMIT_MAX="-1")
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "smsrelay: SMSRELAY_RATE_LIMIT_MAX: Input should be greater than or equal to 1 (got '-1')"]
    no_sender = _smsrelay("worker")
    assert no_sender.returncode == 2
    assert "TWILIO_ACCOUNT_SID" in no_sender.stderr
    assert "Traceback" not in no_sender.stderr + bad.stderr
