"""`smsrelay worker`: the Worker with its metrics endpoint, signal handling and the mirror."""

from __future__ import annotations

from prometheus_client import start_http_server

from smsrelay.consumers.metrics import WorkerMetrics
from smsrelay.consumers.worker import Upkeep, Worker
from smsrelay.errors import ConfigError
from smsrelay.logging import get_logger
from smsrelay.settings import Settings

log = get_logger("smsrelay.worker")


def start_metrics_server(settings: Settings, metrics: WorkerMetrics) -> None:
    if settings.metrics_port == 0:
        return
    try:
        start_http_server(settings.metrics_port, addr="0.0.0.0", registry=metrics.registry)
    except OSError as exc:
        raise ConfigError(f"SMSRELAY_METRICS_PORT: cannot listen on port "
                          f"{settings.metrics_port} ({exc.strerror}); pick another or 0 for none"
                          ) from None
    log.info("worker.metrics_listening", port=settings.metrics_port)


def mirror_upkeep(settings: Settings) -> list[Upkeep]:
    """The dead-letter mirror runs inside every worker (its consumer group shares the work)."""
    from smsrelay.store.mirror import run_mirror

    return [lambda stop: run_mirror(settings, stop)]


async def run_worker(settings: Settings, *, mirror: bool = True) -> int:
    metrics = WorkerMetrics()
    start_metrics_server(settings, metrics)
    worker = Worker(settings, metrics=metrics,
                    upkeep=mirror_upkeep(settings) if mirror else ())
    worker.install_signal_handlers()
    await worker.run()
    return 0
