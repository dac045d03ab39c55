"""A Redis Cluster (3 masters, 3 replicas) and a Sentinel deployment (master, replica, 3
sentinels) of the session's own, and settings for a namespace on them (tests/support/topologies).

A test that kills a node starts it again before it ends; `cluster` and `sentinel` wait until
the deployment is whole again, so every test starts on a healthy one.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from smsrelay.settings import Settings
from tests.conftest import make_settings
from tests.support.topologies import LocalCluster, LocalSentinel, local_cluster, local_sentinel
from tests.support.wait import wait_for


@pytest.fixture(scope="session")
def session_cluster() -> Iterator[LocalCluster]:
    with local_cluster() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def session_sentinel() -> Iterator[LocalSentinel]:
    with local_sentinel() as sentinel:
        yield sentinel


@pytest.fixture
def cluster(session_cluster: LocalCluster) -> LocalCluster:
    wait_for(session_cluster.healthy, 30, "the cluster to be whole")
    return session_cluster


@pytest.fixture
def sentinel(session_sentinel: LocalSentinel) -> LocalSentinel:
    session_sentinel.wait_replicated()
    return session_sentinel


def topology_settings(
    url: str, mode: str, tmp_path: Path, twilio_url: str, **overrides: Any
) -> Settings:
    values: dict[str, Any] = {"redis_mode": mode, "shards": 6, "claim_idle_seconds": 2}
    values.update(overrides)
    return make_settings(url, f"t{uuid.uuid4().hex[:10]}", tmp_path, twilio_url, **values)
