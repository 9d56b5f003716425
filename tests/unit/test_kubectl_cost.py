"""Cost per image of stable vs candidate in `kubectl modelfleet status` and `report`."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest

from modelfleet.kubectl import cost, report, status

CANARY: dict[str, Any] = {
    "metadata": {"name": "c", "namespace": "ns"},
    "spec": {
        "routingPolicy": "images",
        "route": "typography",
        "stablePool": "openai",
        "candidatePool": "imagen",
        "steps": [50, 100],
        "analysis": {
            "metrics": [
                {"name": "errors", "builtin": "error-rate", "max": 0.02},
                {"name": "cost", "builtin": "cost-per-image", "max": 0.06},
            ]
        },
    },
    "status": {
        "phase": "Succeeded",
        "currentStep": 1,
        "canaryWeight": 100,
        "metrics": [
            {"name": "errors", "result": "pass", "value": 0.0},
            # the 100% step: the stable made no images
            {"name": "cost", "result": "pass", "value": 0.03, "samples": 40, "threshold": 0.06},
        ],
        "history": [
            {
                "step": 0,
                "weight": 50,
                "result": "pass",
                "time": "2026-01-01T00:01:00Z",
                "metrics": [
                    {
                        "name": "cost",
                        "result": "pass",
                        "value": 0.03,
                        "stableValue": 0.04,
                        "samples": 20,
                        "stableSamples": 22,
                    }
                ],
            },
            {
                "step": 1,
                "weight": 100,
                "result": "pass",
                "time": "2026-01-01T00:02:00Z",
                "metrics": [{"name": "cost", "result": "pass", "value": 0.03, "samples": 40}],
            },
        ],
    },
}


def with_metrics(metrics: list[dict[str, Any]]) -> dict[str, Any]:
    c = copy.deepcopy(CANARY)
    c["status"]["metrics"] = metrics
    c["status"]["history"] = []
    return c


@pytest.mark.parametrize(
    ("canary", "line"),
    [
        (
            with_metrics(
                [
                    {
                        "name": "cost",
                        "result": "pass",
                        "value": 0.03,
                        "stableValue": 0.04,
                        "samples": 40,
                        "stableSamples": 120,
                    }
                ]
            ),
            "stable $0.04 (120 images), candidate $0.03 (40 images), x0.75",
        ),
        # A diffusers stable at a GPU-hour price: micro-dollars.
        (
            with_metrics([{"name": "cost", "value": 0.04, "stableValue": 2.7e-06}]),
            "stable $2.7e-06, candidate $0.04, x1.481e+04",
        ),
        # A free stable: no ratio.
        (
            with_metrics([{"name": "cost", "value": 0.04, "stableValue": 0.0}]),
            "stable $0, candidate $0.04",
        ),
        (with_metrics([{"name": "cost", "result": "inconclusive"}]), "- (not measured yet)"),
        (with_metrics([]), "- (not measured yet)"),
    ],
)
def test_cost_line(canary: dict[str, Any], line: str) -> None:
    assert cost.cost_line(canary) == line


def test_each_pool_from_the_newest_analysis_that_measured_it() -> None:
    """At 100% the stable made no images: its cost comes from the 50% step, the
    candidate's from the latest analysis."""
    v = cost.cost_view(CANARY)
    assert v is not None
    assert (v.candidate, v.candidate_images, v.stable, v.stable_images) == (0.03, 40, 0.04, 22)
    assert v.ratio == pytest.approx(0.75)
    newer = copy.deepcopy(CANARY)
    newer["status"]["metrics"][1]["value"] = 0.05
    assert cost.cost_line(newer) == "stable $0.04 (22 images), candidate $0.05 (40 images), x1.25"


def test_without_a_cost_check_status_says_nothing_and_line_says_why() -> None:
    c = copy.deepcopy(CANARY)
    c["spec"]["analysis"]["metrics"] = [{"name": "errors", "builtin": "error-rate", "max": 0.02}]
    assert cost.cost_line(c) == cost.NO_CHECK
    assert "Cost/image" not in status.format_status(c)
    assert cost.cost_rows(c) == []
    assert "Cost per image" not in report.render_report(c, generated_at="t")
    del c["spec"]["analysis"]
    assert cost.cost_checks(c) == []


def test_status_shows_stable_vs_candidate() -> None:
    c = with_metrics([{"name": "cost", "value": 0.05, "stableValue": 0.04, "samples": 30}])
    text = status.format_status(c)
    assert "Cost/image: stable $0.04, candidate $0.05 (30 images), x1.25" in text


def test_report_has_cost_summary_and_a_row_per_analysis() -> None:
    html = report.render_report(CANARY, generated_at="t")
    assert (
        "<td>cost per image</td><td>stable $0.04 (22 images), candidate $0.03 (40 images), x0.75"
        "</td>"
    ) in html
    section = html.split("<h2>Cost per image (USD)</h2>")[1].split("</table>")[0]
    rows = re.findall(r"<tr>(.*?)</tr>", section)
    cells = [re.findall(r"<t[dh]>(.*?)</t[dh]>", r) for r in rows]
    assert cells == [
        ["step", "weight", "result", "stable $/image", "candidate $/image", "ratio"],
        ["1/2", "50%", "pass", "$0.04", "$0.03", "x0.75"],
        ["2/2", "100%", "pass", "-", "$0.03", "-"],
    ]
