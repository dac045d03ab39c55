"""deploy/k8s: manifests valid against the Kubernetes schemas, KEDA objects checked by hand."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from smsrelay.streams.keys import WORKER_GROUP, ShardKeys
from tests.deploy.support import (
    K8S,
    cli_parser,
    cli_rejects,
    load_yaml,
    load_yaml_docs,
    output,
    run,
    settings_default,
    unknown_settings,
)

# Validated against the oldest and a recent Kubernetes that kubernetes-validate ships schemas for.
KUBERNETES_VERSIONS = ("1.29.0", "1.33.0")

# Not Kubernetes API objects, so there is no schema in kubernetes-validate: their structure is
# checked explicitly by the tests below (KEDA's CRDs, and kustomize's own file).
NOT_IN_THE_SCHEMAS = ("keda.sh/", "kustomize.config.k8s.io/")

# The fields KEDA's redis-streams trigger reads (keda.sh/docs/latest/scalers/redis-streams).
REDIS_STREAMS_METADATA = frozenset(
    {
        "address",
        "addressFromEnv",
        "host",
        "hostFromEnv",
        "port",
        "portFromEnv",
        "username",
        "usernameFromEnv",
        "password",
        "passwordFromEnv",
        "databaseIndex",
        "enableTLS",
        "unsafeSsl",
        "stream",
        "consumerGroup",
        "pendingEntriesCount",
        "streamLength",
        "lagCount",
        "activationLagCount",
    }
)


def _manifest_files() -> list[Path]:
    return sorted(K8S.glob("*.yaml"))


def _objects() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in _manifest_files():
        for doc in load_yaml_docs(path):
            yield path, doc


def _kind(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in _objects() if doc.get("kind") == kind]


def _one(kind: str, name: str) -> dict[str, Any]:
    (found,) = [doc for doc in _kind(kind) if doc["metadata"]["name"] == name]
    return found


def _pod_spec(deployment: dict[str, Any]) -> dict[str, Any]:
    spec = deployment["spec"]["template"]["spec"]
    assert isinstance(spec, dict)
    return spec


@pytest.mark.parametrize("path", _manifest_files(), ids=lambda p: p.name)
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_manifest_validates_against_kubernetes_schemas(path: Path, version: str) -> None:
    # Given one manifest file, validated strictly (unknown fields are errors)
    result = run("kubernetes-validate", "--strict", "-k", version, str(path))
    assert result.returncode == 0, output(result)
    # Then every Kubernetes object in it passed; only KEDA and kustomize objects lack a schema
    for doc in load_yaml_docs(path):
        name = f"{doc['kind'].lower()}/{doc['metadata']['name']}" if "metadata" in doc else None
        if str(doc["apiVersion"]).startswith(NOT_IN_THE_SCHEMAS):
            continue
        assert f"passed for resource {name} " in result.stdout, output(result)
    assert "ERROR" not in result.stdout, output(result)


def test_schema_validation_can_fail(tmp_path: Path) -> None:
    broken = (
        (K8S / "worker.yaml")
        .read_text()
        .replace("terminationGracePeriodSeconds:", "terminationGracePeriod:")
    )
    (tmp_path / "worker.yaml").write_text(broken)
    result = run(
        "kubernetes-validate",
        "--strict",
        "-k",
        KUBERNETES_VERSIONS[0],
        str(tmp_path / "worker.yaml"),
    )
    assert result.returncode != 0 and "terminationGracePeriod" in result.stdout, output(result)


def test_kustomization_lists_every_manifest_but_the_secret_example() -> None:
    kustomization = load_yaml(K8S / "kustomization.yaml")
    assert kustomization["kind"] == "Kustomization"
    listed = set(kustomization["resources"])
    present = {p.name for p in _manifest_files()} - {"kustomization.yaml"}
    assert listed == present - {"secret.example.yaml"}, (listed, present)
    assert {image["name"] for image in kustomization["images"]} == {"smsrelay"}
    assert all(
        doc["metadata"].get("namespace") == kustomization["namespace"]
        for _, doc in _objects()
        if doc["kind"] not in ("Kustomization", "Namespace")
    )


def test_worker_grace_period_outlasts_the_drain() -> None:
    worker = _one("Deployment", "smsrelay-worker")
    config = _one("ConfigMap", "smsrelay-config")["data"]
    drain = float(
        config.get("SMSRELAY_SHUTDOWN_GRACE_SECONDS", settings_default("shutdown_grace_seconds"))
    )
    grace = _pod_spec(worker)["terminationGracePeriodSeconds"]
    assert grace > drain, f"the kubelet kills after {grace}s, the worker drains for {drain}s"
    assert "replicas" not in worker["spec"], "KEDA owns the worker count"


def test_containers_run_known_commands_with_known_variables() -> None:
    parser = cli_parser()
    config_keys = list(_one("ConfigMap", "smsrelay-config")["data"])
    assert not unknown_settings(config_keys), unknown_settings(config_keys)
    assert all(k.startswith("SMSRELAY_") for k in config_keys)
    secret_keys = set(_one("Secret", "smsrelay-secrets")["stringData"])
    for deployment in _kind("Deployment"):
        spec = _pod_spec(deployment)
        assert spec["securityContext"]["runAsNonRoot"] is True
        for container in spec["containers"]:
            where = f"{deployment['metadata']['name']}/{container['name']}"
            assert container["image"] == "smsrelay", where
            problem = cli_rejects(parser, container["args"])
            assert problem is None, f"{where}: `smsrelay {container['args']}`: {problem}"
            env = [item["name"] for item in container.get("env", [])]
            assert not unknown_settings(env), f"{where}: {unknown_settings(env)}"
            for item in container.get("env", []):
                ref = item.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] == "smsrelay-secrets", where
                    assert ref["key"] in secret_keys, f"{where}: no key {ref['key']} in the Secret"
            assert {"configMapRef": {"name": "smsrelay-config"}} in container["envFrom"], where
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, where


def test_secret_example_holds_placeholders_only() -> None:
    for key, value in _one("Secret", "smsrelay-secrets")["stringData"].items():
        assert "CHANGE-ME" in value, f"secret.example.yaml: {key} must be a placeholder"


def test_admin_service_and_probes() -> None:
    admin = _one("Deployment", "smsrelay-admin")
    service = _one("Service", "smsrelay-admin")
    labels = admin["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    (container,) = _pod_spec(admin)["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == 8080
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert admin["spec"]["replicas"] >= 2


def test_disruption_budgets_select_the_deployments() -> None:
    budgets = _kind("PodDisruptionBudget")
    for deployment in _kind("Deployment"):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        matching = [
            b for b in budgets if b["spec"]["selector"]["matchLabels"].items() <= labels.items()
        ]
        assert len(matching) == 1, f"{deployment['metadata']['name']}: one PDB expected"


def test_keda_scaled_object_scales_workers_on_the_request_stream() -> None:
    # KEDA's CRD is not in the Kubernetes schemas: its structure is checked here explicitly.
    (scaled,) = _kind("ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    assert set(spec) <= {
        "scaleTargetRef",
        "minReplicaCount",
        "maxReplicaCount",
        "pollingInterval",
        "cooldownPeriod",
        "idleReplicaCount",
        "fallback",
        "advanced",
        "triggers",
        "initialCooldownPeriod",
    }, sorted(spec)
    target = spec["scaleTargetRef"]
    assert target["name"] == "smsrelay-worker" and target.get("kind", "Deployment") == "Deployment"
    _one("Deployment", target["name"])
    assert 2 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    triggers = spec["triggers"]
    for trigger in triggers:
        assert trigger["type"] == "redis-streams"
        metadata = trigger["metadata"]
        extra = set(metadata) - REDIS_STREAMS_METADATA
        assert not extra, sorted(extra)
        assert all(isinstance(v, str) for v in metadata.values()), "trigger metadata are strings"
        assert re.fullmatch(r"[\w.-]+:\d+", metadata["address"]), metadata["address"]
    # The streams the code writes to (keys.py): every lane, with the ConfigMap's namespace; a
    # login code's lane scales first (the smallest backlog per worker).
    namespace = _one("ConfigMap", "smsrelay-config")["data"]["SMSRELAY_NAMESPACE"]
    streams = [t["metadata"]["stream"] for t in triggers]
    assert streams == list(ShardKeys(namespace, 0).lanes)
    assert streams[1] == "{smsrelay:0}:requests"
    lengths = [int(t["metadata"]["streamLength"]) for t in triggers]
    assert lengths[0] < lengths[1] < lengths[2]


def test_keda_reads_the_backlog_not_the_lag() -> None:
    # Workers XDEL acknowledged entries, so XINFO GROUPS reports lag as NULL, which KEDA reads as
    # idle: lagCount must not be used. streamLength is XLEN, the true backlog, and KEDA uses it
    # only when no consumerGroup is given (else it switches to the PEL or the lag).
    (scaled,) = _kind("ScaledObject")
    for trigger in scaled["spec"]["triggers"]:
        metadata = trigger["metadata"]
        assert "lagCount" not in metadata and "activationLagCount" not in metadata
        if "streamLength" in metadata:
            assert "consumerGroup" not in metadata and int(metadata["streamLength"]) > 0
        else:
            assert metadata["consumerGroup"] == WORKER_GROUP
            assert int(metadata["pendingEntriesCount"]) > 0
    comment = (K8S / "keda.yaml").read_text()
    assert "NULL" in comment and "XDEL" in comment, "keda.yaml must say why it avoids the lag"


def test_keda_trigger_authentication_reads_the_secret() -> None:
    (scaled,) = _kind("ScaledObject")
    auth_name = scaled["spec"]["triggers"][0]["authenticationRef"]["name"]
    auth = _one("TriggerAuthentication", auth_name)
    secret_keys = set(_one("Secret", "smsrelay-secrets")["stringData"])
    for ref in auth["spec"]["secretTargetRef"]:
        assert ref["parameter"] in REDIS_STREAMS_METADATA
        assert ref["name"] == "smsrelay-secrets" and ref["key"] in secret_keys
