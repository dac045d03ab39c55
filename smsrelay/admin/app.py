"""The admin HTTP service: `create_app(settings)` for ASGI servers and tests; `serve()`."""

from __future__ import annotations

import signal
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI
from starlette.types import ASGIApp

from smsrelay.admin.auth import FailedAuth
from smsrelay.admin.docs import install_docs
from smsrelay.admin.errors import GuardMiddleware, install_error_handlers
from smsrelay.admin.metrics import UnreadCache
from smsrelay.admin.receipts import twilio
from smsrelay.admin.routes import api, ops
from smsrelay.admin.security import SecurityHeaders
from smsrelay.admin.service import open_service
from smsrelay.admin.ui import install_console
from smsrelay.logging import get_logger
from smsrelay.settings import Settings
from smsrelay.store.db import DatabaseUnavailable, where

log = get_logger("smsrelay.admin")


class AdminApp(FastAPI):
    """FastAPI with the security headers outside every layer, so even a 500 carries them."""

    def build_middleware_stack(self) -> ASGIApp:
        return SecurityHeaders(super().build_middleware_stack())


def create_app(settings: Settings, *, failed_auth: FailedAuth | None = None) -> FastAPI:
    """Raises ConfigError without SMSRELAY_ADMIN_TOKEN(S): the API never runs unauthenticated.

    `failed_auth` holds the failed-authentication limits (by default from the settings).
    """
    credentials = settings.require_admin_credentials()
    if failed_auth is None:
        failed_auth = FailedAuth(max_failures=settings.admin_auth_max_failures)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The Twilio client must be built inside the running loop (aiohttp).
        async with open_service(settings, pooled=True, with_sender=True) as service:
            try:
                await service.db.ping()  # runs the migrations
            except DatabaseUnavailable as exc:
                # Start anyway: /readyz says not ready, routes answer 503, and the migrations
                # run on the first connection once Postgres is back.
                log.warning("admin.postgres_unavailable_at_start", error=str(exc))
            app.state.service = service
            app.state.unread = UnreadCache()
            yield

    app = AdminApp(
        title="smsrelay admin",
        summary="Failed SMS records: list, retry, delete, replay; audit; pipeline metrics.",
        version="1",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    install_error_handlers(app)
    app.add_middleware(GuardMiddleware, credentials=credentials, failures=failed_auth)
    install_docs(app)
    app.include_router(api)
    app.include_router(ops)
    app.include_router(twilio)
    install_console(app, credentials, failed_auth)
    return app


def serve(settings: Settings, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Run until SIGTERM/SIGINT (uvicorn handles both and drains in-flight requests)."""
    app = create_app(settings)
    log.info(
        "admin.starting",
        host=host,
        port=port,
        namespace=settings.namespace,
        database=where(settings.database_url),
    )
    # No access log: query strings carry phone numbers, and structlog masks only its own lines.
    # proxy_headers=False: uvicorn otherwise takes the client address from X-Forwarded-For
    # when the peer is 127.0.0.1, and a caller could then name a new address with each wrong
    # token, escaping the failed-authentication limit.
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        server_header=False,
        proxy_headers=False,
        lifespan="on",
        timeout_graceful_shutdown=10,
    )
    if threading.current_thread() is threading.main_thread():
        # uvicorn re-raises SIGTERM once it has shut down gracefully; with a handler in place
        # the process then exits 0, like the worker, instead of dying of the signal.
        signal.signal(signal.SIGTERM, lambda *_: None)
    uvicorn.Server(config).run()
    log.info("admin.stopped")
