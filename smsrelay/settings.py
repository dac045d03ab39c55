"""Every setting of smsrelay, read once from the environment into one typed object.

A wrong value stops the process at start with one line naming the variable
(`Settings.load()` raises `ConfigError`; the CLI prints it and exits 2).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast
from urllib.parse import unquote, urlsplit

import platformdirs
from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from smsrelay.errors import ConfigError

ENV_PREFIX = "SMSRELAY_"
_NAMESPACE_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_E164_RE = re.compile(r"^\+[1-9]\d{6,14}$")
_HOST_RE = re.compile(r"^[A-Za-z0-9._-]+$|^[0-9A-Fa-f:.]+$")  # a DNS name or an IP address
_TOKEN_RE = re.compile(r"^[\x21-\x7e]+$")  # visible ASCII: it travels in an HTTP header
# Names are shorter than any token: an error that quotes a name (or a role) never shows a token
# written in its place by mistake (`token:viewer:name`).
_TOKEN_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
_HOST_LABEL_RE = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
MIN_TOKEN_LENGTH = 16
ADMIN_ROLES = ("viewer", "operator")
Role = Literal["viewer", "operator"]
_DAY_S = 86_400


@dataclass(frozen=True)
class AdminCredential:
    """One bearer token of the admin API: who holds it (`name`, the audit's actor) and its role."""

    name: str
    role: Role
    token: SecretStr


def spool_root() -> Path:
    """The user's cache folder that holds each namespace's default spool. Before spooled
    requests recorded their namespace it was itself the one default spool of every app."""
    return Path(platformdirs.user_cache_dir("smsrelay")) / "spool"


def _default_spool_dir(data: dict[str, Any]) -> Path:
    # One folder per namespace: two apps of one user never share a default spool.
    namespace = data.get("namespace")
    if not isinstance(namespace, str):
        namespace = "smsrelay"
    if not namespace.strip("."):  # "." and ".." are valid namespaces, not folder names
        namespace = namespace.replace(".", "%2E")
    return spool_root() / namespace


class Settings(BaseSettings):
    """The contract's variables (README: Configuration), plus a few tuning knobs past it."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        case_sensitive=False,
        extra="ignore",
        frozen=True,
        populate_by_name=True,
        allow_inf_nan=False,
    )

    # Before redis_url: its validator reads the mode (one server, or a list of seeds/sentinels).
    redis_mode: Literal["standalone", "cluster", "sentinel"] = "standalone"
    redis_sentinel_master: str = "mymaster"
    redis_wait_replicas: int = Field(0, ge=0, le=100)
    redis_url: str = "redis://localhost:6379/0"
    database_url: str = "postgresql://localhost/postgres"
    namespace: str = "smsrelay"
    shards: int = Field(1, ge=1, le=1024)

    rate_limit_max: int = Field(5, ge=1)
    rate_limit_window_seconds: float = Field(3600, gt=0, le=30 * _DAY_S)
    on_rate_limit: Literal["dead_letter", "defer"] = "dead_letter"

    max_attempts: int = Field(3, ge=1, le=100)
    backoff_base_seconds: float = Field(1, ge=0, le=_DAY_S)
    backoff_max_seconds: float = Field(60, ge=0, le=_DAY_S)
    backoff_jitter: float = Field(0.1, ge=0, le=1)

    breaker_threshold: int = Field(5, ge=0, le=10_000)
    breaker_cooldown_seconds: float = Field(10, gt=0, le=300)
    send_rate: float = Field(0, ge=0, le=100_000)
    send_burst: int | None = Field(None, ge=1, le=1_000_000)
    message_ttl_seconds: float = Field(0, ge=0, le=30 * _DAY_S)

    claim_idle_seconds: float = Field(30, gt=0, le=_DAY_S)
    max_deliveries: int = Field(5, ge=1)
    worker_concurrency: int = Field(64, ge=1, le=10_000)
    worker_batch_size: int = Field(128, ge=1, le=10_000)
    shutdown_grace_seconds: float = Field(25, ge=0, le=_DAY_S)
    metrics_port: int = Field(9464, ge=0, le=65535)
    metrics_host: str = "0.0.0.0"  # a metrics port is meant to be scraped from outside
    replay_rate: float = Field(50, gt=0, le=100_000)

    admin_token: SecretStr | None = None
    # After admin_token: its validator reads admin_token's validated value (clashes).
    admin_tokens: SecretStr | None = None
    # Failed authentications from one client address within a minute before it is refused
    # (429) for a minute; 0: never refused (still logged). Behind a proxy every caller shares
    # the proxy's address: one caller's failures then refuse them all.
    admin_auth_max_failures: int = Field(10, ge=0, le=1_000_000)

    twilio_account_sid: str | None = Field(
        None, validation_alias=AliasChoices("TWILIO_ACCOUNT_SID", "twilio_account_sid")
    )
    twilio_auth_token: SecretStr | None = Field(
        None, validation_alias=AliasChoices("TWILIO_AUTH_TOKEN", "twilio_auth_token")
    )
    twilio_from: str | None = None
    twilio_messaging_service_sid: str | None = None
    twilio_base_url: str = "https://api.twilio.com"
    twilio_timeout_seconds: float = Field(10, gt=0, le=600)
    twilio_status_callback: str | None = None

    spool_dir: Path = Field(default_factory=_default_spool_dir)
    publish_timeout_seconds: float = Field(1.0, gt=0, le=2)
    idempotency_ttl_seconds: int = Field(86_400, ge=1)
    sent_marker_ttl_seconds: int = Field(7 * 86_400, ge=60)
    dead_letter_retention_days: float = Field(14, ge=0, le=3650)
    trace_ttl_seconds: int = Field(604_800, ge=0, le=366 * _DAY_S)
    sent_sms_retention_days: float = Field(90, ge=0, le=3650)

    log_format: Literal["json", "console"] = "json"
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("log_format", "log_level", "on_rate_limit", "redis_mode", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str, info: ValidationInfo) -> str:
        mode = info.data.get("redis_mode", "standalone")
        if mode != "standalone":
            redis_endpoints(value, mode)  # raises ValueError with the one problem
            return value
        parts = urlsplit(value)
        if parts.scheme not in {"redis", "rediss", "unix"}:
            raise ValueError("must start with redis://, rediss:// or unix://")
        if "," in parts.netloc:
            raise ValueError(
                "names several hosts: set SMSRELAY_REDIS_MODE=cluster (seed nodes) or "
                "sentinel (the sentinels), or name one Redis"
            )
        if parts.scheme != "unix" and not parts.hostname:
            raise ValueError("has no host")
        _check_host(parts.hostname)
        _ = parts.port  # raises ValueError on a non-numeric port
        return value

    @field_validator("redis_sentinel_master")
    @classmethod
    def _sentinel_master(cls, value: str) -> str:
        if not _NAMESPACE_RE.match(value):
            raise ValueError("must be 1-64 characters of letters, digits, '_', '.', '-'")
        return value

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in {"postgresql", "postgres"}:
            raise ValueError("must start with postgresql://")
        _check_host(parts.hostname)
        _ = parts.port
        try:
            import psycopg.conninfo  # here: a producer that never sets the URL never loads it
        except ImportError:  # the producer-only install: libpq's check is the worker's
            return value
        try:
            psycopg.conninfo.conninfo_to_dict(value)
        except psycopg.Error:
            # (libpq's message may quote the URL, password included: not repeated here)
            raise ValueError(
                "libpq cannot parse it (check the options after '?' and the %-escapes)"
            ) from None
        return value

    @field_validator("twilio_base_url", "twilio_status_callback")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL")
        _check_host(parts.hostname)
        _ = parts.port
        return value.rstrip("/")

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, value: str) -> str:
        if not _NAMESPACE_RE.match(value):
            raise ValueError("must be 1-64 characters of letters, digits, '_', '.', '-'")
        return value

    @field_validator("twilio_from")
    @classmethod
    def _sender(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        assert value is not None
        # An alphanumeric sender ID (at least one letter, e.g. "ACME") is allowed in many countries.
        if not (_E164_RE.match(value) or re.fullmatch(r"(?=.*[A-Za-z])[A-Za-z0-9 ]{1,11}", value)):
            raise ValueError("must be an E.164 number like +15005550006 or an alphanumeric sender")
        return value

    @field_validator("admin_token")
    @classmethod
    def _token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            problem = _token_problem(value.get_secret_value())
            if problem:
                raise ValueError(problem)
        return value

    @field_validator("admin_tokens")
    @classmethod
    def _tokens(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        admin = info.data.get("admin_token")
        _, problems = parse_admin_tokens(
            value.get_secret_value(), admin.get_secret_value() if admin else None
        )
        if problems:
            more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
            raise ValueError("; ".join(problems[:5]) + more)
        return value

    @field_validator("metrics_host")
    @classmethod
    def _metrics_host(cls, value: str) -> str:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            labels = value.removesuffix(".").split(".")
            if len(value) > 253 or not all(_HOST_LABEL_RE.match(label) for label in labels):
                raise ValueError(
                    "must be an IP address (0.0.0.0, ::, 127.0.0.1) or a host name"
                ) from None
        return value

    @field_validator("twilio_account_sid", "twilio_messaging_service_sid")
    @classmethod
    def _sid(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value in (None, ""):
            return None
        assert value is not None
        prefix = "AC" if info.field_name == "twilio_account_sid" else "MG"
        if not re.fullmatch(prefix + r"[0-9a-fA-F]{32}", value):
            raise ValueError(f"must be {prefix} followed by 32 hexadecimal digits")
        return value

    @field_validator("spool_dir")
    @classmethod
    def _spool_dir(cls, value: Path) -> Path:
        if value.exists() and not value.is_dir():
            raise ValueError("exists and is not a directory")
        return value

    @property
    def send_burst_tokens(self) -> int:
        """SMSRELAY_SEND_BURST, or the rate (at least 1) when unset."""
        return self.send_burst or max(1, round(self.send_rate))

    @classmethod
    def load(cls, **overrides: object) -> Settings:
        """Read the environment; raise `ConfigError` with one line naming the variable."""
        try:
            return cls(**overrides)  # type: ignore[arg-type]
        except ValidationError as exc:
            raise ConfigError(describe_validation_error(exc)) from None

    # Requirements that only some commands have: checked by those commands at start.
    def require_sender(self) -> None:
        missing = [
            name
            for name, value in (
                ("TWILIO_ACCOUNT_SID", self.twilio_account_sid),
                ("TWILIO_AUTH_TOKEN", self.twilio_auth_token),
            )
            if not value
        ]
        if missing:
            raise ConfigError(f"{' and '.join(missing)} must be set to send SMS")
        if not (self.twilio_from or self.twilio_messaging_service_sid):
            raise ConfigError(
                "SMSRELAY_TWILIO_FROM or SMSRELAY_TWILIO_MESSAGING_SERVICE_SID "
                "must be set to send SMS"
            )

    def require_admin_credentials(self) -> tuple[AdminCredential, ...]:
        """Every admin credential (`SMSRELAY_ADMIN_TOKEN` is the operator `admin`), at least one."""
        credentials: list[AdminCredential] = []
        if self.admin_token is not None and self.admin_token.get_secret_value():
            credentials.append(AdminCredential("admin", "operator", self.admin_token))
        if self.admin_tokens is not None:
            credentials += parse_admin_tokens(self.admin_tokens.get_secret_value())[0]
        if not credentials:
            raise ConfigError(
                "SMSRELAY_ADMIN_TOKEN or SMSRELAY_ADMIN_TOKENS must be set: the "
                "admin API refuses to run without a bearer token"
            )
        return tuple(credentials)

    def require_admin_token(self) -> tuple[AdminCredential, ...]:
        """The check `smsrelay admin` makes at start (the name it has always had)."""
        return self.require_admin_credentials()


@dataclass(frozen=True)
class RedisEndpoints:
    """What a cluster or sentinel URL names: `redis[s]://[user:password@]h1:p1,h2:p2[/db]`."""

    tls: bool
    hosts: tuple[tuple[str, int], ...]
    db: int
    username: str | None
    password: str | None


_DEFAULT_PORT = {"cluster": 6379, "sentinel": 26379}


def redis_endpoints(url: str, mode: str) -> RedisEndpoints:
    """The hosts of a cluster (seed nodes) or sentinel URL; ValueError with one line why not."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in {"redis", "rediss"}:
        raise ValueError(f"must start with redis:// or rediss:// in {mode} mode")
    netloc, _, tail = rest.partition("/")
    path, _, query = tail.partition("?")
    if query or "?" in netloc:
        raise ValueError(f"takes no options after '?' in {mode} mode")
    userinfo, at, hostlist = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username, password = unquote(user) or None, unquote(secret) if colon else None
    hosts: list[tuple[str, int]] = []
    for position, item in enumerate(hostlist.split(","), 1):
        item = item.strip()
        if not item:
            raise ValueError(f"has an empty host (entry {position} of the comma-separated list)")
        host, colon, port_text = item.rpartition(":") if ":" in item else (item, "", "")
        host = host.strip("[]")
        if not host or not _HOST_RE.match(host):
            raise ValueError(f"entry {position}: the host is neither a DNS name nor an IP address")
        if colon and not (port_text.isdigit() and 0 < int(port_text) < 65536):
            raise ValueError(f"entry {position}: the port must be a number from 1 to 65535")
        hosts.append((host, int(port_text) if colon else _DEFAULT_PORT[mode]))
    db_text = path.strip("/") or "0"
    if not db_text.isdigit():
        raise ValueError("the database after '/' must be a number")
    if mode == "cluster" and int(db_text) != 0:
        raise ValueError("names database " + db_text + ": Redis Cluster has only database 0")
    return RedisEndpoints(scheme == "rediss", tuple(hosts), int(db_text), username, password)


def _token_problem(token: str) -> str | None:
    """Why a token cannot be an admin token, in words that never quote it; None if it can."""
    if len(token) < MIN_TOKEN_LENGTH:
        return f"must be at least {MIN_TOKEN_LENGTH} characters"
    if not _TOKEN_RE.match(token):
        return "must be visible ASCII characters without spaces (it is sent in an HTTP header)"
    return None


def parse_admin_tokens(
    raw: str,
    admin_token: str | None = None,
) -> tuple[list[AdminCredential], list[str]]:
    """`name:role:token,...` as credentials, and every problem found (an empty list: valid).

    A problem names the entry by position and, once the name is valid, by name; it never
    quotes a token (nor a whole entry, which holds one).
    """
    credentials: list[AdminCredential] = []
    problems: list[str] = []
    names: dict[str, int] = {}
    tokens: dict[str, str] = {}
    if admin_token:
        tokens[admin_token] = "SMSRELAY_ADMIN_TOKEN"
    entries = [entry.strip() for entry in raw.split(",")]
    if not any(entries):
        return [], ["has no name:role:token entry"]
    for position, entry in enumerate(entries, 1):
        if not entry:
            continue  # a trailing or doubled comma
        parts = entry.split(":", 2)  # the token may hold colons; name and role cannot
        if len(parts) != 3:
            problems.append(f"entry {position}: must be name:role:token")
            continue
        name, role, token = parts[0].strip(), parts[1].strip().lower(), parts[2].strip()
        if not _TOKEN_NAME_RE.match(name):
            problems.append(
                f"entry {position}: name must be 1-15 characters of letters, digits, '_', '.', '-'"
            )
            continue
        where = f"entry {position} ('{name}')"
        entry_problems: list[str] = []
        if role not in ADMIN_ROLES:
            shown = f" {role!r}" if _TOKEN_NAME_RE.match(role) else ""
            entry_problems.append(f"{where}: role{shown} is neither viewer nor operator")
        token_problem = _token_problem(token)
        if token_problem:
            entry_problems.append(f"{where}: token {token_problem}")
        if name == "admin" and admin_token:
            entry_problems.append(f"{where}: the name 'admin' is SMSRELAY_ADMIN_TOKEN's")
        elif name in names:
            entry_problems.append(f"{where}: the name '{name}' is used twice")
        if not token_problem and token in tokens:
            other = tokens[token]
            entry_problems.append(
                f"{where}: '{name}' has the same token as {other}"
                if other.isupper()
                else f"{where}: '{other}' and '{name}' have the same token"
            )
        problems += entry_problems
        names.setdefault(name, position)
        tokens.setdefault(token, name)
        if not entry_problems:
            credentials.append(AdminCredential(name, cast(Role, role), SecretStr(token)))
    if not credentials and not problems:
        problems.append("has no name:role:token entry")
    return credentials, problems


def env_name(field: str) -> str:
    if field.startswith("twilio_account_sid") or field.startswith("twilio_auth_token"):
        return field.upper()
    return ENV_PREFIX + field.upper()


def describe_validation_error(exc: ValidationError) -> str:
    """The first problem of a settings ValidationError as one readable line."""
    # The spool folder's default depends on the namespace: pydantic does not make it when
    # another field failed, and says so. That is a consequence, never the problem itself.
    errors = [e for e in exc.errors() if e["type"] != "default_factory_not_called"]
    errors = errors or exc.errors()
    error = errors[0]
    loc = str(error["loc"][0]) if error["loc"] else "?"
    name = loc if loc.isupper() else env_name(loc)
    given = error.get("input")
    message = str(error["msg"]).removeprefix("Value error, ")
    secret = name.endswith(("TOKEN", "TOKENS", "_URL")) or isinstance(given, dict)
    shown = "" if secret else f" (got {given!r})"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{name}: {message}{shown}{more}"


def _check_host(host: str | None) -> None:
    if host and not _HOST_RE.match(host):
        raise ValueError("has a host name that is neither a DNS name nor an IP address")
