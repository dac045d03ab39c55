"""deploy/grafana: the provisioned datasource and dashboard, and the panels the issue asks for."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from tests.deploy.support import (
    COMPOSE,
    DASHBOARD,
    GRAFANA,
    dashboard_panels,
    load_yaml,
)

# Panel the issue asks for -> (a regex its title matches, regexes its queries must all match).
REQUIRED_PANELS: dict[str, tuple[str, list[str]]] = {
    "sends by outcome": (
        r"(?i)sends by outcome",
        [r"by \(outcome\).*smsrelay_send_attempts_total"],
    ),
    "dead letters by reason": (
        r"(?i)dead letters by reason",
        [r"by \(reason\).*smsrelay_dead_letters_total"],
    ),
    "backlog and pending": (
        r"(?i)backlog and pending",
        [r"smsrelay_stream_length", r"smsrelay_stream_pending"],
    ),
    "provider latency p50/p95/p99": (
        r"(?i)provider latency",
        [
            r"histogram_quantile\(0\.5,.*smsrelay_send_duration_seconds_bucket",
            r"histogram_quantile\(0\.95,.*smsrelay_send_duration_seconds_bucket",
            r"histogram_quantile\(0\.99,.*smsrelay_send_duration_seconds_bucket",
        ],
    ),
    "publish-to-send latency": (
        r"(?i)publish to send",
        [
            r"histogram_quantile\(0\.5,.*smsrelay_end_to_end_seconds_bucket",
            r"histogram_quantile\(0\.95,.*smsrelay_end_to_end_seconds_bucket",
            r"histogram_quantile\(0\.99,.*smsrelay_end_to_end_seconds_bucket",
        ],
    ),
    "rate-limited rate": (r"(?i)rate-limited", [r"rate\(smsrelay_messages_rate_limited_total"]),
    "failed_sms by status": (
        r"(?i)failed_sms by status",
        [r"by \(status\).*smsrelay_failed_sms_records"],
    ),
    "dead letters not yet mirrored": (
        r"(?i)not yet mirrored",
        [r"by \(shard\).*smsrelay_dead_letters_unmirrored"],
    ),
    "workers Redis refuses": (r"(?i)redis refuses", [r"sum\(smsrelay_redis_writes_refused"]),
    "unread request streams": (r"(?i)unread request streams", [r"smsrelay_unread_streams"]),
}


def _dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text())
    assert isinstance(data, dict)
    return data


def _datasource() -> dict[str, Any]:
    provisioning = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")
    (datasource,) = provisioning["datasources"]
    assert isinstance(datasource, dict)
    return datasource


def test_datasource_points_at_the_stack_prometheus() -> None:
    datasource = _datasource()
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    assert datasource["uid"], "a fixed uid lets the dashboard refer to it"


@pytest.mark.parametrize("what", sorted(REQUIRED_PANELS))
def test_required_panel(what: str) -> None:
    title_re, query_res = REQUIRED_PANELS[what]
    panels = [p for p in dashboard_panels(_dashboard()) if re.search(title_re, p.get("title", ""))]
    assert panels, f"no panel for {what} (title matching {title_re})"
    queries = " | ".join(t["expr"] for p in panels for t in p.get("targets", []))
    for query_re in query_res:
        assert re.search(query_re, queries), f"{what}: no query matches {query_re}: {queries}"


def test_panels_use_the_provisioned_datasource_and_do_not_overlap() -> None:
    dashboard = _dashboard()
    uid = _datasource()["uid"]
    assert dashboard["uid"] and dashboard["title"]
    ids = [p["id"] for p in dashboard_panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard_panels(dashboard):
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, f"{panel['title']} is off the grid"
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == uid, f"{panel['title']}: datasource {uid} expected"
        assert panel.get("targets"), f"{panel['title']} has no query"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == uid, panel["title"]
            assert target["expr"].strip(), panel["title"]


def test_dashboard_provider_reads_the_mounted_folder() -> None:
    provider = load_yaml(GRAFANA / "provisioning" / "dashboards" / "smsrelay.yml")["providers"][0]
    grafana = load_yaml(COMPOSE)["services"]["grafana"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in grafana["volumes"] if v.startswith("./")}
    path = provider["options"]["path"]
    assert mounts.get(path) == "./grafana/dashboards", f"no dashboards mounted at {path}"
    assert mounts.get("/etc/grafana/provisioning") == "./grafana/provisioning"
