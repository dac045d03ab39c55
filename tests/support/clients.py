"""The tests' own sync Redis clients, each closed when its test ends.

redis-py keeps a sync client's connection pool in a reference cycle, so a client a test drops
is freed by the cycle collector, which may finalise the socket before the connection that
would close it. The socket then reports itself unclosed, as an unraisable warning in whatever
test runs at that moment (a CI run failed so, in a test that had leaked nothing). Clients made
here are closed by the autouse fixture `_close_test_clients` (tests/conftest.py); closing is
harmless for one still in use: redis-py connects again on its next command.
"""

from __future__ import annotations

from typing import Any

import redis

_OPEN: list[redis.Redis] = []


def track(client: redis.Redis) -> redis.Redis:
    """Close `client` when the running test ends."""
    _OPEN.append(client)
    return client


def redis_client(url: str, **kwargs: Any) -> redis.Redis:
    """`redis.Redis.from_url(url, **kwargs)`, closed when the running test ends."""
    return track(redis.Redis.from_url(url, **kwargs))


def close_test_clients() -> None:
    while _OPEN:
        _OPEN.pop().close()
