"""Higher-is-better checks (min, minRatioToStable) and the text metrics' minVerified gate."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from modelfleet.api.canary import AnalysisSpec, CanarySpec, CanaryStatus, MetricResult, MetricSpec
from modelfleet.canary import (
    AnalysisObservation,
    MetricObservation,
    Observations,
    PoolReadiness,
    RollBack,
    decide,
    judge_metric,
    plan_analysis,
)
from modelfleet.canary.ports import Measurement

ACC = MetricSpec(name="text-accuracy", builtin="text-accuracy", min_ratio_to_stable=0.9)
PASS = MetricSpec(name="pass", builtin="text-pass-rate", min=0.8, min_ratio_to_stable=0.9)
CUSTOM_MIN = MetricSpec(name="c", query="x", min=0.5)


def m(value: float | None, samples: int | None = 40) -> Measurement:
    return Measurement(value=value, samples=samples)


@pytest.mark.parametrize(
    ("metric", "cand", "stable", "result", "threshold"),
    [
        (ACC, m(0.97), m(0.97), "pass", 0.873),
        (ACC, m(0.873), m(0.97), "pass", 0.873),  # equal to the limit passes
        (ACC, m(0.41), m(0.97), "fail", 0.873),
        (ACC, m(0.0), m(0.0), "pass", 0.0),  # no floor: a zero stable cannot fail anyone
        (PASS, m(0.85), m(0.9), "pass", 0.81),  # min 0.8 and 0.9 x 0.9: the upper binds
        (PASS, m(0.79), m(0.8), "fail", 0.8),  # below min although >= 0.9 x stable
        (PASS, m(0.5), Measurement.failed("down"), "fail", 0.8),  # min still judges
        (PASS, m(0.9), Measurement.failed("down"), "inconclusive", None),
        (CUSTOM_MIN, m(0.4, samples=100), None, "fail", 0.5),
        (CUSTOM_MIN, m(0.6, samples=100), None, "pass", 0.5),
        # fewer than minVerified (10) verified renders: inconclusive, never failed
        (ACC, m(0.0, samples=9), m(0.97), "inconclusive", None),
        (ACC, m(0.9, samples=40), m(0.97, samples=3), "inconclusive", None),
        (ACC, m(None, samples=0), m(0.97), "inconclusive", None),
        (ACC, Measurement(no_series=True), m(0.97), "inconclusive", None),
    ],
)
def test_higher_is_better_table(
    metric: MetricSpec,
    cand: Measurement,
    stable: Measurement | None,
    result: str,
    threshold: float | None,
) -> None:
    r = judge_metric(metric, MetricObservation(cand, stable), 20, None, 10)
    assert r.result == result, r.message
    if threshold is not None:
        assert r.threshold == pytest.approx(threshold)


def test_text_metrics_gate_on_verified_renders_not_requests() -> None:
    # 15 verified renders: enough for minVerified 10 though below minRequests 20.
    r = judge_metric(ACC, MetricObservation(m(0.95, 15), m(0.97, 15)), 20, None, 10)
    assert r.result == "pass"
    assert r.message == "0.95 >= 0.873 (15 verified renders)"
    short = judge_metric(ACC, MetricObservation(m(0.1, 4), m(0.97, 50)), 20, None, 10)
    assert short.result == "inconclusive"
    assert "4 candidate verified renders in the window, minVerified is 10" in short.message
    # error-rate keeps minRequests whatever minVerified says
    err = MetricSpec(name="e", builtin="error-rate", max=0.05)
    r = judge_metric(err, MetricObservation(m(0.0, 15)), 20, None, 10)
    assert r.result == "inconclusive"
    assert "minRequests is 20" in r.message


def test_fail_message_names_both_values() -> None:
    r = judge_metric(ACC, MetricObservation(m(0.41), m(0.97)), 20, None, 10)
    assert r.result == "fail"
    assert r.message.startswith("0.41 < 0.9 x stable 0.97")
    assert (r.value, r.stable_value) == (0.41, 0.97)


def test_stable_fallback_from_previous_analysis() -> None:
    prev = MetricResult(name=ACC.name, result="pass", value=0.95, stable_value=0.96)
    r = judge_metric(ACC, MetricObservation(m(0.5), m(None, 0)), 20, prev, 10)
    assert r.result == "fail"
    assert "stable 0.96 (stable value from the previous analysis)" in r.message


@pytest.mark.parametrize(
    "spec",
    [
        {"name": "t", "builtin": "text-accuracy"},  # no threshold at all
        {"name": "t", "builtin": "text-accuracy", "min_ratio_to_stable": 0},
        {"name": "t", "builtin": "text-accuracy", "min": -0.1},
    ],
)
def test_metric_spec_rejects(spec: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        MetricSpec.model_validate(spec)


def test_min_verified_bounds() -> None:
    base = {"routing_policy": "rp", "route": "r", "stable_pool": "a", "candidate_pool": "b"}
    with pytest.raises(ValidationError, match="minVerified"):
        CanarySpec.model_validate({**base, "analysis": {"minVerified": -1}})
    assert CanarySpec.model_validate(base).analysis.min_verified == 10


T0 = datetime(2024, 1, 1, tzinfo=UTC)


def test_decide_rolls_back_naming_text_accuracy_and_both_values() -> None:
    spec = CanarySpec(
        routing_policy="rp",
        route="images",
        stable_pool="stable",
        candidate_pool="cand",
        interval="10s",
        analysis=AnalysisSpec(metrics=[ACC]),
    )
    ready = Observations(PoolReadiness(True), PoolReadiness(True), generation=1)
    status = decide(spec, CanaryStatus(), ready, T0).next_status
    assert status.phase == "Progressing"
    now = T0 + timedelta(seconds=11)
    plan = plan_analysis(spec, status, now)
    assert plan is not None and plan.needs_stable(plan.metrics[0])
    a = AnalysisObservation(plan, {ACC.name: MetricObservation(m(0.41, 60), m(0.97, 60))})
    d = decide(
        spec,
        status,
        Observations(PoolReadiness(True), PoolReadiness(True), generation=1, analysis=a),
        now,
    )
    assert d.next_status.phase == "RolledBack"
    assert "text-accuracy: 0.41 < 0.9 x stable 0.97" in d.next_status.message
    assert any(isinstance(x, RollBack) for x in d.actions)


LATENCY = MetricSpec(name="p95", builtin="latency-p95", max=5.0)
NONE_VERIFIED = MetricObservation(m(None, samples=0), m(None, samples=0))


@pytest.mark.parametrize(
    ("cand", "stable", "informational"),
    [
        (m(None, samples=0), m(None, samples=0), True),  # neither pool renders readable text
        (m(None, samples=0), m(0.97), False),  # the candidate alone stopped: it holds
        (m(None, samples=0), None, False),  # stable not measured: no evidence, it holds
        (m(None, samples=None), m(None, samples=None), False),  # unknown is not zero
    ],
)
def test_text_check_without_text_on_either_pool_is_informational(
    cand: Measurement, stable: Measurement | None, informational: bool
) -> None:
    r = judge_metric(ACC, MetricObservation(cand, stable), 20, None, 10)
    assert r.result == "inconclusive"
    assert bool(r.informational) is informational, r.message


def test_informational_checks_do_not_hold_the_analysis() -> None:
    from modelfleet.canary import overall

    text = judge_metric(ACC, NONE_VERIFIED, 20, None, 10)
    latency_ok = judge_metric(LATENCY, MetricObservation(m(1.0, 100), None), 20)
    latency_bad = judge_metric(LATENCY, MetricObservation(m(9.0, 100), None), 20)
    assert overall([text, latency_ok]) == "pass"
    assert overall([text, latency_bad]) == "fail"
    assert overall([text]) == "inconclusive"  # nothing was judged
    short = judge_metric(ACC, MetricObservation(m(0.9, samples=3), m(0.97)), 20, None, 10)
    assert overall([short, latency_ok]) == "inconclusive"


def test_text_metrics_always_measure_the_stable() -> None:
    from modelfleet.canary.types import AnalysisPlan

    plan = AnalysisPlan(
        kind="full", step=0, step_started_at="2026-01-01T00:00:00Z", window_seconds=10,
        metrics=(CUSTOM_MIN,),
    )  # fmt: skip
    assert plan.needs_stable(MetricSpec(name="t", builtin="text-pass-rate", min=0.8))
    assert not plan.needs_stable(CUSTOM_MIN)
