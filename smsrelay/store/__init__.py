"""Postgres: the `failed_sms` table, its migrations, and the mirror that fills it from Redis."""

from __future__ import annotations

from smsrelay.store.db import Database, DatabaseUnavailable, describe_pg_error
from smsrelay.store.migrations import LATEST_VERSION, migrate

__all__ = ["LATEST_VERSION", "Database", "DatabaseUnavailable", "describe_pg_error", "migrate"]
