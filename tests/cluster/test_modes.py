"""SMSRELAY_REDIS_MODE, SMSRELAY_REDIS_SENTINEL_MASTER and SMSRELAY_REDIS_WAIT_REPLICAS: what
each mode takes from the URL, and one clear line for each mistake."""

from __future__ import annotations

import pytest

from smsrelay.errors import ConfigError
from smsrelay.settings import Settings, redis_endpoints
from smsrelay.streams.keys import replication_barrier


def test_defaults_are_one_redis_and_no_wait() -> None:
    settings = Settings.load()
    assert (settings.redis_mode, settings.redis_sentinel_master) == ("standalone", "mymaster")
    assert settings.redis_wait_replicas == 0


def test_cluster_and_sentinel_urls_name_several_hosts() -> None:
    cluster = redis_endpoints("redis://:secret@10.0.0.1:7000,node-2:7001", "cluster")
    assert cluster.hosts == (("10.0.0.1", 7000), ("node-2", 7001))
    assert (cluster.db, cluster.password, cluster.tls) == (0, "secret", False)
    sentinel = redis_endpoints("rediss://s1,s2:26380/3", "sentinel")
    assert sentinel.hosts == (("s1", 26379), ("s2", 26380))  # the sentinel port by default
    assert (sentinel.db, sentinel.tls) == (3, True)
    settings = Settings.load(redis_mode="CLUSTER", redis_url="redis://a:1,b:2/0")
    assert settings.redis_mode == "cluster"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"redis_url": "redis://a:6379,b:6379/0"},
            "SMSRELAY_REDIS_URL: names several hosts: set SMSRELAY_REDIS_MODE=cluster",
        ),
        ({"redis_mode": "ring"}, "SMSRELAY_REDIS_MODE: Input should be 'standalone', 'cluster'"),
        (
            {"redis_mode": "cluster", "redis_url": "redis://a:7000/2"},
            "SMSRELAY_REDIS_URL: names database 2: Redis Cluster has only database 0",
        ),
        (
            {"redis_mode": "cluster", "redis_url": "redis://a:7000,,b:7001"},
            "SMSRELAY_REDIS_URL: has an empty host (entry 2 of the comma-separated list)",
        ),
        (
            {"redis_mode": "sentinel", "redis_url": "redis://s1:port"},
            "SMSRELAY_REDIS_URL: entry 1: the port must be a number from 1 to 65535",
        ),
        (
            {"redis_mode": "sentinel", "redis_url": "unix:///run/redis.sock"},
            "SMSRELAY_REDIS_URL: must start with redis:// or rediss:// in sentinel mode",
        ),
        (
            {"redis_mode": "cluster", "redis_url": "redis://a:1?ssl_cert_reqs=none"},
            "SMSRELAY_REDIS_URL: takes no options after '?' in cluster mode",
        ),
        (
            {"redis_mode": "sentinel", "redis_url": "redis://s1", "redis_sentinel_master": "a b"},
            "SMSRELAY_REDIS_SENTINEL_MASTER: must be 1-64 characters",
        ),
        ({"redis_wait_replicas": -1}, "SMSRELAY_REDIS_WAIT_REPLICAS: Input should be greater"),
    ],
)
def test_each_mistake_is_one_line_naming_the_variable(
    overrides: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        Settings.load(**overrides)
    assert str(raised.value).startswith(message), str(raised.value)
    assert "\n" not in str(raised.value)
    assert "secret" not in str(raised.value)


def test_a_url_with_a_password_is_never_shown() -> None:
    with pytest.raises(ConfigError) as raised:
        Settings.load(redis_mode="cluster", redis_url="redis://:secret@a:7000/5")
    assert "secret" not in str(raised.value)


def test_the_wait_barrier_shares_the_slot_of_its_keys() -> None:
    assert replication_barrier("{ns:3}:sent:abc") == "{ns:3}:replicated"
    assert replication_barrier("{ns}:budget:replay") == "{ns}:replicated"
    assert replication_barrier("plain") == "{plain}:replicated"
