from __future__ import annotations

import pytest

from smsrelay.store.db import Database


@pytest.fixture
async def db(database_url: str) -> Database:
    database = Database(database_url)
    await database.ping()  # migrates the session's database
    return database


@pytest.fixture
def ns(namespace: str) -> str:
    """This test's namespace: rows of other tests (same database) are never seen."""
    return namespace
