"""The Lua scripts, loaded once per client (sync or asyncio) and called by EVALSHA.

Each script lives in `lua/<name>.lua` with a KEYS/ARGV header. A script may start with
`-- @include other.lua` lines; the included file's text is put in its place, so shared
functions (the rate-limit window) are written once. redis-py's Script object sends EVALSHA
and falls back to EVAL when the server does not know the script (after a restart or a
failover).
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

_INCLUDE = "-- @include "
_PACKAGE = "smsrelay.streams.lua"


@cache
def source(name: str) -> str:
    text = resources.files(_PACKAGE).joinpath(name).read_text(encoding="utf-8")
    lines = []
    for line in text.splitlines():
        if line.startswith(_INCLUDE):
            lines.append(source(line.removeprefix(_INCLUDE).strip()))
        else:
            lines.append(line)
    return "\n".join(lines) + "\n"


class Scripts:
    """Every script registered on one Redis client."""

    NAMES = (
        "publish",
        "begin",
        "sent",
        "deadletter",
        "delay",
        "move_due",
        "release",
        "refund",
        "budget",
        "breaker",
        "read",
    )

    def __init__(self, client: Any) -> None:
        for name in self.NAMES:
            setattr(self, name, client.register_script(source(f"{name}.lua")))

    publish: Any
    begin: Any
    sent: Any
    deadletter: Any
    delay: Any
    move_due: Any
    release: Any
    refund: Any
    budget: Any
    breaker: Any
    read: Any
