"""A provider outage for every number: each Messages API request (create, fetch, list) gets the
outage's step instead of its number's script, for some seconds or until cleared.

JSON form (`POST /_fake/outage`): a step plus how long, e.g.

    {"status": 503, "code": 20503, "seconds": 5}
    {"status": 429, "code": 20429, "retry_after": 2}
    {"action": "drop"}                    (connections closed unanswered)
    {"action": "accept_drop"}             (every send accepted, every answer lost)
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from smsrelay.testing.fake_twilio_script import Step

DEFAULT_STEP = Step.error(503, 20503)


class Outage:
    """The current (or last) outage and the requests it answered."""

    def __init__(self) -> None:
        self.step: Step | None = None
        self._until: float | None = None  # time.monotonic(); None: until cleared
        self._started_at: float | None = None
        self._ended_at: float | None = None
        self.requests = 0

    def reset(self) -> None:
        self.step, self._until, self._started_at, self._ended_at = None, None, None, None
        self.requests = 0

    def start(self, step: Step = DEFAULT_STEP, seconds: float | None = None) -> None:
        if seconds is not None and seconds <= 0:
            raise ValueError("seconds must be > 0 (or absent: until cleared)")
        self.step = step
        self._until = None if seconds is None else time.monotonic() + seconds
        self._started_at, self._ended_at = time.time(), None
        self.requests = 0

    def end(self) -> None:
        if self.active:
            self._ended_at = time.time()
        self.step, self._until = None, None

    @property
    def active(self) -> bool:
        if self.step is None:
            return False
        if self._until is not None and time.monotonic() >= self._until:
            # It ran out: note when, for the record, and keep the count readable.
            self._ended_at = time.time() - (time.monotonic() - self._until)
            self.step, self._until = None, None
            return False
        return True

    def hit(self) -> Step | None:
        """The step for a request arriving now, counted; None when there is no outage."""
        if not self.active:
            return None
        self.requests += 1
        return self.step

    def to_json(self) -> dict[str, object]:
        active = self.active
        remaining = None
        if active and self._until is not None:
            remaining = max(0.0, self._until - time.monotonic())
        return {
            "active": active,
            "step": None if self.step is None else self.step.to_json(),
            "remaining_s": remaining,
            "requests": self.requests,
            "started_at": self._started_at,
            "ended_at": self._ended_at,
        }

    @staticmethod
    def parse(data: object) -> tuple[Step, float | None]:
        """Parse the body of `POST /_fake/outage` into (step, seconds or None)."""
        if data is None or data == {}:
            return DEFAULT_STEP, None
        if not isinstance(data, Mapping):
            raise ValueError('expected {"status": 503, "code": 20503, "seconds": 5} or similar')
        seconds = data.get("seconds")
        if seconds is not None and (
            not isinstance(seconds, int | float) or isinstance(seconds, bool) or seconds <= 0
        ):
            raise ValueError("seconds must be a number > 0 (or absent: until cleared)")
        raw = {k: v for k, v in data.items() if k != "seconds"}
        step = Step.parse(raw) if raw else DEFAULT_STEP
        if step.action == "accept" and step.delay_s == 0:
            raise ValueError("an outage needs an error, a drop, an accept_drop or a delay")
        return step, None if seconds is None else float(seconds)
