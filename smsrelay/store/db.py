"""Postgres connections for the admin service, the CLI and the mirror.

Every way in runs the migrations once, on its first successful connection, so a process that
starts while Postgres is down still gets the schema when Postgres comes back.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import psycopg
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from smsrelay.errors import StorageError
from smsrelay.outage import OutageLog
from smsrelay.store.migrations import migrate

Connection = psycopg.AsyncConnection[DictRow]

CONNECT_TIMEOUT_S = 5
# The pool's own reconnect backoff grows to minutes; giving up early lets the next request
# start a fresh attempt, so the admin recovers within seconds of Postgres coming back.
POOL_RECONNECT_TIMEOUT_S = 5.0

# The pool logs every failed connection attempt; outages are logged once by OutageLog instead.
logging.getLogger("psycopg.pool").setLevel(logging.ERROR)


class DatabaseUnavailable(StorageError):
    """Postgres cannot be reached (or refused the connection); `str()` is one line."""


def where(url: str) -> str:
    """`host:port/db` of a libpq URL, without the password."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    return f"{host}:{parts.port or 5432}{parts.path or ''}"


def describe_pg_error(url: str, exc: BaseException) -> str:
    """One line for an operator: `Postgres unreachable at 127.0.0.1:5432/x (connection refused)`."""
    text = str(exc).strip()
    low = text.lower()
    if "connection refused" in low:
        why = "connection refused"
    elif "timeout" in low or isinstance(exc, PoolTimeout):
        why = "timed out"
    elif "password authentication failed" in low:
        why = "password authentication failed"
    elif "does not exist" in low:
        why = text.splitlines()[-1].removeprefix("FATAL:").strip()
    elif "starting up" in low or "shutting down" in low:
        why = "the server is starting up or shutting down"
    else:
        why = text.splitlines()[-1] if text else type(exc).__name__
    return f"Postgres unreachable at {where(url)} ({why})"


# Errors that say "the server is away or the session is gone", as opposed to bad data.
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    psycopg.OperationalError,
    psycopg.InterfaceError,
    PoolTimeout,
)


class _QuietOutage(OutageLog):
    def failed(self, exc: BaseException) -> None:
        pass

    def recovered(self) -> None:
        pass


class Database:
    """Connections to the Postgres that holds `failed_sms`.

    `pooled=True` (the admin service) keeps a small pool; otherwise each `connection()` opens
    one (the CLI and tests: short-lived, and the error names why the server is unreachable).
    """

    def __init__(
        self,
        url: str,
        *,
        pooled: bool = False,
        max_size: int = 10,
        timeout_s: float = 3.0,
        auto_migrate: bool = True,
        log_outages: bool = True,
        outage: OutageLog | None = None,
    ) -> None:
        """`outage`: the process's Postgres outage log (a new one otherwise)."""
        self.url = url
        self._migrated = not auto_migrate
        # A one-shot command reports the error itself; a service logs when outages begin/end.
        self.outage = outage or (OutageLog("postgres") if log_outages else _QuietOutage("postgres"))
        self._pool: AsyncConnectionPool[Connection] | None = None
        if pooled:
            self._pool = AsyncConnectionPool(
                url,
                min_size=1,
                max_size=max_size,
                open=False,
                timeout=timeout_s,
                reconnect_timeout=POOL_RECONNECT_TIMEOUT_S,
                kwargs={
                    "autocommit": True,
                    "row_factory": dict_row,
                    "connect_timeout": CONNECT_TIMEOUT_S,
                },
                check=AsyncConnectionPool.check_connection,
            )

    async def open(self) -> None:
        if self._pool is not None:
            await self._pool.open(wait=False)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        """An autocommit connection (use `conn.transaction()`); DatabaseUnavailable if down."""
        try:
            if self._pool is None:
                async with await self._connect() as conn:
                    await self._ensure_schema(conn)
                    yield conn
            else:
                if self.outage.down or not self._migrated:
                    # First use, or Postgres known to be away: a direct connection fails in
                    # milliseconds (and says why) where the pool would wait its full timeout.
                    async with await self._connect() as probe:
                        await self._ensure_schema(probe)
                async with self._pool.connection() as conn:
                    yield conn
        except UNAVAILABLE_ERRORS as exc:
            self.outage.failed(exc)
            raise DatabaseUnavailable(describe_pg_error(self.url, exc)) from None
        except psycopg.errors.UndefinedTable:
            # Someone dropped the table under us: migrate again on the next connection.
            self._migrated = False
            raise
        self.outage.recovered()

    async def _connect(self) -> Connection:
        return await psycopg.AsyncConnection.connect(
            self.url, autocommit=True, row_factory=dict_row, connect_timeout=CONNECT_TIMEOUT_S
        )

    async def _ensure_schema(self, conn: Connection) -> None:
        if not self._migrated:
            await migrate(conn)
            self._migrated = True

    async def ping(self) -> None:
        async with self.connection() as conn:
            await conn.execute("SELECT 1")
