"""The fuzz suite runs real processes too: it borrows the fault suite's fixtures."""

from __future__ import annotations

from tests.faults.conftest import procs, pytest_runtest_makereport, pytest_terminal_summary

__all__ = ["procs", "pytest_runtest_makereport", "pytest_terminal_summary"]
