"""The audit trail of admin changes: each retry, delete and replay, whoever asked (the API, the
CLI, the console), becomes one row of `admin_audit`.

Where the change has a Postgres transaction, its row is written inside it (a savepoint), so
the record and its audit row commit together. Where the change ends before or without one (a
conflict, a rate limit, Redis away), the row is written on its own afterwards. Writing the
row never turns a change into a failure: when Postgres cannot take it, the row is logged
(`admin.audit_unrecorded`, every field) and the operation's own result stands.

A viewer's refused change is not recorded: it changed nothing (the guard logs it instead).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import psycopg

from smsrelay.errors import (
    ConflictError,
    NotFoundError,
    ProviderError,
    RateLimitedError,
    StorageError,
)
from smsrelay.logging import get_logger
from smsrelay.store import audit
from smsrelay.store.db import Connection, Database, DatabaseUnavailable

log = get_logger("smsrelay.admin.audit")

# The actor of a change made by code that named none (a library caller, a test).
UNNAMED_ACTOR = "unknown"
WRITE_TIMEOUT_S = 5.0


def outcome_of(exc: BaseException) -> tuple[str, str]:
    """The audit `outcome` word and detail line of a change that raised `exc`."""
    if isinstance(exc, NotFoundError):
        return "not_found", str(exc)
    if isinstance(exc, ConflictError):
        return "conflict", str(exc)
    if isinstance(exc, RateLimitedError):
        return "rate_limited", f"retry after {max(1, math.ceil(exc.retry_after_s))} s"
    if isinstance(exc, ProviderError):
        return "provider_error", str(exc)
    if isinstance(exc, StorageError):
        return "unavailable", str(exc)
    if isinstance(exc, asyncio.CancelledError):
        return "interrupted", "the request was cancelled before the change ended"
    # Errors of the admin service name their own word (InvalidRequestError: invalid, ...).
    own = getattr(exc, "audit_outcome", None)
    if isinstance(own, str):
        return own, str(exc)
    return "error", f"{type(exc).__name__}: {exc}"


class Change:
    """One change under way; see `AuditTrail.change`."""

    def __init__(self, trail: AuditTrail, actor: str, action: str, target: str) -> None:
        self.trail = trail
        self.actor = actor
        self.action = action
        self.target = target
        self._written = False  # a row was written inside the change's transaction
        self._written_for: BaseException | None = None  # ...for this failure (None: ok)
        self._written_as = ""
        self.detail: str | None = None  # the detail of an `ok` written on its own

    async def write_in(
        self, conn: Connection, failure: BaseException | None = None, detail: str | None = None
    ) -> None:
        """Write the row inside the change's transaction: it commits (or not) with it.

        A failed insert on a working connection is logged and leaves the change standing
        (a savepoint takes it back); on a broken connection the change's transaction fails
        anyway, and the error goes up as it would have.
        """
        outcome, text = ("ok", detail) if failure is None else outcome_of(failure)
        try:
            async with conn.transaction():  # a savepoint
                await audit.insert(
                    conn,
                    self.trail.namespace,
                    actor=self.actor,
                    action=self.action,
                    target=self.target,
                    outcome=outcome,
                    detail=text,
                )
        except psycopg.Error as exc:
            if conn.broken or conn.closed:
                raise
            log.error("admin.audit_write_failed", action=self.action, error=f"{type(exc).__name__}")
            return
        self._written, self._written_for = True, failure
        self._written_as = outcome + (f": {text}" if text else "")

    async def settle(self, exc: BaseException | None, detail: str | None = None) -> None:
        """The change ended (raising `exc`, or not): write its row unless its transaction did."""
        if self._written and exc is self._written_for:
            return  # committed with the change
        if exc is None:
            outcome, text = "ok", detail or self.detail
        else:
            outcome, text = outcome_of(exc)
            if self._written:
                # The row written in the transaction went with its rollback: say what it said.
                text = f"{text} (rolled back after: {self._written_as})"
            elif isinstance(exc, DatabaseUnavailable):
                # Postgres is away and nothing was changed: no point trying, and the caller
                # already reports the outage (the CLI in one line).
                log.info(
                    "admin.audit_unrecorded",
                    actor=self.actor,
                    action=self.action,
                    target=self.target[:400],
                    outcome=outcome,
                    error="Postgres unavailable",
                )
                return
        # A change that was (or may have been) made and is not recorded is an error; a
        # refused one, a warning.
        severe = exc is None or self._written
        await self.trail.write(self.actor, self.action, self.target, outcome, text, severe=severe)


class AuditTrail:
    """Writes the audit rows of one namespace."""

    def __init__(self, db: Database, namespace: str) -> None:
        self.db = db
        self.namespace = namespace

    @asynccontextmanager
    async def change(self, actor: str, action: str, target: str) -> AsyncIterator[Change]:
        """Around one change: its row is written exactly once, whatever the change raises."""
        entry = Change(self, actor, action, target)
        try:
            yield entry
        except BaseException as exc:
            await entry.settle(exc)
            raise
        await entry.settle(None)

    async def write(
        self,
        actor: str,
        action: str,
        target: str,
        outcome: str,
        detail: str | None,
        *,
        severe: bool = True,
    ) -> bool:
        """One row on a connection of its own; False (and a log line with it all) if not."""
        try:
            async with asyncio.timeout(WRITE_TIMEOUT_S), self.db.connection() as conn:
                await audit.insert(
                    conn,
                    self.namespace,
                    actor=actor,
                    action=action,
                    target=target,
                    outcome=outcome,
                    detail=detail,
                )
        except (StorageError, psycopg.Error, TimeoutError) as exc:
            (log.error if severe else log.warning)(
                "admin.audit_unrecorded",
                actor=actor,
                action=action,
                target=target[:400],
                outcome=outcome,
                detail=detail,
                error=f"{type(exc).__name__}: {exc}",
            )
            return False
        return True
