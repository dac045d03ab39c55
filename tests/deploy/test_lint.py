"""deploy/: YAML linted (yamllint), the Dockerfile linted (hadolint) and checked for its shape."""

from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path

from tests.deploy.support import (
    DEPLOY,
    DOCKERFILE,
    REPO,
    cli_parser,
    cli_rejects,
    output,
    run,
    unknown_settings,
)

YAMLLINT_CONFIG = DEPLOY / ".yamllint.yaml"


def test_yamllint_deploy() -> None:
    result = run("yamllint", "--strict", "-f", "parsable", "-c", str(YAMLLINT_CONFIG), str(DEPLOY))
    assert result.returncode == 0, output(result)


def test_yamllint_can_fail(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("a: 1\na: 2\nb:   [1,2]\n")
    result = run("yamllint", "-f", "parsable", "-c", str(YAMLLINT_CONFIG), str(tmp_path))
    assert result.returncode != 0 and "key-duplicates" in result.stdout, output(result)


def test_hadolint_dockerfile() -> None:
    result = run("hadolint", "--no-color", str(DOCKERFILE))
    assert result.returncode == 0, output(result)


def test_hadolint_can_fail(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM python\nRUN pip install uv\nUSER root\n")
    result = run("hadolint", "--no-color", str(tmp_path / "Dockerfile"))
    assert result.returncode != 0 and "DL3006" in result.stdout, output(result)


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def test_dockerfile_shape() -> None:
    steps = _instructions()
    froms = [args for word, args in steps if word == "FROM"]
    assert len(froms) >= 2, "multi-stage: a build stage and a runtime stage"
    args = dict(a.split("=", 1) for w, a in steps if w == "ARG" and "=" in a)
    bases = {re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], f.split()[0]) for f in froms}
    assert all(re.fullmatch(r"python:3\.11-slim(-\w+)?", b) for b in bases), bases
    runs = " ".join(a for w, a in steps if w == "RUN")
    assert re.search(r"\buv sync --frozen --no-dev\b", runs), "install from uv.lock"
    assert re.search(r"pip install --no-cache-dir uv==\d", runs), "uv pinned from PyPI"
    users = [a for w, a in steps if w == "USER"]
    assert users and not users[-1].startswith(("root", "0")), "the runtime user is not root"
    assert steps[-1] == ("CMD", '["worker"]') or ("CMD", '["worker"]') in steps
    (entrypoint,) = [a for w, a in steps if w == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["smsrelay"]
    assert any(w == "HEALTHCHECK" and "CMD" in a for w, a in steps)
    copied = " ".join(a for w, a in steps if w == "COPY")
    assert "uv.lock" in copied and "pyproject.toml" in copied


def test_dockerfile_command_and_variables_are_known() -> None:
    steps = _instructions()
    (cmd,) = [a for w, a in steps if w == "CMD"]
    assert cli_rejects(cli_parser(), json.loads(cmd)) is None
    env_args = " ".join(a for w, a in steps if w == "ENV")
    names = [token.split("=", 1)[0] for token in shlex.split(env_args) if "=" in token]
    assert "SMSRELAY_SPOOL_DIR" in names
    assert not unknown_settings(names), unknown_settings(names)


def test_check_deploy_script_is_valid_bash() -> None:
    script = REPO / "scripts" / "check-deploy"
    assert os.access(script, os.X_OK), "scripts/check-deploy must be executable"
    result = run("bash", "-n", str(script))
    assert result.returncode == 0, output(result)
