"""Remembering that Redis just failed, so a request pays a timeout once per outage.

Without it a hung Redis (a paused server, a black-holed network) costs every publish the
full timeout. After a timeout or a refused connection the gate closes for `HOLD_S`: publishes
spool at once, without trying Redis, while the producer's background flusher probes Redis
and opens the gate again as soon as it answers. Each failed probe closes the gate for
another `HOLD_S`; a process whose prober is gone (a forked child: threads do not survive a
fork) tries Redis itself once the hold runs out. So the gate is bounded: at most `HOLD_S`
after the last failure anyone saw.

Thread- and fork-safe without a lock: the state is one immutable tuple, replaced whole (an
atomic store under the GIL; a lock held by another thread at fork time would deadlock the
child), and it records the process that wrote it, so a child starts with an open gate.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

# How long a failure keeps the gate closed; the prober renews it while Redis stays away.
HOLD_S = 5.0
# The prober's pause between probes: from the first to the last, doubling.
PROBE_FIRST_S = 0.25
PROBE_MAX_S = 2.0


class RedisGate:
    def __init__(self, hold_s: float = HOLD_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.hold_s = hold_s
        self._clock = clock
        # (closed until, on the clock; why; the process that closed it)
        self._state: tuple[float, str, int] = (0.0, "", 0)

    def closed(self) -> str | None:
        """Why publishes should spool without trying Redis now; None when they may try."""
        until, reason, pid = self._state
        if pid != os.getpid() or self._clock() >= until:
            return None
        return reason

    def fail(self, reason: str) -> None:
        """Redis timed out or refused: close the gate for another hold."""
        self._state = (self._clock() + self.hold_s, reason, os.getpid())

    def open(self) -> None:
        """Redis answered."""
        self._state = (0.0, "", 0)


__all__ = ["HOLD_S", "PROBE_FIRST_S", "PROBE_MAX_S", "RedisGate"]
