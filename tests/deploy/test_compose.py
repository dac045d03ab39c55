"""deploy/compose.yaml: valid Compose, commands the CLI knows, variables the settings read."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from smsrelay.settings import Settings
from tests.deploy.support import (
    COMPOSE,
    ENV_EXAMPLE,
    cli_parser,
    cli_rejects,
    load_yaml,
    output,
    run,
    settings_default,
    settings_env_names,
    unknown_settings,
)

_INTERPOLATION = re.compile(
    r"\$(?:\{(?P<name>[A-Za-z_]\w*)(?P<op>:?[-?])?(?P<arg>[^}]*)\}"
    r"|(?P<bare>[A-Za-z_]\w*)|(?P<dollar>\$))"
)


def _compose() -> dict[str, Any]:
    return load_yaml(COMPOSE)


def _env_example() -> dict[str, str]:
    values: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f".env.example: {line!r} is not KEY=VALUE"
            values[key.strip()] = value.strip()
    return values


def _interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, $VAR and $$."""

    def replace(match: re.Match[str]) -> str:
        if match.group("dollar"):
            return "$"
        name = match.group("name") or match.group("bare")
        op, arg = match.group("op") or "", match.group("arg") or ""
        value = env.get(name)
        if op in (":-", "-"):
            return value if value or (op == "-" and value is not None) else arg
        if op in (":?", "?") and not value:
            pytest.fail(f"compose needs {name}: {arg}", pytrace=False)
        return value or ""

    return _INTERPOLATION.sub(replace, text)


def _interpolated_names() -> set[str]:
    return {
        m.group("name") or m.group("bare")
        for m in _INTERPOLATION.finditer(COMPOSE.read_text())
        if not m.group("dollar")
    }


def _smsrelay_services() -> Iterator[tuple[str, dict[str, Any]]]:
    for name, service in _compose()["services"].items():
        if "build" in service or str(service.get("image", "")).startswith("smsrelay"):
            yield name, service


def _environment(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def _seconds(duration: str) -> float:
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"bad duration {duration!r}"
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * scale[u] for n, u in parts)


def test_compose_file_follows_the_compose_spec() -> None:
    result = run("check-jsonschema", "--builtin-schema", "vendor.compose-spec", str(COMPOSE))
    assert result.returncode == 0, output(result)


def test_every_command_exists_in_the_cli() -> None:
    parser = cli_parser()
    services = dict(_smsrelay_services())
    assert {"migrate", "worker", "admin", "fake-twilio"} <= set(services), sorted(services)
    problems = []
    for name, service in services.items():
        command = service.get("command")
        assert command, f"service {name} runs the image's default command: say which"
        problem = cli_rejects(parser, command)
        if problem is not None:
            problems.append(f"service {name}: `smsrelay {command}` is rejected: {problem}")
    assert not problems, "\n".join(problems)


def test_the_cli_check_can_fail() -> None:
    parser = cli_parser()
    assert cli_rejects(parser, ["worker"]) is None
    assert cli_rejects(parser, ["no-such-command"]) is not None
    assert cli_rejects(parser, ["admin", "--no-such-option"]) is not None


def test_every_variable_set_is_a_setting() -> None:
    for name, service in _smsrelay_services():
        env = _environment(service)
        assert not unknown_settings(env), f"service {name} sets {unknown_settings(env)}"
        others = [k for k in env if not k.startswith(("SMSRELAY_", "TWILIO_"))]
        assert not others, f"service {name} sets variables smsrelay does not read: {others}"
    assert unknown_settings(["SMSRELAY_NO_SUCH_THING"]) != [], "the check must be able to fail"


def test_env_example_holds_only_settings_and_compose_variables() -> None:
    example = _env_example()
    interpolated = _interpolated_names()
    known = settings_env_names()
    strays = [k for k in example if k not in known and k not in interpolated]
    assert not strays, f".env.example sets variables nothing reads: {strays}"
    assert "SMSRELAY_ADMIN_TOKEN" in example, "the admin token comes from the env file"
    # Every ${VAR} without a default is defined by the env file.
    for match in _INTERPOLATION.finditer(COMPOSE.read_text()):
        name, op = match.group("name"), match.group("op") or ""
        if name and op not in (":-", "-"):
            assert name in example, f"compose.yaml needs ${{{name}}}, .env.example lacks it"


