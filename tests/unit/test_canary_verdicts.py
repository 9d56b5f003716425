"""Verdicts that compare like with like (issue 11): rank tests on service time within
batch-size strata, proportion tests on rates, latency ratios only at matched load, and the
stable's reference window (the 100% step)."""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from modelfleet.api.canary import CanarySpec, CanaryStatus, MetricResult, MetricSpec
from modelfleet.api.common import format_time
from modelfleet.canary import (
    EmitEvent,
    MetricObservation,
    Observations,
    PoolReadiness,
    collect_analysis,
    decide,
    judge_metric,
    overall,
    plan_analysis,
)
from modelfleet.canary.ports import Measurement, MetricQuery
from modelfleet.canary.statistics import Histogram
from modelfleet.canary.types import uses_reference
from modelfleet.canary.verdicts import REFERENCE, SAME_WINDOW
from modelfleet.routing.stats import SERVICE_TIME_BUCKETS

SERVICE = MetricSpec(
    name="service-time", builtin="service-time", max_ratio_to_stable=1.2, min_samples=8
)
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def hist(values: Sequence[float]) -> Histogram:
    """Bin raw seconds into the routers' service-time buckets."""
    counts = [0.0] * (len(SERVICE_TIME_BUCKETS) + 1)
    for v in values:
        i = next((i for i, b in enumerate(SERVICE_TIME_BUCKETS) if v <= b), len(counts) - 1)
        counts[i] += 1
    return Histogram(SERVICE_TIME_BUCKETS, tuple(counts))


def draws(n: int, median: float, seed: int) -> list[float]:
    """Log-normal service times (about 10% spread), deterministic."""
    r = random.Random(seed)
    return [median * math.exp(r.gauss(0.0, 0.1)) for _ in range(n)]


