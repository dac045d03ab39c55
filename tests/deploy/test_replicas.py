"""Alerts and dashboard aggregate replicas rightly: admin series once (max), worker series summed.

Every admin replica (Kubernetes runs two) reads the pipeline-wide values from Redis and Postgres
and reports them whole, counters included: summing them across replicas doubles them. Each
worker reports its own process: those are summed. The alert unit tests (alerts_test.yml) show the
consequences with two admin replicas; this checks every query of alerts.yml and the dashboard.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from tests.deploy.aggregation import Aggregation, replica_problems, selections
from tests.deploy.support import (
    DASHBOARD,
    PROMETHEUS,
    admin_metric_labels,
    alert_rules,
    dashboard_exprs,
    load_yaml,
    run,
    worker_metric_names,
)

# The contract's version 2 gives the stream gauges a `priority` label: the queries keep it already
# (absent until then, it changes nothing), so the backlog of every priority is summed, not maxed.
FORTHCOMING_LABELS = {
    "smsrelay_stream_length": {"priority"},
    "smsrelay_stream_pending": {"priority"},
}


def _admin() -> dict[str, frozenset[str]]:
    return {
        name: labels | FORTHCOMING_LABELS.get(name, set())
        for name, labels in admin_metric_labels().items()
    }


def _worker() -> set[str]:
    return {
        name + suffix
        for name in worker_metric_names()
        for suffix in ("", "_bucket", "_sum", "_count")
    }


def _problems(expr: str) -> list[str]:
    return replica_problems(expr, _admin(), _worker())


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: str(rule.get("alert")))
def test_alert_aggregates_replicas_rightly(rule: dict[str, object]) -> None:
    problems = _problems(str(rule["expr"]))
    assert not problems, f"{rule['alert']}:\n" + "\n".join(problems)


def test_dashboard_aggregates_replicas_rightly() -> None:
    problems = [
        f"{expr!r}: {problem}"
        for expr in dashboard_exprs(json.loads(DASHBOARD.read_text()))
        for problem in _problems(expr)
    ]
    assert not problems, "\n".join(problems)


def test_the_checks_see_every_admin_series() -> None:
    # The rules and the dashboard between them query every admin series, so the checks above
    # looked at each (a reader that found no selector would pass them all).
    exprs = [str(rule["expr"]) for rule in alert_rules()]
    exprs += dashboard_exprs(json.loads(DASHBOARD.read_text()))
    seen = {s.metric for expr in exprs for s in selections(expr)}
    admin = set(_admin())
    assert admin <= seen, f"never queried: {sorted(admin - seen)}"
    assert "smsrelay_redis_writes_refused" in seen


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        (
            "sum by (outcome) (increase(smsrelay_admin_retries_total[$__rate_interval]))",
            [Aggregation("sum", "by", ("outcome",))],
        ),
        (
            "sum(max by (shard) (smsrelay_stream_length)) > 1000",
            [Aggregation("max", "by", ("shard",)), Aggregation("sum")],
        ),
        (
            "sum(rate(x_total[5m])) by (job) / ignoring(le) group_left count(x_total)",
            [Aggregation("sum", "by", ("job",))],
        ),
        (
            'histogram_quantile(0.5, sum by (le) (rate(x_bucket{a="(b)"}[5m:1m])))',
            [Aggregation("sum", "by", ("le",))],
        ),
        (
            "topk(3, max without (instance) (x_total offset 5m))",
            [Aggregation("max", "without", ("instance",)), Aggregation("topk")],
        ),
        ("(x_total)", []),
    ],
)
def test_the_reader_finds_the_aggregations(expr: str, expected: list[Aggregation]) -> None:
    assert selections(expr)[0].aggregations == expected


@pytest.mark.parametrize(
    ("expr", "complaint"),
    [
        # the dashboard's "Admin retries by outcome" as it was: two admins, twice the retries
        (
            "sum by (outcome) (increase(smsrelay_admin_retries_total[$__rate_interval]))",
            "first aggregated with `sum`",
        ),
        ("sum(smsrelay_stream_length) by (shard, priority)", "first aggregated with `sum`"),
        ("count(smsrelay_unread_streams) > 0", "first aggregated with `count`"),
        ("avg by (status) (smsrelay_failed_sms_records)", "first aggregated with `avg`"),
        ("smsrelay_unread_streams > 0", "not aggregated"),
        (
            "sum by (reason) (max without (instance, pod) "
            "(increase(smsrelay_dead_letters_total[15m])))",
            "keeps labels the discovery adds",
        ),
        ("sum(max by (shard, pod) (smsrelay_dead_letters_unmirrored))", "exactly the series' own"),
        ("sum(max by (shard) (smsrelay_stream_length))", "max by (priority, shard)"),
        ("max(rate(smsrelay_send_attempts_total[5m]))", "worker series are per process"),
        ("rate(smsrelay_messages_sent_total[5m])", "not aggregated: worker series"),
        (
            "histogram_quantile(0.9, max by (le) "
            "(rate(smsrelay_send_duration_seconds_bucket[5m])))",
            "worker series are per process",
        ),
    ],
)
def test_a_wrong_aggregation_is_caught(expr: str, complaint: str) -> None:
    problems = _problems(expr)
    assert len(problems) == 1 and complaint in problems[0], problems


@pytest.mark.parametrize(
    "expr",
    [
        "sum(max by (shard, priority) (smsrelay_stream_length)) > 1000",
        "max by (reason) (increase(smsrelay_dead_letters_total[15m])) > 10",
        "min by (shard, priority) (min_over_time(smsrelay_stream_pending[15m])) > 0",
        "max(smsrelay_unread_streams) > 0",
        'sum(rate(smsrelay_send_attempts_total{outcome!="success"}[5m])) '
        "/ sum(rate(smsrelay_send_attempts_total[5m]))",
        "histogram_quantile(0.99, sum by (le) (rate(smsrelay_end_to_end_seconds_bucket[5m])))",
        'count(up{job="smsrelay-worker"} == 1) or vector(0)',
    ],
)
def test_a_right_aggregation_passes(expr: str) -> None:
    assert _problems(expr) == []


# The alerts whose outcome or summary a sum over two admin replicas would change.
TWO_REPLICA_ALERTS = [
    "SmsrelayDeadLettersGrowing",
    "SmsrelayBacklogHigh",
    "SmsrelayBacklogGrowing",
    "SmsrelayPendingStuck",
    "SmsrelayUnreadStreams",
    "SmsrelayDeadLettersNotMirrored",
]


@pytest.mark.parametrize("alert", TWO_REPLICA_ALERTS)
@pytest.mark.slow
def test_unit_tests_catch_a_sum_over_admin_replicas(alert: str, tmp_path: Path) -> None:
    # Given the alert with its deduplication (`max by`/`min by`/`max(`) turned into a sum
    rules = load_yaml(PROMETHEUS / "alerts.yml")
    for group in rules["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == alert:
                summed = re.sub(r"\b(?:max|min)(?= by \(|\()", "sum", str(rule["expr"]))
                assert summed != rule["expr"], f"{alert} takes no max or min"
                assert _problems(summed), summed
                rule["expr"] = summed
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(rules, sort_keys=False))
    shutil.copy(PROMETHEUS / "alerts_test.yml", tmp_path / "alerts_test.yml")
    # Then the promtool unit tests with two admin replicas fail on that alert
    result = run("promtool", "test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert result.returncode != 0, f"the unit tests pass with {alert} summed over replicas"
    assert f"alertname: {alert}" in result.stdout + result.stderr
