"""The worker's Prometheus metrics, on an explicit registry (one per worker process)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)

from smsrelay.outage import Outages
from smsrelay.schemas.dead_letter import DeadLetterReason
from smsrelay.schemas.entry import PRIORITIES

# `_created` series double every counter's cardinality and no dashboard reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]

SEND_OUTCOMES = ("success", "retryable_error", "permanent_error")
_SEND_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_E2E_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)


@dataclass
class WorkerMetrics:
    registry: CollectorRegistry = field(
        default_factory=lambda: CollectorRegistry(auto_describe=True)
    )

    def __post_init__(self) -> None:
        r = self.registry
        self.send_attempts = Counter(
            "smsrelay_send_attempts", "Provider calls, by outcome.", ["outcome"], registry=r
        )
        for outcome in SEND_OUTCOMES:
            self.send_attempts.labels(outcome=outcome)
        self.messages_sent = Counter(
            "smsrelay_messages_sent", "Messages the provider accepted.", registry=r
        )
        self.rate_limited = Counter(
            "smsrelay_messages_rate_limited",
            "Deliveries stopped by the per-phone rate limit (dead-lettered or deferred).",
            registry=r,
        )
        self.dead_lettered = Counter(
            "smsrelay_messages_dead_lettered",
            "Messages this worker moved to the dead-letter stream, by reason.",
            ["reason"],
            registry=r,
        )
        for reason in DeadLetterReason:  # every series exists from the start, so rate() works
            self.dead_lettered.labels(reason=reason.value)
        self.send_duration = Histogram(
            "smsrelay_send_duration_seconds",
            "Duration of one provider call.",
            buckets=_SEND_BUCKETS,
            registry=r,
        )
        self.end_to_end = Histogram(
            "smsrelay_end_to_end_seconds",
            "From publish to the provider's acceptance, by lane.",
            ["priority"],
            buckets=_E2E_BUCKETS,
            registry=r,
        )
        for priority in PRIORITIES:
            self.end_to_end.labels(priority=priority)
        self.redis_writes_refused = Gauge(
            "smsrelay_redis_writes_refused",
            "1 while Redis refuses this worker's writes (OOM "
            "with maxmemory reached, READONLY, MISCONF): nothing is sent meanwhile.",
            registry=r,
        )

        self.breaker_open = Gauge(
            "smsrelay_provider_breaker_open",
            "1 while the fleet's provider breaker is open (as this worker last saw it).",
            registry=r,
        )
        self.breaker_opened = Counter(
            "smsrelay_provider_breaker_opened",
            "Times a systemic failure of this worker opened the fleet's provider breaker.",
            registry=r,
        )
        self.send_rate_waits = Counter(
            "smsrelay_send_rate_waits",
            "Times this worker waited for the fleet's send budget (SMSRELAY_SEND_RATE).",
            registry=r,
        )
        self.found_at_provider = Counter(
            "smsrelay_messages_found_at_provider",
            "Messages whose attempt had no known outcome and that the provider turned out to "
            "have (recorded as sent, not sent again).",
            registry=r,
        )

    def watch(self, outages: Outages) -> None:
        """Report the outages this process notes, at scrape time."""
        self.redis_writes_refused.set_function(lambda: 1.0 if outages.redis_writes.down else 0.0)
