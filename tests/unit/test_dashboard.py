"""The Grafana dashboard is valid JSON and only queries metrics the code exports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "charts" / "modelfleet" / "dashboards" / "modelfleet.json"
SOURCES = (ROOT / "operator", ROOT / "worker_image")
DS = "${DS_PROMETHEUS}"

NAME = re.compile(r'"(modelfleet_[a-z_]+)"')
# Metric constructors: Counter("x", ...) or Counter(P + "x", ...) with the module's prefix.
# Metric constructors: Counter("x", ...), Counter(P + "x", ...) with the module's prefix
# constant, or Info(P.rstrip("_"), ...).
CONSTRUCTOR = re.compile(
    r"\b(Counter|Gauge|Histogram|Info|GaugeMetricFamily|CounterMetricFamily)\(\s*"
    r'(?:(?P<prefix>[A-Z_]+)(?P<strip>\.rstrip\("_"\))?\s*(?:\+\s*"(?P<name>[a-z_]*)"|,)'
    r'|"(?P<literal>[a-z_]+)")'
)
PREFIX_CONST = re.compile(r'^([A-Z_]+)\s*=\s*"(modelfleet_[a-z_]+)"', re.M)
SUFFIXES = {
    "Counter": ("_total",),
    "CounterMetricFamily": ("_total",),
    "Histogram": ("_bucket", "_sum", "_count"),
    "Info": ("_info",),
}


def exported_metric_names() -> set[str]:
    """Names a scrape of the operator, router or worker can contain, from their source."""
    names: set[str] = set()
    for root in SOURCES:
        for path in root.rglob("*.py"):
            text = path.read_text()
            prefixes = dict(PREFIX_CONST.findall(text))
            for m in CONSTRUCTOR.finditer(text):
                kind, prefix = m.group(1), m.group("prefix")
                if prefix:
                    if prefix not in prefixes:
                        continue
                    base = prefixes[prefix]
                    name = (base.rstrip("_") if m.group("strip") else base) + (
                        m.group("name") or ""
                    )
                else:
                    name = m.group("literal")
                if not name.startswith("modelfleet_"):
                    continue
                # prometheus_client appends _total to counters that lack it.
                name = name.removesuffix("_total") if kind.startswith("Counter") else name
                suffixes = SUFFIXES.get(kind, ("",))
                names.update(name + s for s in suffixes)
    return names


def source_literals() -> set[str]:
    return {n for root in SOURCES for p in root.rglob("*.py") for n in NAME.findall(p.read_text())}


def test_metric_scan_finds_every_family() -> None:
    names = exported_metric_names()
    expected = {
        "modelfleet_router_requests_total",
        "modelfleet_router_request_duration_seconds_bucket",
        "modelfleet_router_queue_depth",
        "modelfleet_worker_info",
        "modelfleet_worker_requests_total",
        "modelfleet_worker_batch_size_bucket",
        "modelfleet_worker_gpu_memory_free_bytes",
        "modelfleet_worker_oom_total",
        "modelfleet_canary_weight",
        "modelfleet_canary_phase",
        "modelfleet_canary_rollbacks_total",
    }
    assert expected <= names
    # every literal metric name in the source is one the scan knows (or a prefix of one)
    for literal in source_literals():
        assert any(n.startswith(literal) for n in names), literal


def test_scan_matches_live_registries() -> None:
    from modelfleet.router.metrics import RouterMetrics
    from modelfleet_worker.metrics import WorkerMetrics

    names = exported_metric_names()
    for registry in (RouterMetrics().registry, WorkerMetrics("p", "m", "sd15").registry):
        for family in registry.collect():
            suffixes = {
                "counter": ("_total",),
                "histogram": ("_bucket", "_sum", "_count"),
                "info": ("_info",),
            }.get(family.type, ("",))
            for s in suffixes:
                assert family.name + s in names


def _load() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def _panels(dash: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in dash["panels"]:
        out.append(panel)
        out += panel.get("panels", [])
    return out


def _exprs(dash: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in _panels(dash) for t in p.get("targets", [])]
    exprs += [a["expr"] for a in dash["annotations"]["list"] if "expr" in a]
    for var in dash["templating"]["list"]:
        query = var.get("query")
        if isinstance(query, dict):
            exprs.append(query["query"])
    return exprs


def test_dashboard_is_valid_json() -> None:
    dash = _load()
    assert dash["title"] and dash["uid"]
    ids = [p["id"] for p in _panels(dash)]
    assert len(ids) == len(set(ids))


_PROMQL_WORDS = re.compile(r"\b(modelfleet_[a-z_]+)\b")


def test_every_expr_uses_known_metrics() -> None:
    names = exported_metric_names()
    exprs = _exprs(_load())
    assert exprs
    for expr in exprs:
        used = set(_PROMQL_WORDS.findall(expr))
        assert used, f"no modelfleet metric in {expr!r}"
        unknown = used - names
        assert not unknown, f"{sorted(unknown)} not exported by the code (expr: {expr})"
        assert expr.count("(") == expr.count(")"), expr
        assert expr.count("{") == expr.count("}"), expr


def test_every_panel_has_title_and_datasource() -> None:
    for panel in _panels(_load()):
        assert panel.get("title"), panel.get("id")
        assert panel.get("datasource", {}).get("uid") == DS, panel["title"]
        for target in panel.get("targets", []):
            assert target.get("datasource", {}).get("uid") == DS, panel["title"]


def test_datasource_and_filters_are_variables() -> None:
    dash = _load()
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert {"namespace", "pool"} <= set(variables)
    for annotation in dash["annotations"]["list"]:
        if "expr" in annotation:
            assert annotation["datasource"]["uid"] == DS


@pytest.mark.parametrize(
    "metric",
    [
        "modelfleet_router_requests_total",
        "modelfleet_router_request_duration_seconds_bucket",
        "modelfleet_worker_batch_size_bucket",
        "modelfleet_worker_queue_depth",
        "modelfleet_router_queue_depth",
        "modelfleet_worker_gpu_memory_used_bytes",
        "modelfleet_worker_gpu_memory_free_bytes",
        "modelfleet_canary_weight",
    ],
)
def test_required_panels_present(metric: str) -> None:
    panel_exprs = [t["expr"] for p in _panels(_load()) for t in p.get("targets", [])]
    assert any(metric in e for e in panel_exprs), metric


def test_canary_annotations_track_phase_and_weight() -> None:
    exprs = [a.get("expr", "") for a in _load()["annotations"]["list"]]
    assert any("modelfleet_canary_phase" in e and "RolledBack" in e for e in exprs)
    assert any("changes(modelfleet_canary_weight" in e for e in exprs)
