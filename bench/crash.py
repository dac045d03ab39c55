"""Crash recovery: SIGKILL a worker with SMS in flight; how long until another worker sends them?

1. Queue K messages; the fake Twilio holds every request (latency one hour), so the first
   worker (the victim) ends up with all K in flight and none answered.
2. Start a second worker (the survivor); let it settle (it has nothing to take).
3. Set the fake's latency to 0, SIGKILL the victim's whole process group: t0.
4. Recovery = the time from t0 until the fake has accepted every one of the K messages again
   (from the survivor): the last one counts. Bounded by a cap; "not within the cap" otherwise.

Scenarios run in parallel threads (each with its own fake Twilio and Redis keys): they mostly
wait, so the cap bounds the whole phase.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import systems
from bench.common import FakeTwilioProcess, body, kill_group, run_tag, stop, wait_until

HOLD_MS = 3_600_000.0


@dataclass(frozen=True)
class Scenario:
    system: str
    setting: str  # what the report shows: the recovery knob and its value
    overrides: tuple[tuple[str, str], ...] = ()
    default: bool = True  # the system's own default for that knob
    expected: str = ""  # what the system's mechanism predicts


@dataclass
class CrashResult:
    system: str
    setting: str
    default: bool
    expected: str
    in_flight: int
    recovered: int = 0
    recovery_s: float | None = None  # None: not within the cap
    first_s: float | None = None
    # How long before the kill the victim had sent the last of them (its clock for idle /
    # visibility / in-progress timers started about then): recovery counts from the kill.
    held_before_kill_s: float = 0.0
    cap_s: float = 0.0
    duplicates: int = 0
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def scenarios(preset: str) -> list[Scenario]:
    """The full run measures each peer at its defaults where that fits in the cap."""
    out = [
        Scenario(
            "smsrelay",
            "SMSRELAY_CLAIM_IDLE_SECONDS=30 (default)",
            expected="claim idle 30 s (counted from the last heartbeat) + claim scan "
            "interval (min(idle/10, 1 s))",
        ),
        Scenario(
            "smsrelay",
            "SMSRELAY_CLAIM_IDLE_SECONDS=5",
            (("SMSRELAY_CLAIM_IDLE_SECONDS", "5"),),
            default=False,
            expected="claim idle 5 s + scan interval 0.5 s",
        ),
        Scenario(
            "dramatiq",
            "heartbeat_timeout=60 s, maintenance_chance=1000/1e6 (defaults)",
            expected="60 s, then the first maintenance pass on that queue: 0.1 % of "
            "broker calls, and an idle worker fetches that queue ~0.5 times/s "
            "(measured), so ~33 min on average, geometric",
        ),
        Scenario(
            "celery",
            "visibility_timeout=30 s (default 3600 s)",
            (("BENCH_CELERY_VISIBILITY_TIMEOUT", "30"),),
            default=False,
            expected="visibility timeout + up to 100 s (unacked messages are restored "
            "every 10th 10-s tick); at the default: 3600-3700 s",
        ),
        Scenario(
            "arq",
            "job_timeout=300 s (default)",
            expected="job_timeout + 10 s (the in-progress mark expires), then poll 0.5 s",
        ),
    ]
    if preset == "full":
        return out
    if preset == "smoke":
        return [
            Scenario(
                "smsrelay",
                "SMSRELAY_CLAIM_IDLE_SECONDS=2",
                (("SMSRELAY_CLAIM_IDLE_SECONDS", "2"),),
                default=False,
                expected="claim idle 2 s + scan interval 0.5 s",
            )
        ]
    return [
        out[1],
        Scenario("dramatiq", "heartbeat_timeout=60 s (default)", expected=out[2].expected),
        Scenario(
            "celery",
            "visibility_timeout=5 s (default 3600 s)",
            (("BENCH_CELERY_VISIBILITY_TIMEOUT", "5"),),
            default=False,
            expected="visibility timeout + up to 100 s",
        ),
        Scenario(
            "arq",
            "job_timeout=5 s (default 300 s)",
            (("BENCH_ARQ_JOB_TIMEOUT", "5"),),
            default=False,
            expected="job_timeout + 10 s, then poll 0.5 s",
        ),
    ]


class Countdown:
    """Set `event` once `count` scenarios have each called `done()` (once each)."""

    def __init__(self, count: int, event: threading.Event) -> None:
        self._left, self._event, self._lock = count, event, threading.Lock()
        if count <= 0:
            event.set()

    def done(self) -> None:
        with self._lock:
            self._left -= 1
            if self._left <= 0:
                self._event.set()


def run_one(
    scenario: Scenario,
    in_flight: int,
    cap_s: float,
    settle_s: float = 3.0,
    concurrency: int = 64,
    log_dir: Path | None = None,
    killed: Countdown | None = None,
) -> CrashResult:
    """One scenario; `killed.done()` once its victim is dead (or its set-up failed)."""
    signalled: list[bool] = []

    def mark_killed() -> None:
        if killed is not None and not signalled:
            signalled.append(True)
            killed.done()

    try:
        return _run_one(scenario, in_flight, cap_s, settle_s, concurrency, log_dir, mark_killed)
    finally:
        mark_killed()


def _run_one(
    scenario: Scenario,
    in_flight: int,
    cap_s: float,
    settle_s: float,
    concurrency: int,
    log_dir: Path | None,
    mark_killed: Callable[[], None],
) -> CrashResult:
    result = CrashResult(
        scenario.system,
        scenario.setting,
        scenario.default,
        scenario.expected,
        in_flight,
        cap_s=cap_s,
    )
    system = systems.make(scenario.system, run_tag(), dict(scenario.overrides))
    victim = survivor = None
    try:
        with FakeTwilioProcess(HOLD_MS) as fake:
            system.enqueue(0, in_flight)

            def log(role: str) -> Path | None:
                return (
                    log_dir / f"crash-{scenario.system}-{system.tag}-{role}.log"
                    if log_dir
                    else None
                )

            victim = system.start_worker(fake.url, concurrency, log("victim"))
            if not wait_until(lambda: len(fake.requests()) >= in_flight, 60, 0.1):
                result.error = f"the victim had {len(fake.requests())} of {in_flight} in flight"
                return result
            survivor = system.start_worker(fake.url, concurrency, log("survivor"))
            time.sleep(settle_s)
            if survivor.poll() is not None:
                result.error = f"the survivor exited with {survivor.returncode}"
                return result
            fake.set_latency(0)
            held_since = max(float(r["at"]) for r in fake.requests())
            t0 = time.time()
            result.held_before_kill_s = round(t0 - held_since, 2)
            kill_group(victim)
            victim.wait(timeout=10)
            mark_killed()
            expected = {body(system.tag, i) for i in range(in_flight)}
            deadline = time.monotonic() + cap_s
            accepted: dict[str, float] = {}
            while time.monotonic() < deadline:
                accepted = {}
                for message in fake.messages():
                    text = str(message["body"])
                    if text in expected:
                        accepted.setdefault(text, float(message["received_at"]))
                if len(accepted) >= in_flight:
                    break
                time.sleep(0.1)
            result.recovered = len(accepted)
            if accepted:
                result.first_s = round(min(accepted.values()) - t0, 2)
            if len(accepted) >= in_flight:
                result.recovery_s = round(max(accepted.values()) - t0, 2)
            result.duplicates = max(0, len(fake.messages()) - len(accepted))
    except Exception as exc:  # reported, never fatal to the run
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        for proc in (victim, survivor):
            if proc is not None:
                stop(proc)
        system.cleanup()
    return result


def run_all(
    preset: str,
    in_flight: int,
    cap_s: float,
    log_dir: Path | None = None,
    only: tuple[str, ...] = systems.SYSTEMS,
    settle_s: float = 3.0,
    waiting: threading.Event | None = None,
) -> list[CrashResult]:
    """Every scenario in parallel; `waiting` is set once all victims are dead (from then on the
    scenarios only wait, and other measurements may run beside them)."""
    chosen = [s for s in scenarios(preset) if s.system in only]
    killed = Countdown(len(chosen), waiting or threading.Event())
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(len(chosen), 1)) as pool:
            futures = [
                pool.submit(run_one, s, in_flight, cap_s, settle_s, log_dir=log_dir, killed=killed)
                for s in chosen
            ]
            return [f.result() for f in futures]
    finally:
        if waiting is not None:
            waiting.set()
