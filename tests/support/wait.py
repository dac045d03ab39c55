"""Waiting for a condition, in a sync test or an async one (never a fixed sleep)."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable


def wait_for(
    predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.05
) -> float:
    """Poll until `predicate()` is true; fail naming `what` after `timeout` seconds.

    Returns the seconds it took (a measured figure for some tests).
    """
    started = time.monotonic()
    deadline = started + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)
    return time.monotonic() - started


async def wait_until(
    predicate: Callable[[], bool | Awaitable[bool]],
    timeout: float = 10.0,
    interval: float = 0.02,
    what: str = "condition",
) -> float:
    """`wait_for` for async tests: the predicate may be a plain or an async function."""
    started = time.monotonic()
    deadline = started + timeout
    while True:
        done = predicate()
        if inspect.isawaitable(done):
            done = await done
        if done:
            return time.monotonic() - started
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(interval)
