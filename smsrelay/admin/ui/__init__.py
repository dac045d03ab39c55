"""The admin console: server-rendered pages at /ui/ (Jinja2 templates, one small ES module,
no build step, no asset from outside the package), signed in with an admin token."""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import FastAPI

from smsrelay.admin.auth import FailedAuth, TokenTable
from smsrelay.admin.ui.common import Console
from smsrelay.admin.ui.failed import router as failed_router
from smsrelay.admin.ui.messages import router as messages_router
from smsrelay.admin.ui.pages import router as pages_router
from smsrelay.admin.ui.sessions import SessionStore
from smsrelay.settings import AdminCredential

__all__ = ["Console", "install_console"]


def install_console(
    app: FastAPI,
    credentials: Sequence[AdminCredential],
    failures: FailedAuth,
    sessions: SessionStore | None = None,
) -> Console:
    """Serve the console; `failures` is the API guard's, so sign-in shares its limit."""
    console = Console(sessions or SessionStore(), TokenTable(credentials), failures)
    app.state.console = console
    app.include_router(pages_router)
    app.include_router(failed_router)
    app.include_router(messages_router)
    return console
