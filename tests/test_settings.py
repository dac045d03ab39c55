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
        5,
        3600,
        "dead_letter",
    )
    assert (s.max_attempts, s.backoff_base_seconds, s.backoff_max_seconds, s.backoff_jitter) == (
        3,
        1,
        60,
        0.1,
    )
    assert (s.claim_idle_seconds, s.worker_concurrency, s.metrics_port, s.replay_rate) == (
        30,
        64,
        9464,
        50,
    )
    assert s.admin_token is None
    assert s.twilio_base_url == "https://api.twilio.com"
    assert s.twilio_timeout_seconds == 10
    assert (s.log_format, s.log_level) == ("json", "info")


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
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
        ("SMSRELAY_ADMIN_TOKEN", "fifteen-chars-x", "SMSRELAY_ADMIN_TOKEN"),
        ("SMSRELAY_ADMIN_TOKENS", "ops:viewer:fifteen-chars-x", "SMSRELAY_ADMIN_TOKENS"),
        ("SMSRELAY_METRICS_HOST", "no such host", "SMSRELAY_METRICS_HOST"),
        ("SMSRELAY_ADMIN_AUTH_MAX_FAILURES", "-1", "SMSRELAY_ADMIN_AUTH_MAX_FAILURES"),
        ("SMSRELAY_TWILIO_FROM", "12345", "SMSRELAY_TWILIO_FROM"),
        ("SMSRELAY_TWILIO_BASE_URL", "ftp://x", "SMSRELAY_TWILIO_BASE_URL"),
        ("SMSRELAY_TWILIO_TIMEOUT_SECONDS", "0", "SMSRELAY_TWILIO_TIMEOUT_SECONDS"),
        ("SMSRELAY_LOG_FORMAT", "xml", "SMSRELAY_LOG_FORMAT"),
        ("SMSRELAY_LOG_LEVEL", "loud", "SMSRELAY_LOG_LEVEL"),
    ],
)
def test_a_wrong_value_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as info:
        Settings.load()
    message = str(info.value)
    assert message.startswith(expected)
    assert "\n" not in message
    if variable.endswith(("TOKEN", "TOKENS", "_URL")):
        assert value not in message  # secrets (passwords in URLs, tokens) are never echoed


def test_sending_needs_credentials_and_a_sender(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "TWILIO_ACCOUNT_SID",
        "TWILIO_AUTH_TOKEN",
        "SMSRELAY_TWILIO_FROM",
        "SMSRELAY_TWILIO_MESSAGING_SERVICE_SID",
    ):
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
    return subprocess.run(
        [sys.executable, "-m", "smsrelay.cli", *args],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_cli_stops_with_one_line_and_no_traceback() -> None:
    bad = _smsrelay("worker", SMSRELAY_RATE_LIMIT_MAX="-1")
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "smsrelay: SMSRELAY_RATE_LIMIT_MAX: Input should be greater than or equal to 1 (got '-1')"
    ]
    no_sender = _smsrelay("worker")
    assert no_sender.returncode == 2
    assert "TWILIO_ACCOUNT_SID" in no_sender.stderr
    assert "Traceback" not in no_sender.stderr + bad.stderr


# -- admin credentials -----------------------------------------------------------------------
OPS = "ops-viewer-token-0123"
CI = "ci-operator-token-456"
ADMIN = "the-admin-token-789abc"


