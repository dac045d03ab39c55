"""Every metric the alerts and the dashboard query is one the code exports: names cannot drift."""

from __future__ import annotations

import json

import pytest

from tests.deploy.support import (
    DASHBOARD,
    PROMETHEUS_OWN_METRICS,
    admin_metric_names,
    alert_rules,
    contract_metric_names,
    dashboard_exprs,
    promql_metric_names,
    strip_series_suffix,
    worker_metric_names,
)


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        (
            "sum by (reason) (increase(smsrelay_dead_letters_total[15m])) > 10",
            {"smsrelay_dead_letters_total"},
        ),
        (
            "histogram_quantile(0.95, sum by (le) (rate(smsrelay_send_duration_seconds_bucket"
            '{job="smsrelay-worker"}[$__rate_interval])))',
            {"smsrelay_send_duration_seconds_bucket"},
        ),
        ('absent(up{job="smsrelay-worker"} == 1)', {"up"}),
        (
            "sum(a_total) / ignoring(x) group_left sum(b) and on() vector(1e3) offset 5m",
            {"a_total", "b"},
        ),
        ('count(up{job="x"} == 1) or vector(0)', {"up"}),
        (
            "max without (instance, pod) (min_over_time(smsrelay_stream_pending[15m]) > 0)",
            {"smsrelay_stream_pending"},
        ),
        ('sum(rate(x_total{outcome!="success",a=~"b|c"}[5m:1m])) * 60', {"x_total"}),
    ],
)
def test_promql_metric_names(expr: str, expected: set[str]) -> None:
    assert promql_metric_names(expr) == expected


def test_worker_registry_exports_the_contract_metrics() -> None:
    # Given the worker metrics the contract promises, and the real worker registry
    promised, _ = contract_metric_names()
    exported = worker_metric_names()
    # Then the registry exports every one of them
    assert promised, "no worker metric found in CONTRACT.md"
    assert promised <= exported, f"the contract promises {sorted(promised - exported)}"


def test_admin_metrics_include_the_contract_metrics() -> None:
    promised = contract_metric_names()[1]
    names, source = admin_metric_names()
    assert promised <= names, f"{source} lacks {sorted(promised - names)}"


def _exported() -> set[str]:
    return {strip_series_suffix(n) for n in worker_metric_names() | admin_metric_names()[0]}


def _check(where: str, exprs: list[str]) -> list[str]:
    exported = _exported()
    problems = []
    for expr in exprs:
        for name in sorted(promql_metric_names(expr)):
            if name in PROMETHEUS_OWN_METRICS:
                continue
            if strip_series_suffix(name) not in exported:
                problems.append(f"{where}: {name} (in {expr!r})")
    return problems


def test_alert_rules_query_only_exported_metrics() -> None:
    exprs = [str(rule["expr"]) for rule in alert_rules()]
    used = set().union(*(promql_metric_names(e) for e in exprs))
    assert {"smsrelay_stream_length", "smsrelay_send_attempts_total"} <= used
    assert not _check("alerts.yml", exprs), "\n".join(_check("alerts.yml", exprs))


def test_dashboard_queries_only_exported_metrics() -> None:
    exprs = dashboard_exprs(json.loads(DASHBOARD.read_text()))
    assert exprs, "the dashboard has no queries"
    problems = _check("smsrelay.json", exprs)
    assert not problems, "\n".join(problems)


def test_a_misspelled_metric_is_caught() -> None:
    # The check above must be able to fail: a near-miss name is reported.
    assert _check("x", ["sum(smsrelay_stream_lenght)"]) == [
        "x: smsrelay_stream_lenght (in 'sum(smsrelay_stream_lenght)')"
    ]
    assert _check("x", ["rate(smsrelay_send_duration_seconds_count[5m])"]) == []
