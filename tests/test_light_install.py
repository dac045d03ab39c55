"""`pip install smsrelay` is the producer alone (issue 12, "A light install").

Built for real: the wheel of this checkout, installed into a fresh virtualenv with the
producer's dependencies at the versions of uv.lock (`uv sync` from uv's cache, offline), then
used.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from smsrelay.cli import _COMMAND_EXTRA
from tests.support.servers import require_tool

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
# Distributions only the extras bring.
_HEAVY_DISTRIBUTIONS = {
    "twilio",
    "aiohttp",
    "psycopg",
    "psycopg-binary",
    "psycopg-pool",
    "prometheus-client",
    "uvloop",
    "fastapi",
    "fastapi-offline",
    "uvicorn",
    "starlette",
}
_IMPORTS = """
import json, sys
import smsrelay
from smsrelay import AsyncProducer, AsyncPublisher, Producer, Publisher, PublishResult
import smsrelay.cli, smsrelay.testing.outbox
heavy = {"twilio", "aiohttp", "psycopg", "psycopg_pool", "prometheus_client", "uvloop",
         "fastapi", "fastapi_offline", "uvicorn", "starlette"}
ours = ("smsrelay.consumers", "smsrelay.admin", "smsrelay.store", "smsrelay.runner",
        "smsrelay.demo", "smsrelay.testing.fake_twilio")
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in heavy or m.startswith(ours))))
"""


def _uv() -> list[str]:
    found = shutil.which("uv")
    if found:
        return [found]
    probe = subprocess.run(
        ["python3", "-m", "uv", "--version"], capture_output=True, check=False, timeout=30
    )
    if probe.returncode == 0:
        return ["python3", "-m", "uv"]
    return [require_tool("uv", "pip install uv")]


def _run(*argv: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=240, check=False, **kwargs)  # type: ignore[call-overload]
    assert done.returncode == 0, f"{argv}:\n{done.stdout}{done.stderr}"
    return done  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def light_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    uv = _uv()
    work = tmp_path_factory.mktemp("light")
    _run(*uv, "build", "--offline", "--wheel", "-o", str(work / "dist"), cwd=ROOT)
    [wheel] = (work / "dist").glob("smsrelay-*.whl")
    venv = work / "venv"
    python = str(venv / "bin" / "python")
    # The producer's dependencies as uv.lock pins them, without an extra, a dependency group
    # or the project itself: the lock's URLs are found in the cache `uv sync` filled, where
    # `uv pip install -r` would need index pages the cache may not hold.
    _run(
        *uv, "sync", "--frozen", "--offline", "--quiet", "--no-dev", "--no-default-groups",
        "--no-install-project", cwd=ROOT, env={**os.environ, "UV_PROJECT_ENVIRONMENT": str(venv)},
    )  # fmt: skip
    _run(*uv, "pip", "install", "--offline", "--quiet", "--no-deps", "--python", python, str(wheel))
    # The wheel's own requirements are met by what is installed, and nothing more came in.
    _run(*uv, "pip", "check", "--python", python)
    return venv


def _smsrelay(venv: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SMSRELAY_", "TWILIO_"))}
    base.pop("PYTHONPATH", None)
    return subprocess.run(
        [str(venv / "bin" / "smsrelay"), *args],
        env={**base, **env},
        cwd=venv,  # not the checkout: its smsrelay/ must not be imported instead
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_light_install_holds_no_worker_or_admin_dependency(light_venv: Path) -> None:
    listed = _run(
        *_uv(), "pip", "list", "--format", "json", "--python", str(light_venv / "bin" / "python")
    )
    names = {d["name"].lower() for d in json.loads(listed.stdout)}
    assert "smsrelay" in names
    assert names & _HEAVY_DISTRIBUTIONS == set()
    assert {
        "redis",
        "pydantic",
        "pydantic-settings",
        "phonenumbers",
        "structlog",
        "platformdirs",
    } <= names


def test_importing_smsrelay_loads_no_worker_or_admin_module(light_venv: Path) -> None:
    done = _run(str(light_venv / "bin" / "python"), "-c", _IMPORTS, cwd=light_venv)
    assert json.loads(done.stdout) == []


@pytest.mark.parametrize("command", sorted(_COMMAND_EXTRA))
def test_a_command_of_an_extra_says_which_extra_it_needs(light_venv: Path, command: str) -> None:
    args = {"dlq": ["dlq", "list"]}.get(command, [command])
    done = _smsrelay(light_venv, *args)
    extra = _COMMAND_EXTRA[command]
    assert done.returncode == 2
    assert done.stderr == (
        f"smsrelay {command}: needs the {extra} extra: pip install 'smsrelay[{extra}]'\n"
    )
    assert done.stdout == ""


def test_the_producers_commands_work_on_the_light_install(
    light_venv: Path, redis_url: str, namespace: str, tmp_path: Path
) -> None:
    env = {
        "SMSRELAY_REDIS_URL": redis_url,
        "SMSRELAY_NAMESPACE": namespace,
        "SMSRELAY_SPOOL_DIR": str(tmp_path / "spool"),
        # An app's environment often names the database too: the producer must not need psycopg
        "SMSRELAY_DATABASE_URL": "postgresql://app@db.internal:5432/app",
    }
    schema = _smsrelay(light_venv, "schema", **env)
    assert schema.returncode == 0 and json.loads(schema.stdout)["type"] == "object"
    published = _smsrelay(light_venv, "publish", "--to", "+14155552671", "--body", "hi", **env)
    assert published.returncode == 0, published.stderr
    assert len(published.stdout.strip()) == 36 and published.stderr == ""
    status = _smsrelay(light_venv, "status", "--json", **env)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["now"]["backlog"] == 1
    flushed = _smsrelay(light_venv, "spool-flush", **env)
    assert flushed.returncode == 0, flushed.stdout + flushed.stderr
    assert flushed.stdout.startswith("published 0 spooled request(s) into namespace")


def test_the_light_install_is_really_the_one_under_test(light_venv: Path) -> None:
    # (the checkout's package must not leak in: the venv's copy answers)
    done = _run(
        str(light_venv / "bin" / "python"), "-c", "import smsrelay; print(smsrelay.__file__)",
        cwd=light_venv,
    )  # fmt: skip
    assert str(light_venv) in done.stdout and str(ROOT) not in done.stdout
    assert sys.prefix != str(light_venv)