@pytest.fixture
def clean(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith(("SMSRELAY_", "TWILIO_")):
            monkeypatch.delenv(name)
    return monkeypatch


def _config_error(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        Settings.load()
    message = str(info.value)
    assert "\n" not in message
    for secret in (OPS, CI, ADMIN, "x" * 15, "short-token"):
        assert secret not in message, f"a token was echoed: {message}"
    return message


def test_the_admin_token_needs_16_characters(clean: pytest.MonkeyPatch) -> None:
    # Given a 15-character token (8 was enough before), Then it is refused, naming the variable
    message = _config_error(clean, SMSRELAY_ADMIN_TOKEN="x" * 15)
    assert message.startswith("SMSRELAY_ADMIN_TOKEN: ")
    assert "16 characters" in message
    clean.setenv("SMSRELAY_ADMIN_TOKEN", "x" * 16)
    assert [(c.name, c.role) for c in Settings.load().require_admin_credentials()] == [
        ("admin", "operator")
    ]


def test_admin_tokens_are_named_credentials_with_roles(clean: pytest.MonkeyPatch) -> None:
    clean.setenv("SMSRELAY_ADMIN_TOKENS", f" ops:viewer:{OPS} , ci:operator:{CI},")
    clean.setenv("SMSRELAY_ADMIN_TOKEN", ADMIN)
    credentials = Settings.load().require_admin_credentials()
    assert [(c.name, c.role, c.token.get_secret_value()) for c in credentials] == [
        ("admin", "operator", ADMIN),
        ("ops", "viewer", OPS),
        ("ci", "operator", CI),
    ]
    assert OPS not in repr(credentials)  # a token is a SecretStr: never in a repr or a log


def test_admin_tokens_alone_are_enough(clean: pytest.MonkeyPatch) -> None:
    clean.setenv("SMSRELAY_ADMIN_TOKENS", f"ops:viewer:{OPS}")
    assert [c.name for c in Settings.load().require_admin_credentials()] == ["ops"]
    # and a token may hold a colon: only the first two separate the fields
    clean.setenv("SMSRELAY_ADMIN_TOKENS", "ops:viewer:abc:def:0123456789ab")
    [only] = Settings.load().require_admin_credentials()
    assert only.token.get_secret_value() == "abc:def:0123456789ab"


def test_without_any_token_the_admin_refuses(clean: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="SMSRELAY_ADMIN_TOKEN or SMSRELAY_ADMIN_TOKENS"):
        Settings.load().require_admin_credentials()
    clean.setenv("SMSRELAY_ADMIN_TOKENS", " ")
    with pytest.raises(ConfigError, match="SMSRELAY_ADMIN_TOKEN or SMSRELAY_ADMIN_TOKENS"):
        Settings.load().require_admin_credentials()


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (f"ops:{OPS}", "entry 1: must be name:role:token"),
        (f"ops:viewer:{OPS},ci-operator-{CI}", "entry 2: must be name:role:token"),
        (f"ops:viewer:{OPS},ops:operator:{CI}", "name 'ops' is used twice"),
        (f"ops:viewer:{OPS},ci:operator:{OPS}", "'ops' and 'ci' have the same token"),
        (f"ops:admin:{OPS}", "entry 1 ('ops'): role 'admin' is neither viewer nor operator"),
        ("ops:viewer:short-token", "entry 1 ('ops'): token must be at least 16 characters"),
        ("ops:viewer:", "entry 1 ('ops'): token must be at least 16 characters"),
        ("ops:viewer:0123456789abcdef\x01", "entry 1 ('ops'): token must be visible ASCII"),
        ("ops:viewer:0123456789abcdéf", "entry 1 ('ops'): token must be visible ASCII"),
        (f"o p s:viewer:{OPS}", "entry 1: name must be 1-15 characters of letters, digits"),
        (f"{'n' * 16}:viewer:{OPS}", "entry 1: name must be 1-15 characters"),
        (f":viewer:{OPS}", "entry 1: name must be 1-15 characters"),
        # fields swapped: the token is where the name goes, and is not quoted
        (f"{OPS}:viewer:ops", "entry 1: name must be 1-15 characters"),
        (f"ops:{OPS}:viewer", "entry 1 ('ops'): role is neither viewer nor operator"),
        (",", "no name:role:token entry"),
    ],
)
def test_a_wrong_admin_tokens_entry_is_one_line(
    clean: pytest.MonkeyPatch, value: str, fragment: str
) -> None:
    message = _config_error(clean, SMSRELAY_ADMIN_TOKENS=value)
    assert message.startswith("SMSRELAY_ADMIN_TOKENS: "), message
    assert fragment in message, message


def test_every_problem_of_admin_tokens_is_told(clean: pytest.MonkeyPatch) -> None:
    message = _config_error(clean, SMSRELAY_ADMIN_TOKENS=f"a:viewer:short,b:boss:{OPS}")
    assert "entry 1 ('a'): token must be" in message and "entry 2 ('b'): role 'boss'" in message


@pytest.mark.parametrize(
    ("tokens", "fragment"),
    [
        (f"admin:viewer:{OPS}", "name 'admin' is SMSRELAY_ADMIN_TOKEN's"),
        (f"ops:viewer:{ADMIN}", "'ops' has the same token as SMSRELAY_ADMIN_TOKEN"),
    ],
)
def test_admin_tokens_do_not_clash_with_the_admin_token(
    clean: pytest.MonkeyPatch, tokens: str, fragment: str
) -> None:
    message = _config_error(clean, SMSRELAY_ADMIN_TOKEN=ADMIN, SMSRELAY_ADMIN_TOKENS=tokens)
    assert message.startswith("SMSRELAY_ADMIN_TOKENS: ") and fragment in message, message


def test_metrics_host(clean: pytest.MonkeyPatch) -> None:
    assert Settings.load().metrics_host == "0.0.0.0"
    for good in ("127.0.0.1", "::", "::1", "localhost", "metrics.internal", "fd00::1"):
        clean.setenv("SMSRELAY_METRICS_HOST", good)
        assert Settings.load().metrics_host == good
    for bad in ("", "not a host", "http://x", "-bad.example", "a..b", "1.2.3.4:80", "x" * 300):
        clean.setenv("SMSRELAY_METRICS_HOST", bad)
        with pytest.raises(ConfigError) as info:
            Settings.load()
        assert str(info.value).startswith("SMSRELAY_METRICS_HOST: "), (bad, str(info.value))