def service(strata: dict[str, Sequence[float]]) -> Measurement:
    """A provider's service-time answer: one histogram per batch-size stratum."""
    hs = tuple((name, hist(v)) for name, v in strata.items())
    n = sum(len(v) for v in strata.values())
    values = sorted(x for v in strata.values() for x in v)
    return Measurement(value=values[n // 2] if n else None, samples=n, strata=hs)


def judge(
    metric: MetricSpec, cand: Measurement, stable: Measurement | None, **kw: Any
) -> MetricResult:
    return judge_metric(metric, MetricObservation(candidate=cand, stable=stable), 20, **kw)


# --- rank test on service time ------------------------------------------------------------


def test_identical_strata_pass() -> None:
    # Batch 1 costs more per image than batch 4; the stable batches more (it carries 90%).
    cand = service({"1": draws(30, 0.040, 1), "4": draws(10, 0.031, 2)})
    stable = service({"1": draws(40, 0.040, 3), "4": draws(200, 0.031, 4)})
    r = judge(SERVICE, cand, stable)
    assert r.result == "pass", r.message
    assert r.method == "mann-whitney"
    assert r.p_value is not None and r.p_value > 0.01
    assert r.worse_probability is not None and abs(r.worse_probability - 0.5) < 0.15
    assert (r.samples, r.stable_samples) == (40, 240)
    assert r.ratio == pytest.approx(1.0, abs=0.1)
    assert "Mann-Whitney U within strata (van Elteren)" in r.message
    assert "strata compared: 1, 4" in r.message


def test_pooled_batch_mix_does_not_fool_the_strata() -> None:
    """Pooled, the candidate (mostly alone) looks 1.25x slower; within strata it is not."""
    cand = service({"1": draws(40, 0.040, 5), "4": draws(4, 0.032, 6)})
    stable = service({"1": draws(12, 0.040, 7), "4": draws(300, 0.032, 8)})
    assert cand.value is not None and stable.value is not None
    assert cand.value / stable.value > 1.2  # the pooled medians would fail at 1.2
    assert judge(SERVICE, cand, stable).result == "pass"


@pytest.mark.parametrize("seed", range(5))
def test_slower_candidate_fails_with_evidence(seed: int) -> None:
    cand = service({"1": draws(20, 0.060, seed), "4": draws(10, 0.0465, seed + 10)})
    stable = service({"1": draws(60, 0.040, seed + 20), "4": draws(100, 0.031, seed + 30)})
    r = judge(SERVICE, cand, stable)
    assert r.result == "fail", r.message
    assert r.p_value is not None and r.p_value < 0.01
    assert r.worse_probability is not None and r.worse_probability > 0.8
    assert r.ratio == pytest.approx(1.5, rel=0.15)
    assert "> max 1.2" in r.message and "< alpha 0.01" in r.message
    assert "n 30 candidate / 160 stable" in r.message
    # The status entry carries what the message says.
    assert r.value is not None and r.stable_value is not None
    assert r.value / r.stable_value == pytest.approx(r.ratio)
    assert r.threshold == pytest.approx(1.2 * r.stable_value)  # the median the limit allows


def test_small_samples_are_inconclusive_never_failed() -> None:
    cand = service({"1": draws(5, 0.080, 1)})  # 2x slower, but only 5 samples
    stable = service({"1": draws(100, 0.040, 2)})
    r = judge(SERVICE, cand, stable)
    assert r.result == "inconclusive"
    assert "not enough samples for Mann-Whitney U" in r.message and "minSamples 8" in r.message


def test_min_samples_defaults_to_min_requests() -> None:
    metric = SERVICE.model_copy(update={"min_samples": None})
    cand = service({"1": draws(15, 0.080, 1)})
    stable = service({"1": draws(100, 0.040, 2)})
    assert judge(metric, cand, stable).result == "inconclusive"  # 15 < minRequests 20
    assert judge(SERVICE, cand, stable).result == "fail"  # 15 >= minSamples 8


def test_bigger_than_the_limit_but_not_significant_holds() -> None:
    cand = service({"1": [0.05] * 6 + [0.03] * 4})
    stable = service({"1": [0.03] * 6 + [0.05] * 4})
    metric = SERVICE.model_copy(update={"max_ratio_to_stable": 1.05})
    r = judge(metric, cand, stable)
    assert r.result == "inconclusive" and "but not significant" in r.message, r.message


def test_strata_only_one_side_has_are_left_out_and_named() -> None:
    cand = service({"1": draws(30, 0.040, 1), "2": draws(5, 0.036, 2)})
    stable = service({"1": draws(30, 0.040, 3), "4": draws(50, 0.031, 4)})
    r = judge(SERVICE, cand, stable)
    assert r.result == "pass"
    assert "strata compared: 1;" in r.message
    assert "left out 5 candidate / 50 stable in strata only one side has" in r.message


def test_worse_probability_as_the_only_effect_limit() -> None:
    metric = MetricSpec(name="s", builtin="service-time", max_worse_probability=0.7)
    slow = judge(metric, service({"1": draws(40, 0.05, 1)}), service({"1": draws(40, 0.04, 2)}))
    same = judge(metric, service({"1": draws(40, 0.04, 3)}), service({"1": draws(40, 0.04, 4)}))
    assert slow.result == "fail" and "P(candidate higher)" in slow.message
    assert same.result == "pass", same.message


def test_no_traffic_and_provider_trouble_are_inconclusive() -> None:
    empty = Measurement(value=None, samples=0, strata=())
    stable = service({"1": draws(30, 0.040, 3)})
    assert judge(SERVICE, empty, stable).result == "inconclusive"
    down = judge(SERVICE, service({"1": draws(30, 0.1, 1)}), Measurement.failed("refused"))
    assert down.result == "inconclusive"
    assert "cannot compare with stable: metrics provider unavailable" in down.message
    no_dist = judge(SERVICE, service({"1": draws(30, 0.1, 1)}), Measurement(0.04, 30))
    assert no_dist.result == "inconclusive" and "no distribution" in no_dist.message


def test_forced_rank_test_without_distributions_is_inconclusive() -> None:
    metric = SERVICE.model_copy(update={"method": "mann-whitney"})
    r = judge(metric, Measurement(0.09, 100), Measurement(0.04, 100))
    assert (r.result, r.method) == ("inconclusive", "mann-whitney")
    assert "no distribution for the candidate pool" in r.message


def test_absolute_max_is_judged_on_the_value() -> None:
    metric = MetricSpec(name="s", builtin="service-time", max=0.05)
    r = judge(metric, service({"1": draws(30, 0.09, 1)}), None)
    assert (r.result, r.method) == ("fail", "value")
    assert r.message.startswith("0.09")


def test_absolute_max_fails_while_the_rank_test_is_short() -> None:
    metric = SERVICE.model_copy(update={"max": 0.05})
    r = judge(metric, service({"1": draws(25, 0.09, 1)}), service({"1": draws(3, 0.04, 2)}))
    assert r.result == "fail" and "> max 0.05" in r.message
    assert "not enough samples" in r.message  # the rank test's part is still explained


# --- proportions ----------------------------------------------------------------------------

ERR_RATIO = MetricSpec(name="err", builtin="error-rate", max_ratio_to_stable=2)


def rate(hits: float, n: int) -> Measurement:
    return Measurement(value=hits / n if n else None, samples=n, hits=hits)


@pytest.mark.parametrize(
    ("cand", "stable", "result"),
    [
        (rate(2, 200), rate(20, 2000), "pass"),  # the same rate
        (rate(30, 200), rate(20, 2000), "fail"),  # 15x the stable's
        (rate(3, 200), rate(0, 2000), "pass"),  # 1.5% against the 1% floor: ratio 1.5
        (rate(6, 100), rate(2, 100), "inconclusive"),  # 3x but not significant
        (rate(1, 5), rate(0, 2000), "inconclusive"),  # too few candidate requests
        (Measurement(value=None, samples=0, hits=0.0), rate(0, 500), "inconclusive"),
    ],
)
def test_error_rate_ratio_by_proportions(
    cand: Measurement, stable: Measurement, result: str
) -> None:
    r = judge(ERR_RATIO, cand, stable)
    assert (r.result, r.method) == (result, "proportion"), r.message
    if result != "inconclusive" or "not significant" in r.message:
        assert "two-proportion test" in r.message and r.p_value is not None


def test_error_rate_max_and_proportion_together() -> None:
    metric = ERR_RATIO.model_copy(update={"max": 0.05})
    r = judge(metric, rate(12, 100), rate(1, 10))  # stable too short for the test
    assert r.result == "fail" and r.message.startswith("0.12 > max 0.05")


def test_text_pass_rate_by_proportions() -> None:
    metric = MetricSpec(name="t", builtin="text-pass-rate", min_ratio_to_stable=0.9)
    worse = judge_metric(metric, MetricObservation(rate(50, 100), rate(95, 100)), 20, None, 10)
    same = judge_metric(metric, MetricObservation(rate(90, 100), rate(92, 100)), 20, None, 10)
    short = judge_metric(metric, MetricObservation(rate(1, 8), rate(95, 100)), 20, None, 10)
    assert (worse.result, worse.method) == ("fail", "proportion"), worse.message
    assert "P(candidate lower)" in worse.message
    assert same.result == "pass", same.message
    assert short.result == "inconclusive" and "minSamples 10" in short.message  # minVerified


def test_text_accuracy_keeps_the_mean_ratio() -> None:
    metric = MetricSpec(name="a", builtin="text-accuracy", min_ratio_to_stable=0.9)
    r = judge_metric(
        metric, MetricObservation(Measurement(0.5, 50), Measurement(0.9, 50)), 20, None, 10
    )
    assert (r.result, r.method) == ("fail", "value")


# --- end-to-end latency only at matched load --------------------------------------------------

P95 = MetricSpec(name="p95", builtin="latency-p95", max_ratio_to_stable=1.2)


def test_latency_ratio_at_unequal_load_is_inconclusive_with_both_loads() -> None:
    # 60%: one candidate replica takes 1.5x the stable's requests.
    r = judge(
        P95, Measurement(0.9, 60), Measurement(0.5, 40), candidate_replicas=1, stable_replicas=1
    )
    assert r.result == "inconclusive"
    assert "candidate 60 vs stable 40 requests per ready replica" in r.message
    assert "loadMatchTolerance 0.25" in r.message
    # Said, but it does not hold the step: the other checks decide this window.
    assert r.informational is True and "not judged in this window" in r.message
    errors = MetricResult(name="errors", result="pass")
    assert overall([r, errors]) == "pass"


def test_latency_ratio_at_100_percent_does_not_stall_the_canary() -> None:
    # The stable gets no traffic at 100%: never judged there, never holding the last step.
    r = judge(
        P95, Measurement(0.9, 60), Measurement(None, 0), candidate_replicas=1, stable_replicas=1
    )
    assert (r.result, r.informational) == ("inconclusive", True), r.message


def test_latency_with_max_and_ratio_at_unequal_load_judges_the_max() -> None:
    both = MetricSpec(name="p95", builtin="latency-p95", max=0.8, max_ratio_to_stable=1.2)
    ok = judge(
        both, Measurement(0.7, 60), Measurement(0.3, 40), candidate_replicas=1, stable_replicas=1
    )
    assert (ok.result, ok.informational) == ("pass", None), ok.message
    assert "ratio to stable not judged in this window: loads differ" in ok.message
    bad = judge(
        both, Measurement(0.9, 60), Measurement(0.3, 40), candidate_replicas=1, stable_replicas=1
    )
    assert bad.result == "fail" and "0.9 > max 0.8" in bad.message


def test_latency_ratio_at_matched_load_is_judged() -> None:
    # 60% with two candidate replicas: 30 vs 40 per replica, within 25%... of 1.33: no.
    r = judge(
        P95, Measurement(0.9, 60), Measurement(0.5, 40), candidate_replicas=2, stable_replicas=1
    )
    assert r.result == "inconclusive"
    r = judge(
        P95,
        Measurement(0.9, 60),
        Measurement(0.5, 40),
        candidate_replicas=2,
        stable_replicas=1,
        load_match_tolerance=0.4,
    )
    assert r.result == "fail" and "> 1.2 x stable 0.5" in r.message
    same = judge(
        P95, Measurement(0.55, 50), Measurement(0.5, 50), candidate_replicas=1, stable_replicas=1
    )
    assert same.result == "pass"


def test_latency_ratio_without_ready_replicas_is_inconclusive() -> None:
    r = judge(P95, Measurement(0.9, 50), Measurement(0.5, 50))
    assert r.result == "inconclusive" and "ready replicas unknown" in r.message


def test_latency_rank_test_also_needs_matched_load() -> None:
    """Should a provider give latency distributions, the rank test waits for equal load too."""
    cand = service({"": draws(60, 0.9, 1)})
    stable = service({"": draws(40, 0.5, 2)})
    r = judge(P95, cand, stable, candidate_replicas=1, stable_replicas=1)
    assert (r.result, r.method) == ("inconclusive", "mann-whitney")
    assert "loads differ" in r.message
    cand = service({"": draws(50, 0.9, 1)})
    stable = service({"": draws(50, 0.5, 2)})
    assert judge(P95, cand, stable, candidate_replicas=1, stable_replicas=1).result == "fail"


def test_latency_absolute_max_needs_no_load_match() -> None:
    metric = MetricSpec(name="p95", builtin="latency-p95", max=0.8)
    assert judge(metric, Measurement(0.9, 60), None).result == "fail"


# --- the stable's reference window -------------------------------------------------------------


def spec(**analysis: Any) -> CanarySpec:
    return CanarySpec(
        routing_policy="rp",
        route="r",
        stable_pool="stable",
        candidate_pool="cand",
        interval="10s",
        analysis={"metrics": [SERVICE.model_dump(by_alias=True, exclude_none=True)], **analysis},
    )


def status_at_last_step(started: float, step_started: float) -> CanaryStatus:
    return CanaryStatus(
        phase="Progressing",
        current_step=3,
        canary_weight=100,
        started_at=format_time(T0 + timedelta(seconds=started)),
        step_started_at=format_time(T0 + timedelta(seconds=step_started)),
    )


def test_reference_window_spans_from_before_the_canary_and_is_capped() -> None:
    s = spec()
    plan = plan_analysis(s, status_at_last_step(0, 30), T0 + timedelta(seconds=40))
    assert plan is not None and plan.window_seconds == 10
    assert plan.reference_window_seconds == 100  # 40 s since the start + 60 s lookback
    assert plan.stable_window_seconds(SERVICE) == 100
    p95 = MetricSpec(name="p95", builtin="latency-p95", max_ratio_to_stable=1.2)
    assert plan.stable_window_seconds(p95) == 10  # latency: the same window only
    late = plan_analysis(s, status_at_last_step(0, 7200), T0 + timedelta(seconds=7210))
    assert late is not None and late.reference_window_seconds == 3600
    short = plan_analysis(
        spec(referenceLookback="5m"), status_at_last_step(0, 30), T0 + timedelta(seconds=40)
    )
    assert short is not None and short.reference_window_seconds == 340


@pytest.mark.parametrize(
    ("metric", "expected"),
    [
        (SERVICE, True),
        (MetricSpec(name="e", builtin="error-rate", max_ratio_to_stable=2), True),
        (MetricSpec(name="e", builtin="error-rate", max=0.05), False),  # no stable comparison
        (MetricSpec(name="t", builtin="text-pass-rate", min_ratio_to_stable=0.9), True),
        (MetricSpec(name="a", builtin="text-accuracy", min_ratio_to_stable=0.9), False),
        (MetricSpec(name="p", builtin="latency-p95", max_ratio_to_stable=1.2), False),
        (SERVICE.model_copy(update={"method": "value"}), False),
        (MetricSpec(name="q", query="x", max_ratio_to_stable=2), False),
    ],
)
def test_which_checks_use_the_reference(metric: MetricSpec, expected: bool) -> None:
    assert uses_reference(metric) is expected


class WindowedProvider:
    """Answers service time by pool and window: the stable served traffic only before the
    100% step (its samples lie in the reference window, none in the last 10 s)."""

    def __init__(self, candidate_median: float, stable_in_window: bool = False) -> None:
        self.candidate_median = candidate_median
        self.stable_in_window = stable_in_window  # a step below 100%
        self.queries: list[MetricQuery] = []

    async def measure(self, query: MetricQuery) -> Measurement:
        self.queries.append(query)
        if query.pool == "cand":
            return service(
                {
                    "1": draws(40, self.candidate_median, 1),
                    "2": draws(20, 0.8 * self.candidate_median, 2),
                }
            )
        if query.window_seconds <= 10 and self.stable_in_window:
            return service({"1": draws(40, 0.040, 5), "2": draws(30, 0.032, 6)})
        if query.window_seconds <= 10:
            return Measurement(value=None, samples=0, strata=())
        return service({"1": draws(80, 0.040, 3), "2": draws(60, 0.032, 4)})

    async def close(self) -> None:
        return None


@pytest.mark.parametrize("median", [0.040, 0.060])
def test_last_step_is_not_judged_against_an_earlier_load(median: float) -> None:
    """At 100% the stable serves nothing in the window; its only sample is the reference
    from earlier minutes, and times per image drift with the machine's load (an identical
    candidate was rolled back at 1.28x that way). The rank test is not judged then: the
    check is informational, says why, and neither rolls back nor passes the candidate
    (a slower model is caught at 10-60%, against the stable's same window)."""
    s = spec(failureLimit=1)
    st = status_at_last_step(0, 30)
    now = T0 + timedelta(seconds=40)
    plan = plan_analysis(s, st, now)
    assert plan is not None
    provider = WindowedProvider(median)
    a = asyncio.run(collect_analysis(provider, plan, s, "ns"))
    windows = {(q.pool, q.window_seconds) for q in provider.queries}
    # the stable over its reference, and over the candidate's window (empty here)
    assert windows == {("cand", 10), ("stable", 100), ("stable", 10)}
    ready = PoolReadiness(True, ready_replicas=1)
    d = decide(s, st, Observations(ready, ready, generation=1, analysis=a), now)
    assert d.next_status.phase == "Progressing", d.next_status.message
    [result] = d.next_status.history[-1].metrics
    assert result.result == "inconclusive" and result.informational
    assert "the stable served nothing in this window (100%)" in result.message
    assert result.p_value is None


async def test_controller_observes_ready_replicas() -> None:
    """The shell fills PoolReadiness.ready_replicas from the pools' status, which the
    latency load match divides by."""
    from controller_fakes import FakeObjects, FakeTraffic, canary, pool
    from modelfleet.controllers.canary import CanaryController

    objects = FakeObjects()
    objects.put("modelpools", pool("ns", "stable", replicas=3))
    objects.put("modelpools", pool("ns", "cand", ready=False))
    objects.put("canaries", canary("ns", "c"))
    controller = CanaryController(FakeTraffic(), objects=objects)
    stable = await controller._pool_readiness("ns", "stable")
    cand = await controller._pool_readiness("ns", "cand")
    missing = await controller._pool_readiness("ns", "nope")
    assert (stable.ready, stable.ready_replicas) == (True, 3)
    assert (cand.ready, cand.ready_replicas) == (False, 0)
    assert missing.ready_replicas is None


def test_rollback_event_explains_the_test() -> None:
    s = spec(failureLimit=1)
    st = status_at_last_step(0, 30)
    now = T0 + timedelta(seconds=40)
    plan = plan_analysis(s, st, now)
    assert plan is not None
    a = asyncio.run(collect_analysis(WindowedProvider(0.060, stable_in_window=True), plan, s, "ns"))
    ready = PoolReadiness(True, ready_replicas=1)
    d = decide(s, st, Observations(ready, ready, generation=1, analysis=a), now)
    [event] = [e for e in d.actions if isinstance(e, EmitEvent) and e.reason == "RolledBack"]
    for part in ("Mann-Whitney U within strata", "n 60 candidate / 70 stable", "one-sided p"):
        assert part in event.message, event.message
    assert "P(candidate higher)" in event.message


# The stable's baseline: its same window when that holds enough, the reference otherwise.
def windows(same: dict[str, Sequence[float]], reference: dict[str, Sequence[float]]) -> Any:
    return lambda cand: MetricObservation(
        candidate=service(cand), stable=service(reference), stable_same_window=service(same)
    )


@pytest.mark.parametrize(
    ("case", "cand", "same", "reference", "result", "note"),
    [
        # A slowdown of the whole machine: the stable's own window is as slow as the
        # candidate, its reference (quieter minutes before) 20% faster. Same window: pass.
        ("drift", {"2": draws(60, 0.060, 1)}, {"2": draws(60, 0.060, 2)},
         {"2": draws(600, 0.050, 3)}, "pass", SAME_WINDOW),
        # The stable idle in the window (100%): against the reference alone this
        # candidate would fail; it is not judged against an earlier load instead.
        ("drift, reference only", {"2": draws(60, 0.060, 1)}, {},
         {"2": draws(600, 0.050, 3)}, "inconclusive", "decided on the other checks"),
        # 10%: the candidate runs alone (batch 1), the stable batched in this window.
        ("no shared stratum", {"1": draws(20, 0.090, 4)}, {"4": draws(90, 0.040, 5)},
         {"1": draws(80, 0.060, 6), "4": draws(500, 0.040, 7)}, "fail", REFERENCE),
        # The stable served a few (fewer than minSamples) in the window: the 100% step's
        # tail of requests begun before it. Against the reference this candidate would
        # fail; it is not judged against an earlier load either (CI saw it pass so).
        ("thin same window", {"1": draws(20, 0.060, 8)}, {"1": draws(5, 0.060, 9)},
         {"1": draws(80, 0.050, 10)}, "inconclusive", "decided on the other checks"),
        # Enough stable requests in the window, too few in the shared stratum: the
        # reference, which ran every batch size.
        ("thin shared stratum", {"1": draws(20, 0.060, 8)},
         {"1": draws(5, 0.060, 9), "4": draws(60, 0.040, 14)},
         {"1": draws(80, 0.060, 10), "4": draws(500, 0.040, 15)}, "pass", REFERENCE),
        # A truly slower candidate fails against its same window too.
        ("slower", {"2": draws(60, 0.090, 11)}, {"2": draws(60, 0.060, 12)},
         {"2": draws(600, 0.060, 13)}, "fail", SAME_WINDOW),
    ],
)  # fmt: skip
def test_stable_baseline_prefers_the_same_window(
    case: str,
    cand: dict[str, Sequence[float]],
    same: dict[str, Sequence[float]],
    reference: dict[str, Sequence[float]],
    result: str,
    note: str,
) -> None:
    observed = windows(same, reference)(cand)
    r = judge_metric(SERVICE, observed, min_requests=8)
    assert (r.result, r.method) == (result, "mann-whitney"), (case, r.message)
    assert r.message.endswith(note), (case, r.message)
    assert bool(r.informational) is (result == "inconclusive"), (case, r.message)


def test_rates_prefer_the_same_window_too() -> None:
    er = MetricSpec(name="e", builtin="error-rate", max_ratio_to_stable=2.0, min_samples=50)
    # The stable erred as often as the candidate in this window (an upstream outage),
    # though rarely before: the same window keeps the candidate.
    observed = MetricObservation(
        candidate=rate(10, 100), stable=rate(10, 1000), stable_same_window=rate(9, 100)
    )
    r = judge_metric(er, observed, min_requests=50)
    assert (r.result, r.method) == ("pass", "proportion"), r.message
    assert r.message.endswith(SAME_WINDOW)
    thin = MetricObservation(
        candidate=rate(10, 100), stable=rate(10, 1000), stable_same_window=rate(1, 20)
    )
    r = judge_metric(er, thin, min_requests=50)
    assert (r.result, r.message.endswith(REFERENCE)) == ("fail", True), r.message


# Before minRequests, errors alone can prove an error rate above max (exact binomial).
ERR_MAX = MetricSpec(name="errors", builtin="error-rate", max=0.02)


@pytest.mark.parametrize(
    ("hits", "n", "result"),
    [
        (2, 2, "fail"),  # P(2 of 2 | 2%) = 4e-4
        (3, 4, "fail"),
        (1, 3, "inconclusive"),  # P(>=1 of 3 | 2%) = 0.059: could be bad luck
        (1, 7, "inconclusive"),
        (0, 7, "inconclusive"),  # no errors: still too few requests to pass
        (2, 7, "fail"),  # P(>=2 of 7 | 2%) = 0.0079
    ],
)
def test_errors_alone_fail_before_min_requests(hits: int, n: int, result: str) -> None:
    r = judge_metric(ERR_MAX, MetricObservation(candidate=rate(hits, n)), min_requests=8)
    assert r.result == result, r.message
    if result == "fail":
        assert f"{hits} of {n} requests failed" in r.message and "binomial" in r.message
        assert r.threshold == 0.02
    else:
        assert "not enough samples" in r.message


def test_errors_proof_needs_counts_and_a_max_below_one() -> None:
    no_hits = Measurement(value=1.0, samples=3)
    assert judge_metric(ERR_MAX, MetricObservation(candidate=no_hits), 8).result == ("inconclusive")
    loose = MetricSpec(name="errors", builtin="error-rate", max=1.0)
    assert judge_metric(loose, MetricObservation(candidate=rate(3, 3)), 8).result == (
        "inconclusive"
    )
    strict = MetricSpec(name="errors", builtin="error-rate", max=0.02, alpha=0.0001)
    assert judge_metric(strict, MetricObservation(candidate=rate(2, 2)), 8).result == (
        "inconclusive"
    )


def test_idle_stable_leaves_the_ratio_out_and_judges_an_absolute_limit() -> None:
    """With an absolute max beside the ratio, a window whose stable served nothing (100%)
    judges the max and leaves the ratio out, saying so, instead of a value ratio against
    the earlier reference."""
    metric = SERVICE.model_copy(update={"max": 1.0})
    observed = windows({}, {"2": draws(600, 0.050, 3)})({"2": draws(60, 0.060, 1)})
    r = judge_metric(metric, observed, min_requests=8)
    assert r.result == "pass" and not r.informational, r.message
    assert "ratio to stable not judged in this window: the stable served nothing" in r.message
    assert r.ratio is None, r
