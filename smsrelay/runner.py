"""`smsrelay worker`: one worker process — the Worker, the dead-letter mirror beside it, the
metrics endpoint and signal handling, sharing one set of outage logs.

It lives above the consumers and the store so that neither needs to know the other.
"""

from __future__ import annotations

import asyncio

from prometheus_client import start_http_server

from smsrelay.consumers.metrics import WorkerMetrics
from smsrelay.consumers.worker import Upkeep, Worker
from smsrelay.errors import ConfigError
from smsrelay.logging import get_logger
from smsrelay.outage import Outages
from smsrelay.settings import Settings
from smsrelay.store.mirror import run_mirror

log = get_logger("smsrelay.worker")


def start_metrics_server(settings: Settings, metrics: WorkerMetrics) -> None:
    if settings.metrics_port == 0:
        return
    try:
        start_http_server(
            settings.metrics_port, addr=settings.metrics_host, registry=metrics.registry
        )
    except OSError as exc:
        raise ConfigError(
            f"SMSRELAY_METRICS_PORT: cannot listen on {settings.metrics_host}:"
            f"{settings.metrics_port} ({exc.strerror}); pick another port, "
            "another SMSRELAY_METRICS_HOST, or 0 for none"
        ) from None
    log.info("worker.metrics_listening", host=settings.metrics_host, port=settings.metrics_port)


def mirror_upkeep(settings: Settings, outages: Outages) -> list[Upkeep]:
    """The dead-letter mirror runs inside every worker (its consumer group shares the work)."""

    async def mirror(stop: asyncio.Event) -> None:
        # An undelivered message's record needs its body, which only Twilio still has.
        from smsrelay.consumers.providers.twilio import TwilioProvider

        provider: TwilioProvider | None = None
        try:
            provider = TwilioProvider(settings, pool_size=2)
        except ConfigError:
            provider = None  # (no Twilio settings: records of undelivered SMS lack the body)
        try:
            await run_mirror(settings, stop, outages, provider.fetch_body if provider else None)
        finally:
            if provider is not None:
                await provider.aclose()

    return [mirror]


def worker_process(
    settings: Settings, *, mirror: bool = True, metrics: WorkerMetrics | None = None
) -> Worker:
    """A Worker with the upkeep of a worker process (the mirror), one Outages for all."""
    outages = Outages()
    return Worker(
        settings,
        metrics=metrics,
        outages=outages,
        upkeep=mirror_upkeep(settings, outages) if mirror else (),
    )


async def run_worker(settings: Settings, *, mirror: bool = True) -> int:
    metrics = WorkerMetrics()
    start_metrics_server(settings, metrics)
    worker = worker_process(settings, mirror=mirror, metrics=metrics)
    worker.install_signal_handlers()
    await worker.run()
    return 0
