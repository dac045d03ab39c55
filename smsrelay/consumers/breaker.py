"""A worker's side of the fleet's provider breaker (rule 15): what it sees, what it reports.

Systemic failures (network, timeout, 5xx, 429, authentication) open a breaker shared by every
worker of the namespace after SMSRELAY_BREAKER_THRESHOLD in a row; failures about one message
neither count nor reset. While it is open no worker reads or claims (entries wait in Redis),
one probe goes after the cooldown, and a failure costs no attempt: the messages of the run
that opened it get theirs back. Opening and closing are each logged once, by the worker
whose failure opened it and the one whose probe closed it.
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial

from smsrelay.consumers.metrics import WorkerMetrics
from smsrelay.errors import ProviderError
from smsrelay.logging import get_logger
from smsrelay.outage import Outages, until_done
from smsrelay.streams.fleet import BreakerView, FailureVerdict, Fleet, failure_ref, parse_ref
from smsrelay.streams.queue import Queue

log = get_logger("smsrelay.provider")


class ProviderBreaker:
    def __init__(
        self, fleet: Fleet, queue: Queue, owner: str, metrics: WorkerMetrics, outages: Outages
    ) -> None:
        self.fleet = fleet
        self.queue = queue
        self.owner = owner
        self.metrics = metrics
        self.outages = outages
        self.view = BreakerView()
        metrics.breaker_open.set_function(lambda: 1.0 if self.view.open else 0.0)

    @property
    def enabled(self) -> bool:
        return self.fleet.breaker_enabled

    async def refresh(self) -> BreakerView:
        return self.observe(await self.fleet.view())

    def observe(self, view: BreakerView) -> BreakerView:
        """A fresh view of the fleet's breaker (read by the watcher or with a batch)."""
        self.view = view
        return view

    async def failed(self, shard: int, message_id: str, exc: ProviderError) -> FailureVerdict:
        """Report a systemic failure; say whether it is part of an outage (no attempt lost)."""
        ref = failure_ref(shard, message_id)
        verdict = await until_done(
            lambda: self.fleet.failure(self.owner, ref, str(exc), exc.retry_after_s), self.outages
        )
        if verdict.state == "opened":
            self.metrics.breaker_opened.inc()
            self.view = BreakerView("open", until_probe_ms=self.fleet.cooldown_ms)
            log.error(
                "provider.breaker_opened",
                failures=len(verdict.run),
                error=str(exc),
                cooldown_seconds=self.fleet.cooldown_ms / 1000,
                effect="workers stop sending; one probe goes after the cooldown; no message "
                "loses an attempt or is dead-lettered because of the outage",
            )
            await self._give_attempts_back(verdict.run, ref)
        elif verdict.outage and not self.view.open:
            self.view = BreakerView("open")
        elif verdict.state == "closed":
            # This worker's next success ends the run at once, not at the next refresh.
            self.view = replace(self.view, failures=verdict.failures)
        return verdict

    async def succeeded(self, probe: bool) -> None:
        """Report a success when it matters: the probe, or the end of a run of failures."""
        if not (probe or self.view.failures > 0 or self.view.open):
            return
        outcome = await until_done(lambda: self.fleet.success(self.owner), self.outages)
        if outcome == "closed_now":
            self.view = BreakerView()
            log.warning("provider.breaker_closed", effect="workers send again")
        elif outcome == "reset":
            self.view = BreakerView(failures=0)

    async def _give_attempts_back(self, run: tuple[str, ...], own: str) -> None:
        """The failures before this one in the run that opened the breaker were the outage's
        too: their messages get their attempt back (this message's goes back with its delay)."""
        others = list(run)
        if own in others:
            others.remove(own)
        for ref in others:
            parsed = parse_ref(ref)
            if parsed is not None:
                await until_done(partial(self.queue.refund, *parsed), self.outages)
