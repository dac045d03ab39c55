"""Backoff between provider attempts: base * 2^(n-1), capped, scaled by jitter."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from smsrelay.settings import Settings


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 3
    base_s: float = 1.0
    max_s: float = 60.0
    jitter: float = 0.1

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(
            settings.max_attempts,
            settings.backoff_base_seconds,
            settings.backoff_max_seconds,
            settings.backoff_jitter,
        )

    def delay_s(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """The wait after failed attempt number `attempt` (1-based) before the next one."""
        nominal: float = min(self.base_s * 2.0 ** (attempt - 1), self.max_s)
        return nominal * (1 - self.jitter + 2 * self.jitter * rand())

    def may_retry(self, attempts_done: int) -> bool:
        return attempts_done < self.max_attempts
