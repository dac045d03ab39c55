"""deploy/: the Redis Cluster and Sentinel variants (issue 14): compose overrides that smsrelay's
settings accept, with their servers, and KEDA triggers for both modes."""

from __future__ import annotations

from typing import Any

import pytest

from smsrelay.settings import Settings, redis_endpoints
from smsrelay.streams.keys import ShardKeys
from tests.deploy.support import DEPLOY, K8S, load_yaml, load_yaml_docs, unknown_settings

OVERRIDES = {
    "cluster": DEPLOY / "compose.redis-cluster.yaml",
    "sentinel": DEPLOY / "compose.redis-sentinel.yaml",
}
KEDA = {
    "cluster": K8S / "redis-modes" / "keda-redis-cluster.yaml",
    "sentinel": K8S / "redis-modes" / "keda-redis-sentinel.yaml",
}
# Fields of KEDA's redis-cluster-streams / redis-sentinel-streams triggers (keda.sh/docs).
TRIGGER_FIELDS = {
    "redis-cluster-streams": {
        "addresses", "hosts", "ports", "username", "usernameFromEnv", "password",
        "passwordFromEnv", "enableTLS", "unsafeSsl", "stream", "consumerGroup",
        "pendingEntriesCount", "streamLength", "lagCount", "activationLagCount",
    },
    "redis-sentinel-streams": {
        "addresses", "hosts", "ports", "username", "usernameFromEnv", "password",
        "passwordFromEnv", "sentinelUsername", "sentinelUsernameFromEnv", "sentinelPassword",
        "sentinelPasswordFromEnv", "sentinelMaster", "sentinelMasterFromEnv", "databaseIndex",
        "enableTLS", "unsafeSsl", "stream", "consumerGroup", "pendingEntriesCount",
        "streamLength", "lagCount", "activationLagCount",
    },
}  # fmt: skip


def _services(mode: str) -> dict[str, Any]:
    services: dict[str, Any] = load_yaml(OVERRIDES[mode])["services"]
    return services


@pytest.mark.parametrize("mode", ["cluster", "sentinel"])
def test_overrides_set_known_settings_that_load(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    base = load_yaml(DEPLOY / "compose.yaml")["services"]
    for name in ("worker", "admin", "migrate"):
        env = {str(k): str(v) for k, v in _services(mode)[name]["environment"].items()}
        assert not unknown_settings(env), env
        assert env["SMSRELAY_REDIS_MODE"] == mode
        assert env["SMSRELAY_REDIS_WAIT_REPLICAS"] == "1"
        # every host the URL names is a service of the override, in its profile
        for host, _ in redis_endpoints(env["SMSRELAY_REDIS_URL"], mode).hosts:
            assert _services(mode)[host]["profiles"] == [f"redis-{mode}"], host
        settings = Settings.load(**{k.removeprefix("SMSRELAY_").lower(): v for k, v in env.items()})
        assert settings.redis_mode == mode
        assert name in base, f"{name} is not a service of compose.yaml"


def test_cluster_has_three_masters_and_three_replicas_durable() -> None:
    services = _services("cluster")
    nodes = [s for name, s in services.items() if name.startswith("redis-node-")]
    assert len(nodes) == 6
    for node in nodes:
        command = node["command"]
        assert command[command.index("--cluster-enabled") + 1] == "yes"
        assert command[command.index("--appendfsync") + 1] == "always"
        assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    init = " ".join(services["redis-cluster-init"]["command"])
    assert "--cluster-replicas 1" in init and "--cluster-yes" in init
    assert services["worker"]["depends_on"]["redis-cluster-init"] == {
        "condition": "service_completed_successfully"
    }


def test_sentinels_watch_the_master_smsrelay_names() -> None:
    services = _services("sentinel")
    sentinels = [s for name, s in services.items() if name.startswith("redis-sentinel-")]
    assert len(sentinels) == 3
    master = services["worker"]["environment"]["SMSRELAY_REDIS_SENTINEL_MASTER"]
    for sentinel in sentinels:
        script = " ".join(sentinel["command"])
        assert f"sentinel monitor {master} redis 6379 2" in script
        assert "--sentinel" in script
    replica = services["redis-replica"]["command"]
    assert replica[replica.index("--replicaof") + 1 :][:2] == ["redis", "6379"]


@pytest.mark.parametrize("mode", ["cluster", "sentinel"])
def test_keda_triggers_read_each_shard_backlog(mode: str) -> None:
    (scaled,) = [d for d in load_yaml_docs(KEDA[mode]) if d["kind"] == "ScaledObject"]
    assert scaled["spec"]["scaleTargetRef"]["name"] == "smsrelay-worker"
    triggers = scaled["spec"]["triggers"]
    assert {t["type"] for t in triggers} == {f"redis-{mode}-streams"}
    streams = []
    for trigger in triggers:
        metadata = trigger["metadata"]
        assert set(metadata) <= TRIGGER_FIELDS[trigger["type"]], metadata
        # XLEN, not the lag (NULL once entries are XDELed: see keda.yaml)
        assert "consumerGroup" not in metadata and "streamLength" in metadata
        streams.append(metadata["stream"])
        assert trigger["authenticationRef"]["name"] == "smsrelay-redis"
    # every lane of each shard listed, high first (rule 17)
    shards = len(streams) // 3
    assert streams == [lane for n in range(shards) for lane in ShardKeys("smsrelay", n).lanes]
    if mode == "sentinel":
        assert triggers[0]["metadata"]["sentinelMaster"] == "mymaster"
