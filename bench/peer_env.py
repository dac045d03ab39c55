"""The peers' own virtual environment: Dramatiq, Celery and arq run from bench/peers/venv.

arq caps redis-py below 6; the product needs a newer one (Redis Cluster pipelines), so the
peers are not in the product's lock. `peer_python()` makes the environment on first use from
the pinned bench/peers/requirements.txt (uv when it can be found, else venv + pip) and makes
it again when the pins change. Everything that imports a peer runs in that interpreter: the
peers' workers, and the set-up and publish timings of `bench.peer_ops`.

    .venv/bin/python -m bench.peer_env        # make (or check) the environment, print its python
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from bench.common import ROOT

HERE = ROOT / "bench" / "peers"
REQUIREMENTS = HERE / "requirements.txt"
VENV = Path(os.environ.get("BENCH_PEERS_VENV", str(HERE / "venv")))
_STAMP = ".requirements.sha256"
_lock = threading.Lock()
_INSTALL_TIMEOUT_S = 600


class PeersUnavailable(RuntimeError):
    """The peers' environment could not be made (no network, no uv or pip): one line why."""


def _python_in(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _digest() -> str:
    return hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()


def is_ready(venv: Path = VENV) -> bool:
    """The environment exists and was made from the current pins."""
    stamp = venv / _STAMP
    return _python_in(venv).exists() and stamp.exists() and stamp.read_text().strip() == _digest()


def _uv() -> list[str] | None:
    found = shutil.which("uv")
    if found:
        return [found]
    for python in (sys.executable, shutil.which("python3")):
        if (
            python
            and subprocess.run(
                [python, "-m", "uv", "--version"], capture_output=True, check=False
            ).returncode
            == 0
        ):
            return [python, "-m", "uv"]
    return None


def _run(cmd: list[str]) -> None:
    done = subprocess.run(
        cmd, capture_output=True, text=True, timeout=_INSTALL_TIMEOUT_S, check=False
    )
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise PeersUnavailable(f"`{' '.join(cmd[:4])} ...` failed: {tail[0]}")


def _make(venv: Path) -> None:
    shutil.rmtree(venv, ignore_errors=True)
    python = str(_python_in(venv))
    uv = _uv()
    base = f"{sys.version_info.major}.{sys.version_info.minor}"
    if uv is not None:
        _run([*uv, "venv", "--quiet", "--python", sys.executable, str(venv)])
        _run([*uv, "pip", "install", "--quiet", "--python", python, "-r", str(REQUIREMENTS)])
    else:
        _run([sys.executable, "-m", "venv", str(venv)])
        _run([python, "-m", "pip", "install", "--quiet", "-r", str(REQUIREMENTS)])
    (venv / _STAMP).write_text(_digest() + "\n")
    print(f"[bench] peers installed in {venv} (Python {base})", flush=True)


def peer_python(install: bool = True, venv: Path = VENV) -> str:
    """The peers' interpreter, making the environment first when `install` (else raising
    PeersUnavailable when it is not there)."""
    with _lock:
        if not is_ready(venv):
            if not install:
                raise PeersUnavailable(
                    f"the peers' environment {venv} is not made (python -m bench.peer_env)"
                )
            _make(venv)
        return str(_python_in(venv))


def peer_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a peer process runs with: `bench` importable, nothing of smsrelay's."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME")}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra or {})
    return env


def run_op(*args: str, timeout_s: float = 900) -> Any:
    """Run `python -m bench.peer_ops ARGS` in the peers' environment; its JSON answer."""
    done = subprocess.run(
        [peer_python(), "-m", "bench.peer_ops", *args],
        cwd=ROOT,
        env=peer_env(),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines() or ["no output"]
        raise RuntimeError(f"bench.peer_ops {args[0]} failed: {lines[-1]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    try:
        print(peer_python())
    except PeersUnavailable as exc:
        print(f"peers unavailable: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
