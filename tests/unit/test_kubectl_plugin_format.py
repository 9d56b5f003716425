"""The pure parts of `kubectl modelfleet`: tables, status text, pools, hints, report HTML."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import Any

import pytest

from modelfleet.api.canary import AnalysisSpec
from modelfleet.canary.manual import Request
from modelfleet.kubectl import actions, client, formatting, main, pause, pools, report, status

CANARY: dict[str, Any] = {
    "metadata": {"name": "c", "namespace": "ns", "annotations": {}},
    "spec": {
        "routingPolicy": "images",
        "route": "default",
        "stablePool": "prod",
        "candidatePool": "prod-v2",
        "steps": [10, 30, 60, 100],
        "interval": "5m",
        "analysis": {"inconclusiveLimit": 3},
    },
    "status": {
        "phase": "Progressing",
        "currentStep": 2,
        "canaryWeight": 60,
        "startedAt": "2026-01-01T00:00:00Z",
        "message": "step 3/4 <60%>",
        "metrics": [
            {"name": "errors", "result": "pass", "value": 0.001234567, "threshold": 0.02},
            {"name": "p95", "result": "fail", "value": 2.5, "threshold": 1.8, "stableValue": 1.5},
        ],
        "history": [
            {
                "step": 0,
                "weight": 10,
                "result": "pass",
                "time": "2026-01-01T00:05:00Z",
                "metrics": [{"name": "errors", "result": "pass", "value": 0.01, "threshold": 0.02}],
            },
            {
                "step": 1,
                "weight": 30,
                "result": "inconclusive",
                "time": "2026-01-01T00:10:00Z",
                "metrics": [{"name": "errors", "result": "inconclusive", "threshold": 0.02}],
            },
        ],
        "conditions": [{"type": "Ready", "status": "False", "reason": "StepProgressing"}],
    },
}


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, "-"),
        (0, "0"),
        (400, "400"),
        (0.001234567, "0.001235"),
        (2.5, "2.5"),
        (1e-9, "1e-09"),
        (float("nan"), "nan"),
        (True, "true"),
    ],
)
def test_fmt_number(value: Any, text: str) -> None:
    assert formatting.fmt_number(value) == text


def test_format_table_aligns_columns() -> None:
    out = formatting.format_table(["name", "x"], [["a", 1], ["longer", None]])
    assert out.splitlines() == ["NAME     X", "a        1", "longer"]


@pytest.mark.parametrize(
    ("step", "steps", "label"),
    [(None, [10, 100], "-/2"), (0, [10, 100], "1/2"), (3, [10, 30, 60, 100], "4/4")],
)
def test_step_label(step: int | None, steps: list[int], label: str) -> None:
    assert formatting.step_label(step, steps) == label


@pytest.mark.parametrize(
    ("metric", "text"),
    [
        ({"result": "pass", "value": 0.01, "threshold": 0.02}, "0.01 <= 0.02"),
        ({"result": "fail", "value": 2.5, "threshold": 1.8}, "2.5 > 1.8"),
        ({"result": "inconclusive", "threshold": 0.02}, "- (limit 0.02)"),
        ({"result": "inconclusive", "value": 0.3}, "0.3"),
        ({"result": "inconclusive"}, "-"),
    ],
)
def test_metric_comparison(metric: dict[str, Any], text: str) -> None:
    assert formatting.metric_comparison(metric) == text


def test_format_status() -> None:
    out = status.format_status(CANARY)
    assert "Canary:     ns/c" in out
    assert "Phase:      Progressing" in out
    assert "Step:       3/4  (weights 10%, 30%, 60%, 100%)" in out
    assert "Weight:     60% to candidate" in out
    assert "Stable:     prod" in out
    assert "Candidate:  prod-v2" in out
    assert "Message:    step 3/4 <60%>" in out
    assert re.search(r"errors\s+pass\s+0\.001235 <= 0\.02", out)
    assert re.search(r"p95\s+fail\s+2\.5 > 1\.8\s+1\.5", out)
    assert re.search(r"1/4\s+10%\s+pass\s+2026-01-01T00:05:00Z\s+errors=pass", out)
    assert re.search(r"2/4\s+30%\s+inconclusive", out)
    assert re.search(r"Ready\s+False\s+StepProgressing", out)


RANK_FAIL: dict[str, Any] = {
    "name": "service-time",
    "result": "fail",
    "value": 0.0489,
    "stableValue": 0.0313,
    "threshold": 0.0376,
    "samples": 30,
    "stableSamples": 100,
    "method": "mann-whitney",
    "pValue": 2e-11,
    "worseProbability": 0.89,
    "ratio": 1.5623,
    "message": "median (matched by stratum) 0.04889 vs stable 0.03133, ratio 1.56 > max 1.2",
}


def test_metrics_rows_explain_rank_and_proportion_tests() -> None:
    """Each check shows its method, n on both sides, p-value and effect size."""
    [row] = formatting.metrics_rows([RANK_FAIL])
    cells = dict(zip(formatting.METRICS_HEADERS, row, strict=True))
    assert cells["method"] == "mann-whitney"
    assert cells["n cand/stable"] == "30/100"
    assert cells["p"] == "2e-11"
    assert cells["effect"] == "P(worse) 0.89, x1.562"
    assert cells["value vs limit"] == "0.0489 > 0.0376"
    [plain] = formatting.metrics_rows([{"name": "e", "result": "pass", "samples": 7}])
    cells = dict(zip(formatting.METRICS_HEADERS, plain, strict=True))
    assert (cells["method"], cells["n cand/stable"], cells["p"], cells["effect"]) == (
        "-",
        "7",
        "-",
        "-",
    )


@pytest.mark.parametrize(
    ("metric", "text"),
    [
        ({"result": "pass", "value": 0.95, "threshold": 0.9}, "0.95 >= 0.9"),  # a min
        ({"result": "fail", "value": 0.5, "threshold": 0.9}, "0.5 < 0.9"),
    ],
)
def test_metric_comparison_of_higher_is_better(metric: dict[str, Any], text: str) -> None:
    assert formatting.metric_comparison(metric) == text


def test_status_and_history_show_the_test() -> None:
    obj = {**CANARY, "status": {**CANARY["status"], "metrics": [RANK_FAIL]}}
    obj["status"]["history"] = [
        {"step": 2, "weight": 60, "result": "fail", "time": "t", "metrics": [RANK_FAIL]}
    ]
    out = status.format_status(obj)
    assert re.search(
        r"service-time\s+fail\s+0\.0489 > 0\.0376\s+0\.0313\s+mann-whitney\s+30/100", out
    )
    assert "service-time=fail(p 2e-11)" in out


def test_status_names_checks_not_yet_judged_until_the_canary_ends() -> None:
    obj = {**CANARY, "status": {**CANARY["status"], "unjudgedMetrics": ["p95"]}}
    obj["status"]["phase"] = "Progressing"
    assert "Unjudged:   p95 (no window has judged it yet;" in status.format_status(obj)
    obj["status"]["phase"] = "RolledBack"
    assert "Unjudged:" not in status.format_status(obj)
    assert "Unjudged:" not in status.format_status(CANARY)


def test_format_status_without_status_and_with_action() -> None:
    obj = {
        "metadata": {
            "name": "c",
            "namespace": "ns",
            "annotations": {"modelfleet.io/action": "promote:1"},
        },
        "spec": {"steps": [50, 100], "paused": True},
    }
    out = status.format_status(obj)
    assert "Phase:      Unknown (not yet seen by the operator) (spec.paused=true)" in out
    assert "Step:       -/2" in out
    assert "Weight:     - to candidate" in out
    assert "Action:     promote:1 (pending)" in out
    assert "(none yet)" in out and "(no analyses yet)" in out and "(none)" in out
    obj["status"] = {"lastAction": "promote:1"}
    assert "Action:     promote:1 (handled)" in status.format_status(obj)


def test_status_json_drops_managed_fields() -> None:
    obj = {"metadata": {"name": "c", "managedFields": [{}]}, "spec": {}}
    assert status.status_json(obj) == {"metadata": {"name": "c"}, "spec": {}}
    assert "managedFields" in obj["metadata"]


def _pool(ns: str, name: str, spec: dict[str, Any], status: dict[str, Any] | None = None) -> Any:
    return {"metadata": {"name": name, "namespace": ns}, "spec": spec, "status": status or {}}


def test_format_pools() -> None:
    items = [
        _pool(
            "b",
            "big",
            {
                "replicas": 3,
                "gpu": {"count": 2, "product": "NVIDIA-H100"},
                "model": {"source": "hf://org/m", "revision": "abc"},
            },
            {"readyReplicas": 2, "phase": "Progressing"},
        ),
        _pool("a", "small", {"replicas": 2, "model": {"source": "s3://x/y"}}),
        _pool("a", "cpu", {"replicas": 5, "gpu": {"count": 0}, "model": {"source": "file:///m"}}),
    ]
    out = pools.format_pools(items, all_namespaces=False)
    lines = out.splitlines()
    assert re.match(r"NAME\s+READY/REPLICAS\s+PHASE\s+GPU\s+MODEL$", lines[0])
    assert re.match(r"cpu\s+0/5\s+-\s+0\s+file:///m$", lines[1])
    assert re.match(r"small\s+0/2\s+-\s+1 x any\s+s3://x/y$", lines[2])
    assert re.match(r"big\s+2/3\s+Progressing\s+2 x NVIDIA-H100\s+hf://org/m@abc$", lines[3])
    assert lines[-1] == "Total GPUs requested: 8 (3 pools)"
    wide = pools.format_pools(items, all_namespaces=True).splitlines()
    assert wide[0].startswith("NAMESPACE")
    assert re.match(r"a\s+cpu", wide[1])


def test_hosted_pool_requests_no_gpus_and_shows_its_provider_model() -> None:
    spec = {"replicas": 2, "backend": "ideogram", "provider": {"model": "V_3"}}
    assert pools.pool_gpus({"spec": spec}) == 0
    out = pools.format_pools([_pool("a", "typo", spec)], all_namespaces=False).splitlines()
    assert re.match(r"typo\s+0/2\s+-\s+-\s+ideogram:V_3$", out[1]), out
    assert out[-1] == "Total GPUs requested: 0 (1 pool)"


def test_pool_gpus_defaults() -> None:
    assert pools.pool_gpus({"spec": {}}) == 1
    assert pools.pool_gpus({"spec": {"replicas": 0}}) == 0
    assert pools.gpu_label(None) == "1 x any"


def test_new_request_id_is_unix_ms() -> None:
    assert actions.new_request_id(1700000000.1234) == "1700000000123"
    assert re.fullmatch(r"\d{13}", actions.new_request_id())


@pytest.mark.parametrize(
    ("phase", "paused", "inconclusive", "needed"),
    [
        ("Paused", False, 3, True),  # paused for lack of data
        ("Paused", False, 0, True),  # paused, spec says run: only the action continues it
        ("Paused", True, 0, False),  # paused by the user: spec.paused=false is enough
        ("Paused", True, 3, True),  # both: the action is needed too
        ("Progressing", False, 0, False),
        (None, True, 0, False),
    ],
)
def test_resume_needs_action(
    phase: str | None, paused: bool, inconclusive: int, needed: bool
) -> None:
    obj = {
        "spec": {"paused": paused, "analysis": {"inconclusiveLimit": 3}},
        "status": {"phase": phase, "inconclusiveChecks": inconclusive},
    }
    assert pause.resume_needs_action(obj) is needed


@pytest.mark.parametrize("limit", [1, 8, None])
def test_resume_needs_action_uses_the_canarys_inconclusive_limit(limit: int | None) -> None:
    # Paused by the user: the action is needed only once the canary's own limit is reached.
    analysis = {} if limit is None else {"inconclusiveLimit": limit}
    effective = AnalysisSpec().inconclusive_limit if limit is None else limit

    def needed(checks: int) -> bool:
        obj = {
            "spec": {"paused": True, "analysis": analysis},
            "status": {"phase": "Paused", "inconclusiveChecks": checks},
        }
        return pause.resume_needs_action(obj)

    assert not needed(effective - 1)
    assert needed(effective)


@pytest.mark.parametrize(
    ("verb", "phase", "warns"),
    [
        ("abort", "Progressing", False),
        ("abort", "Succeeded", True),
        ("promote", "Paused", False),
        ("promote", "RolledBack", True),
        ("retry", "Failed", False),
        ("retry", "Progressing", True),
        ("pause", "Succeeded", True),
        ("pause", None, False),
    ],
)
def test_action_hint(verb: Request, phase: str | None, warns: bool) -> None:
    hint = actions.action_hint(verb, {"status": {"phase": phase}})
    assert (hint is not None) is warns


def test_action_hint_words_come_from_the_shared_rules() -> None:
    def hint(verb: Request, phase: str) -> str | None:
        return actions.action_hint(verb, {"status": {"phase": phase}})

    assert hint("retry", "Progressing") == (
        "the canary is Progressing; retry only acts on RolledBack, Failed or Paused canaries"
    )
    assert hint("promote", "RolledBack") == (
        "the canary is RolledBack; promote only acts on active canaries; use retry first"
    )
    assert hint("promote", "Succeeded") == (
        "the canary is Succeeded; promote only acts on active canaries"
    )
    assert (
        hint("pause", "Failed") == "the canary is Failed; pausing a finished canary has no effect"
    )


def _parse_svg(svg: str) -> ET.Element:
    return ET.fromstring(svg)


def test_svg_weight_timeline_is_valid_and_plots_each_analysis() -> None:
    svg = report.svg_weight_timeline(CANARY["status"]["history"], "2026-01-01T00:00:00Z")
    root = _parse_svg(svg)
    ns = "{http://www.w3.org/2000/svg}"
    circles = root.findall(f"{ns}circle")
    assert len(circles) == 2
    assert [c.get("fill") for c in circles] == ["#2e7d32", "#9e9e9e"]
    assert root.find(f"{ns}polyline") is not None
    assert "seconds since start" in svg
    # Higher weight sits higher (smaller y).
    assert float(circles[1].get("cy", "0")) < float(circles[0].get("cy", "0"))


def test_svg_weight_timeline_empty_and_bad_times() -> None:
    assert "no analyses yet" in report.svg_weight_timeline([])
    _parse_svg(report.svg_weight_timeline([]))
    svg = report.svg_weight_timeline([{"step": 0, "weight": 10, "result": "pass", "time": "?"}])
    assert "analysis #" in svg
    _parse_svg(svg)


def test_svg_metric() -> None:
    series = report.metric_series(CANARY["status"]["history"])
    assert series == {"errors": [(0, 0.01, 0.02), (1, None, 0.02)]}
    root = _parse_svg(report.svg_metric("errors<&>", series["errors"], 2))
    assert root.get("aria-label") == "metric errors<&>"


def test_render_report_escapes_and_embeds() -> None:
    images = [
        (
            client.ImageResult("p <1>", 1, png_b64="QUJD"),
            client.ImageResult("p <1>", 1, error="boom <x>"),
        )
    ]
    page = report.render_report(CANARY, images, generated_at="T")
    assert page.startswith("<!DOCTYPE html>")
    assert page.count("<svg") == 2  # timeline + one per metric in the history (errors)
    assert "step 3/4 &lt;60%&gt;" in page
    assert "<60%>" not in page
    assert 'src="data:image/png;base64,QUJD"' in page
    assert "boom &lt;x&gt;" in page
    assert "Progressing" in page
    assert "<script" not in page


def test_render_report_without_status() -> None:
    page = report.render_report({"metadata": {"name": "c"}, "spec": {}}, generated_at="T")
    assert "Unknown" in page and "<svg" in page and "<img" not in page


def test_parser_flags_before_and_after_the_subcommand() -> None:
    parser = main.build_parser()
    a = parser.parse_args(["-n", "x", "--kubeconfig", "k", "status", "c"])
    assert (a.namespace, a.kubeconfig, a.canary) == ("x", "k", "c")
    b = parser.parse_args(["status", "c", "-n", "y", "-w", "-o", "json"])
    assert (b.namespace, b.kubeconfig, b.watch, b.output) == ("y", None, True, "json")
    c = parser.parse_args(["pools", "-A"])
    assert c.all_namespaces and c.namespace is None
