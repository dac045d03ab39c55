"""How a PromQL expression aggregates each series it selects across scrape targets.

A small reader of PromQL, enough for the rules and the dashboard: for every metric selector it
finds the aggregations around it, innermost first, with their `by`/`without` labels (written
before or after the parentheses). Functions (rate, increase, histogram_quantile, ...) and binary
operators keep one output series per input series, so the first aggregation around a selector
is the one that merges the series of several targets.

The rules it checks (tests/deploy/test_replicas.py):
- an admin series is reported whole by every admin replica: its first aggregation must be
  `max` or `min` `by` exactly its own labels (no sum, count or avg across replicas; no
  `without (instance, pod)`, which keeps labels the discovery adds that differ between replicas);
- a worker series is per process: its first aggregation must be `sum` (or `count`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

AGGREGATIONS = frozenset(
    {
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    }
)
_MODIFIERS = frozenset({"by", "without"})
_LABEL_LISTS = frozenset({"on", "ignoring", "group_left", "group_right"})
_WORDS = frozenset({"and", "or", "unless", "offset", "bool", "inf", "nan", "start", "end", "atan2"})

_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\[\]]*\]")
_TOKEN = re.compile(r"\$\w+|[A-Za-z_:][A-Za-z0-9_:]*|\d[\w.]*|[()]|,|\S")


@dataclass
class Aggregation:
    op: str
    grouping: str | None = None  # "by", "without", or None (all labels dropped)
    labels: tuple[str, ...] = ()


@dataclass
class Selection:
    metric: str
    aggregations: list[Aggregation] = field(default_factory=list)  # innermost first


def _tokens(expr: str) -> list[str]:
    text = _STRINGS.sub('""', expr)
    text = _MATCHERS.sub(" ", text)  # a selector's matchers; `name{...}` stays `name`
    text = _RANGES.sub(" ", text)  # ranges and subqueries, Grafana's $__rate_interval with them
    return [t for t in _TOKEN.findall(text) if t != '""']


def _label_list(tokens: list[str], i: int) -> tuple[tuple[str, ...], int]:
    """The labels of `( a, b )` starting at tokens[i] == "(", and the index after it."""
    assert tokens[i] == "(", tokens[i:]
    end = tokens.index(")", i)
    return tuple(t for t in tokens[i + 1 : end] if t != ","), end + 1


def selections(expr: str) -> list[Selection]:
    """Every metric selector of `expr` with the aggregations around it, innermost first."""
    tokens = _tokens(expr)
    found: list[Selection] = []
    stack: list[Aggregation | None] = []  # one entry per open parenthesis
    closed: Aggregation | None = None  # the aggregation whose ")" was the previous token
    i = 0
    while i < len(tokens):
        token, nxt = tokens[i], tokens[i + 1] if i + 1 < len(tokens) else ""
        just_closed, closed = closed, None
        if token in _MODIFIERS and nxt == "(":
            labels, i = _label_list(tokens, i + 1)
            if just_closed is not None:  # `sum(x) by (a)`
                just_closed.grouping, just_closed.labels = token, labels
            continue
        if token in _LABEL_LISTS:
            i = _label_list(tokens, i + 1)[1] if nxt == "(" else i + 1
            continue
        if token in AGGREGATIONS and nxt in ("(", *_MODIFIERS):
            aggregation = Aggregation(token)
            i += 1
            if tokens[i] in _MODIFIERS:  # `sum by (a) (x)`
                aggregation.grouping = tokens[i]
                aggregation.labels, i = _label_list(tokens, i + 1)
            stack.append(aggregation)
            i += 1  # its "("
            continue
        if token == "(":
            stack.append(None)
        elif token == ")":
            closed = stack.pop() if stack else None
        elif re.fullmatch(r"[A-Za-z_:][A-Za-z0-9_:]*", token):
            if nxt == "(":  # a function: it keeps one series per input series
                stack.append(None)
                i += 2
                continue
            if token.lower() not in _WORDS:
                found.append(Selection(token, [a for a in reversed(stack) if a is not None]))
        i += 1
    return found


def _labels(labels: Iterable[str]) -> str:
    return ", ".join(labels)


def replica_problems(
    expr: str, admin: Mapping[str, frozenset[str]], worker: Iterable[str]
) -> list[str]:
    """What `expr` gets wrong about replicas: `admin` maps each admin series to the labels it
    may be grouped by (its own), `worker` names the per-process worker series."""
    workers = set(worker)
    problems: list[str] = []
    for selection in selections(expr):
        name = selection.metric
        first = selection.aggregations[0] if selection.aggregations else None
        if name in admin:
            own = admin[name]
            wanted = f"max by ({_labels(sorted(own))})" if own else "max"
            if first is None:
                problems.append(
                    f"{name} is not aggregated: every admin replica reports it, so it "
                    f"appears once per replica; take `{wanted}` first"
                )
            elif first.op not in ("max", "min"):
                problems.append(
                    f"{name} is first aggregated with `{first.op}`: every admin "
                    f"replica reports the whole value, so it counts once per replica; "
                    f"take `{wanted}` first"
                )
            elif first.grouping == "without":
                problems.append(
                    f"{name}: `{first.op} without ({_labels(first.labels)})` keeps "
                    f"labels the discovery adds that differ between replicas "
                    f"(pod_template_hash, node, ...); take `{wanted}`"
                )
            elif set(first.labels) != own:
                problems.append(
                    f"{name}: `{first.op} by ({_labels(first.labels)})` must keep "
                    f"exactly the series' own labels: take `{wanted}` first"
                )
        elif name in workers and (first is None or first.op not in ("sum", "count")):
            how = "not aggregated" if first is None else f"first aggregated with `{first.op}`"
            problems.append(
                f"{name} is {how}: worker series are per process, sum them across workers"
            )
    return problems
