"""The demo's canaries are judged as examples/canary.yaml judges, with the demo's own
window sizes; the typography canaries add their text checks and the replay."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from modelfleet.api.canary import Canary
from modelfleet_dev import demo, story, typography

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "canary.yaml"


def test_example_analysis_keeps_the_examples_checks_not_its_window_sizes() -> None:
    example = yaml.safe_load(EXAMPLE.read_text())["spec"]["analysis"]
    got = demo.example_analysis(EXAMPLE)
    assert got["metrics"] == example["metrics"]
    assert got["failureLimit"] == example["failureLimit"]
    assert not set(demo.DEMO_ONLY) & set(got)


def test_swap_canary_gets_the_examples_checks_and_stays_valid() -> None:
    manifest = story.canary_manifest("s", "s", "a", "b", "10s", [25, 50, 100])
    doc = demo.with_example_analysis(manifest, demo.example_analysis(EXAMPLE))
    analysis = doc["spec"]["analysis"]
    assert analysis["minRequests"] == 5  # the demo's own
    assert [m["name"] for m in analysis["metrics"]] == ["errors", "service-time", "p95"]
    assert not any(m.get("maxRatioToStable") == 2.0 for m in analysis["metrics"])
    Canary.model_validate(doc)  # what the API server's schema and CEL rules also accept


def test_typography_canaries_add_text_checks_and_replay() -> None:
    analysis = demo.example_analysis(EXAMPLE)
    typo = demo.with_example_analysis(typography.canary_manifest("t", "t"), analysis)
    names = [m["name"] for m in typo["spec"]["analysis"]["metrics"]]
    assert names == ["errors", "service-time", "p95", "text-accuracy", "text-pass-rate"]
    replay = demo.with_example_analysis(typography.replay_canary_manifest("r"), analysis)
    assert replay["spec"]["replay"]["configMap"] == typography.GOLDEN
    for doc in (typo, replay):
        Canary.model_validate(doc)


def test_golden_prompts_parse_as_the_operator_parses_them() -> None:
    from modelfleet.canary.replay import parse_golden

    doc = "".join(json.dumps(g) + "\n" for g in typography.GOLDEN_PROMPTS)
    golden = parse_golden(doc, "ConfigMap typography-golden")
    assert [g.text for g in golden] == [(typography.BANNERS[0],), (typography.BANNERS[1],)]


def test_checks_text() -> None:
    metrics = [{"name": "e", "max": 0.02}, {"name": "t", "minRatioToStable": 0.9}]
    assert demo.checks_text(metrics) == "e max 0.02, t minRatioToStable 0.9"
