"""The Lua scripts, kept in `.lua` files with a KEYS/ARGV header, loaded once per client.

A script may start with `-- @include other.lua` lines; the included file's text is put in its
place, so shared functions (the rate-limit window) are written once.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

_INCLUDE = "-- @include "


@cache
def source(name: str) -> str:
    text = resources.files(__package__).joinpath(name).read_text(encoding="utf-8")
    lines = []
    for line in text.splitlines():
        if line.startswith(_INCLUDE):
            lines.append(source(line.removeprefix(_INCLUDE).strip()))
        else:
            lines.append(line)
    return "\n".join(lines) + "\n"


class Scripts:
    """Every script registered on one Redis client (sync or asyncio); EVALSHA, EVAL on NOSCRIPT."""

    NAMES = ("publish", "ratelimit", "begin", "sent", "deadletter", "delay", "move_due")

    def __init__(self, client: Any) -> None:
        for name in self.NAMES:
            setattr(self, name, client.register_script(source(f"{name}.lua")))

    publish: Any
    ratelimit: Any
    begin: Any
    sent: Any
    deadletter: Any
    delay: Any
    move_due: Any
