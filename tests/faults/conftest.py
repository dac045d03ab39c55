"""Fixtures of the fault suite: a process group, a private redis-server, a throwaway Postgres.

The shared Redis and Postgres of the test environment are never stopped or flushed: every
fault that needs a server to die gets a server of its own, on a free loopback port, in a
temporary directory removed afterwards.
"""

from __future__ import annotations

import json
import os
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from tests.faults.support import FIGURES, Processes


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, object, object]:
    report = yield
    if call.when == "call":
        item.stash[_FAILED] = bool(getattr(report, "failed", False))
    return report


_FAILED = pytest.StashKey[bool]()
_SUMMARY_DONE = pytest.StashKey[bool]()


@pytest.fixture
def procs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Processes]:
    """Children of this test; all killed at its end. On a failure their logs are printed."""
    group = Processes(tmp_path)
    try:
        yield group
    finally:
        group.kill_all()
        if request.node.stash.get(_FAILED, False) and group.children:
            print("\n" + group.describe())


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    # (tests/fuzz/conftest.py registers this hook too: print once)
    if not FIGURES or terminalreporter.config.stash.get(_SUMMARY_DONE, False):
        return
    terminalreporter.config.stash[_SUMMARY_DONE] = True
    terminalreporter.section("fault suite: measured figures")
    for figure in FIGURES:
        unit = f" {figure.unit}" if figure.unit else ""
        terminalreporter.write_line(f"{figure.test}: {figure.name} = {figure.value}{unit}")
    target = os.environ.get("SMSRELAY_FAULTS_FIGURES")
    if target:
        Path(target).write_text(json.dumps([f.__dict__ for f in FIGURES], indent=2) + "\n")