def test_settings_accept_each_service_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Given each smsrelay service's environment as compose would build it from .env.example
    example = _env_example()
    for name, service in _smsrelay_services():
        env = dict(example) if ".env" in service.get("env_file", []) else {}
        env.update({k: _interpolate(v, example) for k, v in _environment(service).items()})
        with monkeypatch.context() as patch:
            for variable in settings_env_names():
                patch.delenv(variable, raising=False)
            for variable, value in env.items():
                patch.setenv(variable, value)
            patch.chdir(tmp_path)  # no stray .env file is read
            # Then the settings load without a complaint
            settings = Settings.load()
        assert settings.redis_url.startswith("redis://redis:"), name
        assert "@postgres:5432/" in settings.database_url, name


def test_redis_is_durable() -> None:
    redis = _compose()["services"]["redis"]
    command = " ".join(redis["command"]) if isinstance(redis["command"], list) else redis["command"]
    assert re.search(r"--appendonly\s+\"?yes", command), command
    assert re.search(r"--appendfsync\s+always", command), command
    assert re.search(r"--maxmemory-policy\s+noeviction", command), command
    volumes = _compose()["volumes"]
    assert any(v.split(":")[1] == "/data" and v.split(":")[0] in volumes for v in redis["volumes"])


def test_postgres_keeps_its_data_on_a_volume() -> None:
    postgres = _compose()["services"]["postgres"]
    assert any(
        v.endswith(":/var/lib/postgresql/data") and v.split(":")[0] in _compose()["volumes"]
        for v in postgres["volumes"]
    )
    assert postgres["healthcheck"]["test"]


def test_migrate_runs_once_before_workers_and_admin() -> None:
    services = _compose()["services"]
    assert services["migrate"]["command"] == ["migrate"]
    assert services["migrate"]["restart"] == "no"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("worker", "admin"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        assert depends["redis"]["condition"] == "service_healthy", name


def test_two_workers_with_time_to_drain() -> None:
    worker = _compose()["services"]["worker"]
    assert worker["command"] == ["worker"]
    assert worker["deploy"]["replicas"] >= 2
    grace = float(
        _environment(worker).get(
            "SMSRELAY_SHUTDOWN_GRACE_SECONDS", str(settings_default("shutdown_grace_seconds"))
        )
    )
    assert _seconds(worker["stop_grace_period"]) > grace, "compose would kill a draining worker"


def test_admin_on_8080_with_token_from_env_file() -> None:
    admin = _compose()["services"]["admin"]
    command = admin["command"]
    assert command[0] == "admin" and "0.0.0.0" in command and "8080" in command, command
    assert "8080:8080" in admin["ports"]
    assert ".env" in admin["env_file"]
    assert "/healthz" in " ".join(admin["healthcheck"]["test"])


def test_fake_twilio_only_in_the_demo_profile() -> None:
    services = _compose()["services"]
    fake = services["fake-twilio"]
    assert fake["profiles"] == ["demo"]
    port = fake["command"][fake["command"].index("--port") + 1]
    # The demo env file points the workers at it.
    assert _env_example()["SMSRELAY_TWILIO_BASE_URL"] == f"http://fake-twilio:{port}"
    for name, service in services.items():
        if name not in ("fake-twilio", "publish-sample"):
            assert "profiles" not in service, f"{name} must run without a profile"


def test_prometheus_and_grafana_are_provisioned() -> None:
    services = _compose()["services"]
    prometheus = services["prometheus"]
    assert "./prometheus:/etc/prometheus:ro" in prometheus["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    grafana = services["grafana"]
    assert any(v.startswith("./grafana/provisioning:") for v in grafana["volumes"])
