"""deploy/prometheus: promtool's own checks, the alert unit tests, and that they can fail."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.support import (
    DASHBOARD,
    PROMETHEUS,
    alert_rules,
    dashboard_exprs,
    load_yaml,
    output,
    promql_metric_names,
    run,
)

# What the issue asks the rules to cover, as (what, a regex over the alert names).
REQUIRED_ALERTS = {
    "dead letters growing (by reason)": r"DeadLettersGrowing",
    "backlog above a threshold": r"BacklogHigh",
    "backlog growing": r"BacklogGrowing",
    "pending entries not moving": r"PendingStuck",
    "provider error ratio high": r"ProviderErrorRatio",
    "no worker up": r"NoWorkerUp",
    "dead-letter stream not mirrored": r"NotMirrored",
    "Redis refuses a worker's writes": r"RedisRefusesWrites",
    "request streams no worker reads": r"UnreadStreams",
}

# Alerts that must read a given gauge (the one that says what they mean), and for how long.
ALERT_GAUGES = {
    "SmsrelayDeadLettersNotMirrored": ("smsrelay_dead_letters_unmirrored", "5m"),
    "SmsrelayRedisRefusesWrites": ("smsrelay_redis_writes_refused", "1m"),
    "SmsrelayUnreadStreams": ("smsrelay_unread_streams", "5m"),
}


def test_promtool_check_config() -> None:
    # Given the compose stack's Prometheus configuration (it loads alerts.yml too)
    result = run("promtool", "check", "config", str(PROMETHEUS / "prometheus.yml"))
    # Then promtool accepts the configuration and its rule files
    assert result.returncode == 0, output(result)
    assert "SUCCESS" in result.stdout + result.stderr


def test_promtool_check_rules() -> None:
    result = run("promtool", "check", "rules", str(PROMETHEUS / "alerts.yml"))
    assert result.returncode == 0, output(result)


def test_promtool_test_rules() -> None:
    # Given synthetic series for each alert, firing and healthy
    result = run("promtool", "test", "rules", str(PROMETHEUS / "alerts_test.yml"))
    # Then every expectation holds
    assert result.returncode == 0, output(result)
    assert "SUCCESS" in result.stdout + result.stderr, output(result)


def test_scrape_config_targets_the_stack() -> None:
    config = load_yaml(PROMETHEUS / "prometheus.yml")
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert {"smsrelay-worker", "smsrelay-admin"} <= set(jobs), sorted(jobs)
    worker_sd = jobs["smsrelay-worker"]["dns_sd_configs"][0]
    assert worker_sd["names"] == ["worker"] and worker_sd["port"] == 9464
    assert jobs["smsrelay-admin"]["static_configs"][0]["targets"] == ["admin:8080"]
    assert config["rule_files"] == ["alerts.yml"]
    # The job names the alerts look for are the ones scraped.
    for rule in alert_rules():
        for job in re.findall(r'job="([^"]+)"', str(rule["expr"])):
            assert job in jobs, f"{rule['alert']} looks for job {job!r}, which nothing scrapes"


def test_every_required_alert_exists() -> None:
    names = [str(rule["alert"]) for rule in alert_rules() if "alert" in rule]
    missing = [
        what
        for what, pattern in REQUIRED_ALERTS.items()
        if not any(re.search(pattern, name) for name in names)
    ]
    assert not missing, f"no alert for: {missing} (alerts: {names})"
    assert len(names) == len(set(names)), "alert names repeat"


@pytest.mark.parametrize("alert", sorted(ALERT_GAUGES))
def test_alert_reads_its_gauge(alert: str) -> None:
    # NotMirrored once compared deltas of two gauges across a window, which one retry hid.
    metric, duration = ALERT_GAUGES[alert]
    (rule,) = [rule for rule in alert_rules() if rule.get("alert") == alert]
    assert promql_metric_names(str(rule["expr"])) == {metric}, rule["expr"]
    assert rule["for"] == duration, rule


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: str(rule.get("alert")))
def test_alert_has_severity_summary_and_runbook(rule: dict[str, Any]) -> None:
    assert rule.get("alert"), "alerts.yml holds only alerts (no recording rules)"
    assert rule.get("labels", {}).get("severity") in {"warning", "critical"}, rule["alert"]
    annotations = rule.get("annotations", {})
    assert str(annotations.get("summary", "")).strip(), f"{rule['alert']} has no summary"
    runbook = str(annotations.get("runbook", "")).strip()
    assert len(runbook) > 40 and "\n" not in runbook, f"{rule['alert']}: a one-line runbook"


def _alert_test_cases() -> dict[str, dict[str, int]]:
    """For each alert: how many cases expect it firing, and how many expect silence."""
    counts: dict[str, dict[str, int]] = {}
    for case in load_yaml(PROMETHEUS / "alerts_test.yml")["tests"]:
        for check in case.get("alert_rule_test", []):
            kind = "firing" if check.get("exp_alerts") else "silent"
            counts.setdefault(check["alertname"], {"firing": 0, "silent": 0})[kind] += 1
    return counts


def test_every_alert_is_unit_tested_firing_and_silent() -> None:
    cases = _alert_test_cases()
    for rule in alert_rules():
        name = rule["alert"]
        assert cases.get(name, {}).get("firing"), f"no test case makes {name} fire"
        assert cases.get(name, {}).get("silent"), f"no test case keeps {name} silent"
    unknown = set(cases) - {rule["alert"] for rule in alert_rules()}
    assert not unknown, f"alerts_test.yml tests alerts that do not exist: {unknown}"


def _mutated_rules_fail(tmp_path: Path, alert: str, expr: str) -> str:
    """Copy the rules with one alert's expression replaced; return promtool's failure text."""
    rules = load_yaml(PROMETHEUS / "alerts.yml")
    for group in rules["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == alert:
                rule["expr"] = expr
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(rules, sort_keys=False))
    shutil.copy(PROMETHEUS / "alerts_test.yml", tmp_path / "alerts_test.yml")
    result = run("promtool", "test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert result.returncode != 0, f"the unit tests still pass with {alert}: {expr}"
    return result.stdout + result.stderr


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: str(rule.get("alert")))
@pytest.mark.slow
def test_unit_tests_catch_a_broken_alert(rule: dict[str, Any], tmp_path: Path) -> None:
    # Given an alert that always fires, then one that never does
    name = str(rule["alert"])
    always = _mutated_rules_fail(tmp_path, name, "vector(1)")
    never = _mutated_rules_fail(tmp_path, name, "vector(1) < 0")
    # Then the unit tests fail on that very alert both times
    assert f"alertname: {name}" in always
    assert f"alertname: {name}" in never


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    # Given every query of the dashboard as a recording rule (Grafana's $__ variables replaced)
    dashboard = json.loads(DASHBOARD.read_text())
    grafana_vars = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}
    rules = []
    for index, expr in enumerate(dashboard_exprs(dashboard)):
        for variable, value in grafana_vars.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
        rules.append({"record": f"dashboard:query_{index}", "expr": expr})
    assert rules, "the dashboard has no queries"
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    # Then promtool parses all of them
    result = run("promtool", "check", "rules", str(path))
    assert result.returncode == 0, output(result)
