"""Servers of a test's own, from the binaries on the machine: a redis-server that may be
killed, paused or filled, and a Postgres cluster that may be stopped. Loopback, free ports, a
temporary directory removed with them. A missing binary fails the test under CI=true and
skips it elsewhere, saying how to install it (`require_tool`)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.support.clients import redis_client
from tests.support.wait import wait_for

LOOPBACK = "127.0.0.1"
PG_BIN = Path(os.environ.get("SMSRELAY_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))


def require_tool(path_or_name: str, install: str) -> str:
    """The tool's path; without it the test fails under CI=true (a missing install step
    must not pass unseen) and is skipped with the reason elsewhere."""
    found = shutil.which(path_or_name) or (
        path_or_name if os.path.isabs(path_or_name) and os.path.exists(path_or_name) else None
    )
    if found:
        return found
    message = f"{path_or_name} is not installed ({install})"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


# -- a private Redis -----------------------------------------------------------------------------


class PrivateRedis:
    """A redis-server of the test's own (AOF on, fsync before every reply) that may be killed.

    `kill()` is SIGKILL; `start()` again reuses the port and the directory, so the server
    loads its append-only file as a crashed production server would.
    """

    def __init__(
        self, directory: Path, port: int | None = None, *, appendonly: bool = True
    ) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.appendonly = appendonly
        self.popen: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def client(self, **kwargs: Any) -> redis.Redis:
        return redis_client(self.url, socket_timeout=5, socket_connect_timeout=2, **kwargs)

    def start(self) -> None:
        assert self.popen is None or self.popen.poll() is not None, "already running"
        self.directory.mkdir(parents=True, exist_ok=True)
        argv = [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            LOOPBACK,
            "--dir",
            str(self.directory),
            "--save",
            "",
            "--daemonize",
            "no",
            "--logfile",
            str(self.directory / "redis.log"),
        ]
        if self.appendonly:
            argv += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            argv += ["--appendonly", "no"]
        self.popen = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        self.starts += 1
        wait_for(self._ready, 20, f"redis-server on port {self.port}")

    def _ready(self) -> bool:
        assert self.popen is not None
        if self.popen.poll() is not None:
            log = (self.directory / "redis.log").read_text(errors="replace")[-2000:]
            raise AssertionError(f"redis-server exited with {self.popen.returncode}:\n{log}")
        client = self.client()
        try:
            return bool(client.ping())
        except redis.RedisError:  # refused, or still loading the AOF
            return False
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final fsync; what was acknowledged is on disk (always)."""
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(timeout=10)

    def pause(self) -> None:
        """SIGSTOP: the port accepts connections, nothing answers (a hung or partitioned
        server)."""
        assert self.popen is not None
        self.popen.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.popen is not None
        self.popen.send_signal(signal.SIGCONT)

    def close(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGCONT)
        self.kill()
        shutil.rmtree(self.directory, ignore_errors=True)


# -- a throwaway Postgres ------------------------------------------------------------------------


def _as_postgres(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["runuser", "-u", "postgres", "--", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class ThrowawayPostgres:
    """A Postgres 15 cluster of the test's own, run as user postgres on a free loopback port.

    `stop()` is `pg_ctl stop -m immediate` (no checkpoint: a crash); `start()` recovers it.
    """

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="smsrelay-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.log = self.root / "postgres.log"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@{LOOPBACK}:{self.port}/postgres"

    def init(self) -> None:
        shutil.chown(self.root, user="postgres", group="postgres")
        done = _as_postgres(
            str(PG_BIN / "initdb"),
            "-D",
            str(self.data),
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-sync",
        )
        assert done.returncode == 0, done.stdout + done.stderr

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses={LOOPBACK} "
            "-c fsync=off -c full_page_writes=off"
        )
        done = _as_postgres(
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-o",
            options,
            "-w",
            "-t",
            "30",
            "start",
        )
        assert done.returncode == 0, done.stdout + done.stderr + self.log_tail()

    def stop(self, mode: str = "immediate") -> None:
        _as_postgres(
            str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop"
        )

    def running(self) -> bool:
        done = _as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "status")
        return done.returncode == 0

    def log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-2000:]
        except (FileNotFoundError, PermissionError):
            return ""

    def close(self) -> None:
        if self.data.exists() and self.running():
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
