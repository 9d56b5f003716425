"""Judging one metric: thresholds, the stable comparison and missing data."""

from __future__ import annotations

import math

import pytest

from modelfleet.api.canary import MetricResult, MetricSpec
from modelfleet.canary import MetricObservation, judge_metric, parse_action
from modelfleet.canary.ports import Measurement

ERR = MetricSpec(name="err", builtin="error-rate", max=0.05, max_ratio_to_stable=2)
P95 = MetricSpec(name="p95", builtin="latency-p95", max_ratio_to_stable=1.5)
CUSTOM = MetricSpec(name="c", query="x", max_ratio_to_stable=2)


def m(value: float | None, samples: int | None = 100) -> Measurement:
    return Measurement(value=value, samples=samples)


@pytest.mark.parametrize(
    ("metric", "cand", "stable", "result", "threshold"),
    [
        (ERR, m(0.04), m(0.03), "pass", 0.05),  # max binds (ratio limit 0.06)
        (ERR, m(0.051), m(0.03), "fail", 0.05),
        (ERR, m(0.015), m(0.0), "pass", 0.02),  # stable 0: floor 1% x 2
        (ERR, m(0.03), m(0.0), "fail", 0.02),
        (P95, m(1.5), m(1.0), "pass", 1.5),  # equal to the limit passes
        (P95, m(1.51), m(1.0), "fail", 1.5),
        (P95, m(0.007), m(0.0), "pass", 0.0075),  # latency floor 5 ms
        (CUSTOM, m(0.0), m(0.0), "pass", 0.0),  # custom queries have no floor
        (CUSTOM, m(0.1), m(0.0), "fail", 0.0),
        (ERR, m(0.0, samples=19), m(0.0), "inconclusive", None),
        (ERR, m(None, samples=100), m(0.0), "inconclusive", None),
        (ERR, m(math.nan), m(0.0), "inconclusive", None),
        (ERR, m(0.0, samples=None), m(0.0), "inconclusive", None),
        (ERR, Measurement(no_series=True), m(0.0), "inconclusive", None),
        (ERR, Measurement.failed("boom"), m(0.0), "inconclusive", None),
        # max fails even when the stable side cannot be judged
        (ERR, m(0.5), Measurement.failed("down"), "fail", 0.05),
        (P95, m(1.0), Measurement.failed("down"), "inconclusive", None),
        (P95, m(1.0), m(1.0, samples=5), "inconclusive", None),
        (P95, m(1.0), Measurement(no_series=True), "inconclusive", None),
    ],
)
def test_judge_table(
    metric: MetricSpec,
    cand: Measurement,
    stable: Measurement,
    result: str,
    threshold: float | None,
) -> None:
    # One ready replica each and the same request counts: latency ratios are judgeable.
    r = judge_metric(
        metric,
        MetricObservation(candidate=cand, stable=stable),
        20,
        candidate_replicas=1,
        stable_replicas=1,
    )
    assert r.result == result, r.message
    if threshold is None:
        assert r.threshold is None or result == "inconclusive"
    else:
        assert r.threshold == pytest.approx(threshold)


def test_messages_name_the_cause() -> None:
    def msg(c: Measurement, s: Measurement | None = None) -> str:
        return judge_metric(ERR, MetricObservation(candidate=c, stable=s), 20).message

    assert msg(Measurement(no_series=True)).startswith("query returned no series (misconfigured?)")
    assert msg(Measurement.failed("timeout")) == "metrics provider unavailable: timeout"
    assert msg(m(0.0, samples=3)).startswith("not enough samples: 3 candidate requests")
    assert "cannot compare with stable: metrics provider unavailable: down" in msg(
        m(0.001), Measurement.failed("down")
    )
    assert judge_metric(ERR, None, 20).result == "inconclusive"


def test_value_check_falls_back_to_previous_analysis() -> None:
    """A value check (a custom query) whose stable pool got no traffic (100%) compares with
    the last stable value."""
    metric = MetricSpec(name="c", query="x", max_ratio_to_stable=1.5)
    prev = MetricResult(name="c", result="pass", value=1.0, stable_value=2.0)
    r = judge_metric(metric, MetricObservation(m(2.9), m(None, samples=0)), 20, prev)
    assert r.result == "pass" and r.stable_value == 2.0 and r.threshold == pytest.approx(3.0)
    assert r.method == "value"
    r = judge_metric(metric, MetricObservation(m(3.1), m(None, samples=0)), 20, prev)
    assert r.result == "fail" and "previous analysis" in r.message


def test_latency_ratio_never_falls_back_to_an_earlier_window() -> None:
    """At 100% the stable has no traffic, so its load differs: inconclusive, not compared
    with a figure from a lighter-loaded window (issue 11)."""
    prev = MetricResult(name="p95", result="pass", value=1.0, stable_value=2.0)
    r = judge_metric(
        P95,
        MetricObservation(m(9.0), m(None, samples=0)),
        20,
        prev,
        candidate_replicas=1,
        stable_replicas=1,
    )
    assert r.result == "inconclusive" and "loads differ" in r.message


def test_min_requests_zero_accepts_unknown_sample_count() -> None:
    r = judge_metric(ERR, MetricObservation(m(0.0, samples=None), m(0.0, samples=None)), 0)
    assert r.result == "pass"


@pytest.mark.parametrize(
    ("value", "verb", "ident"),
    [
        ("promote:1700000000", "promote", "1700000000"),
        ("abort", "abort", None),
        (" retry:a.b-c ", "retry", "a.b-c"),
        ("resume:x", "resume", "x"),
        ("Promote:1", None, None),
        ("nuke:1", None, "1"),
        ("abort:", None, None),
    ],
)
def test_parse_action(value: str, verb: str | None, ident: str | None) -> None:
    a = parse_action(value)
    assert (a.verb, a.id) == (verb, ident)
    assert (a.error is None) == (verb is not None)
