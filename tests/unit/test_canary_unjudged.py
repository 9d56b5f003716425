"""A check that windows may leave unjudged (a latency ratio at unequal load per replica, a
rank test whose stable served next to nothing) must be judged in some window before the
candidate takes all the traffic: otherwise the swap would rest on no measurement of it.
Until then the canary holds the step before 100% and, after inconclusiveLimit such
windows, pauses for a person (resume or promote)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from modelfleet.api.canary import (
    AnalysisSpec,
    CanarySpec,
    CanaryStatus,
    CheckResult,
    MetricResult,
    MetricSpec,
)
from modelfleet.canary import (
    AnalysisObservation,
    EmitEvent,
    MetricObservation,
    Observations,
    PoolReadiness,
    decide,
    plan_analysis,
)
from modelfleet.canary import reasons as R
from modelfleet.canary.analysis import needs_a_judged_window, still_unjudged
from modelfleet.canary.ports import Measurement

T0 = datetime(2026, 1, 1, tzinfo=UTC)
READY = PoolReadiness(True, ready_replicas=1)
ERRORS = MetricSpec(name="errors", builtin="error-rate", max=0.1)
P95 = MetricSpec(name="p95", builtin="latency-p95", max_ratio_to_stable=2.0)
P95_CAPPED = MetricSpec(name="p95", builtin="latency-p95", max=1.0, max_ratio_to_stable=2.0)

# Requests (candidate, stable) in a window at a weight; the i-th window at that weight.
Loads = Callable[[int, int], tuple[int, int]]


def spec(steps: list[int], p95: MetricSpec = P95) -> CanarySpec:
    return CanarySpec(
        routing_policy="rp",
        route="images",
        stable_pool="stable",
        candidate_pool="cand",
        steps=steps,
        interval="10s",
        analysis=AnalysisSpec(min_requests=3, inconclusive_limit=2, metrics=[ERRORS, p95]),
    )


def by_weight(split: dict[int, list[tuple[int, int]]]) -> Loads:
    """Loads per weight; the last entry repeats for later windows at that weight."""
    return lambda weight, i: split[weight][min(i, len(split[weight]) - 1)]


def measured(
    s: CanarySpec, st: CanaryStatus, now: datetime, loads: Loads, seen: dict[int, int]
) -> AnalysisObservation | None:
    plan = plan_analysis(s, st, now)
    if plan is None:
        return None
    weight = st.canary_weight or 0
    c, n = loads(weight, seen.get(weight, 0))
    if plan.kind == "full":
        seen[weight] = seen.get(weight, 0) + 1
    values = {"errors": 0.0, "p95": 0.2, "p99": 0.3}
    return AnalysisObservation(
        plan=plan,
        metrics={
            m.name: MetricObservation(
                candidate=Measurement(value=values[m.name], samples=c),
                stable=Measurement(value=values[m.name], samples=n),
            )
            for m in plan.metrics
        },
    )


def drive(
    s: CanarySpec, loads: Loads, st: CanaryStatus | None = None, action: str | None = None
) -> tuple[CanaryStatus, list[EmitEvent]]:
    """Tick every 5 s until the canary ends or pauses; the status and all Events."""
    st = st if st is not None else CanaryStatus()
    now, seen, said = T0, dict[int, int](), list[EmitEvent]()
    for _ in range(60):
        a = measured(s, st, now, loads, seen)
        o = Observations(READY, READY, generation=1, analysis=a, action=action)
        d = decide(s, st, o, now)
        said += [x for x in d.actions if isinstance(x, EmitEvent)]
        moved = d.next_status.phase != st.phase
        st = d.next_status
        if st.phase in ("Succeeded", "RolledBack", "Failed") or (st.phase == "Paused" and moved):
            break
        now += timedelta(seconds=5)
    return st, said


EVEN = (12, 12)
LOPSIDED_20, LOPSIDED_50, ALONE = (4, 36), (8, 16), (24, 0)


@pytest.mark.parametrize(
    ("case", "steps", "p95", "split", "phase", "weight"),
    [
        # Judged at 50% (even loads): the 100% window, where the stable serves nothing, is
        # informational and the candidate succeeds.
        ("judged at 50%", [20, 50, 100], P95, {20: [LOPSIDED_20], 50: [EVEN], 100: [ALONE]},
         "Succeeded", 100),
        # The first 50% window is lopsided; the held one is even: it goes on.
        ("judged on the held window", [20, 50, 100], P95,
         {20: [LOPSIDED_20], 50: [LOPSIDED_50, EVEN], 100: [ALONE]}, "Succeeded", 100),
        # Never on equal footing below 100%: held at 50%, then paused there.
        ("never judged", [20, 50, 100], P95,
         {20: [LOPSIDED_20], 50: [LOPSIDED_50], 100: [ALONE]}, "Paused", 50),
        # A single 100% step can never judge a ratio to a stable that serves nothing.
        ("only a 100% step", [100], P95, {100: [ALONE]}, "Paused", 100),
        # An absolute limit is judged in every window: nothing is left unjudged.
        ("absolute limit too", [20, 50, 100], P95_CAPPED,
         {20: [LOPSIDED_20], 50: [LOPSIDED_50], 100: [ALONE]}, "Succeeded", 100),
    ],
)  # fmt: skip
def test_the_candidate_takes_all_traffic_only_once_each_check_was_judged(
    case: str,
    steps: list[int],
    p95: MetricSpec,
    split: dict[int, list[tuple[int, int]]],
    phase: str,
    weight: int,
) -> None:
    st, said = drive(spec(steps, p95), by_weight(split))
    assert (st.phase, st.canary_weight) == (phase, weight), (case, st.message)
    if phase == "Paused":
        assert st.unjudged_metrics == ["p95"], case
        assert "p95 has not been judged in any window of this canary" in st.message, case
        assert "loads differ" in st.message or "ratio" in st.message, st.message
        assert "promote:<id>" in st.message and "resume:<id>" in st.message, st.message
        paused = [e for e in said if e.reason == R.PAUSED_NO_DATA]
        assert len(paused) == 1 and paused[0].type == "Warning", said
        # The held windows passed their checks, but they are recorded (and counted) as
        # inconclusive: no step is passed twice in the history.
        assert [h.result for h in st.history[-2:]] == ["inconclusive"] * 2, case
        assert st.inconclusive_checks == 2, case
        assert all(m.result == "pass" for m in st.history[-1].metrics if m.name == "errors")
    else:
        assert st.unjudged_metrics == [], case
    if case == "judged on the held window":
        held = [e for e in said if e.reason == R.ANALYSIS_INCONCLUSIVE]
        assert len(held) == 1 and "holding 50% for a window that judges it" in held[0].message
        passed = [h.step for h in st.history if h.result == "pass"]
        assert passed == [0, 1, 2], st.history


def test_a_paused_unjudged_canary_continues_when_resumed_or_promoted() -> None:
    s = spec([20, 50, 100])
    lopsided = by_weight({20: [LOPSIDED_20], 50: [LOPSIDED_50], 100: [ALONE]})
    paused, _ = drive(s, lopsided)
    assert paused.phase == "Paused", paused.message
    # Paused stays paused on its own, whatever the loads now are.
    still, _ = drive(s, by_weight({50: [EVEN]}), st=paused)
    assert still.phase == "Paused" and still.canary_weight == 50, still.message
    # resume: a fresh window at 50%, even this time, then 100% and success.
    resumed, _ = drive(s, by_weight({50: [EVEN], 100: [ALONE]}), st=paused, action="resume:1")
    assert resumed.phase == "Succeeded" and resumed.unjudged_metrics == [], resumed.message
    # promote: a person accepts the candidate without the check.
    promoted, _ = drive(s, lopsided, st=paused, action="promote:1")
    assert promoted.phase == "Succeeded" and promoted.canary_weight == 100, promoted.message


def test_retry_starts_a_new_run_that_must_judge_again() -> None:
    """A rolled back canary retried: the checks judged in the old run count for nothing."""
    s = spec([20, 50, 100])
    failing = by_weight({20: [(40, 40)]})
    st, now = CanaryStatus(), T0
    for _ in range(6):  # step 1's full window judges p95 (even loads), and errors fail it
        plan = plan_analysis(s, st, now)
        a = None
        if plan is not None:
            c, n = failing(20, 0)
            erroring = {"errors": 0.5 if plan.kind == "full" else 0.0, "p95": 0.2}
            a = AnalysisObservation(
                plan=plan,
                metrics={
                    m.name: MetricObservation(
                        candidate=Measurement(value=erroring[m.name], samples=c),
                        stable=Measurement(value=0.0 if m.name == "errors" else 0.2, samples=n),
                    )
                    for m in plan.metrics
                },
            )
        st = decide(s, st, Observations(READY, READY, generation=1, analysis=a), now).next_status
        now += timedelta(seconds=5)
    assert st.phase == "RolledBack" and st.unjudged_metrics == [], st.message
    lopsided = by_weight({20: [LOPSIDED_20], 50: [LOPSIDED_50]})
    again, _ = drive(s, lopsided, st, "retry:1")
    assert (again.phase, again.canary_weight) == ("Paused", 50), again.message
    assert again.unjudged_metrics == ["p95"], again.message


@pytest.mark.parametrize(
    ("metric", "needs"),
    [
        (P95, True),
        (P95_CAPPED, False),
        (ERRORS, False),
        (MetricSpec(name="st", builtin="service-time", max_ratio_to_stable=1.2), True),
        (MetricSpec(name="ta", builtin="text-accuracy", min_ratio_to_stable=0.9), True),
        (MetricSpec(name="ta", builtin="text-accuracy", min=0.8, min_ratio_to_stable=0.9), False),
    ],
)
def test_which_checks_need_a_judged_window(metric: MetricSpec, needs: bool) -> None:
    assert needs_a_judged_window(metric) is needs


def r(
    name: str, result: CheckResult, informational: bool | None = None, unjudged: bool | None = None
) -> MetricResult:
    return MetricResult(name=name, result=result, informational=informational, unjudged=unjudged)


@pytest.mark.parametrize(
    ("result", "pending"),
    [
        (r("p95", "pass"), []),
        (r("p95", "fail"), []),
        (r("p95", "inconclusive"), ["p95"]),  # too few samples: holds, still to judge
        (r("p95", "inconclusive", informational=True, unjudged=True), ["p95"]),
        (r("p95", "inconclusive", informational=True), []),  # not applicable (no text)
        (r("other", "pass"), ["p95"]),
    ],
)
def test_still_unjudged(result: MetricResult, pending: list[str]) -> None:
    assert still_unjudged(["p95"], [result]) == pending


def test_every_check_never_judged_is_named() -> None:
    p99 = MetricSpec(name="p99", builtin="latency-p99", max_ratio_to_stable=2.0)
    s = spec([20, 50, 100])
    s = s.model_copy(
        update={"analysis": s.analysis.model_copy(update={"metrics": [ERRORS, P95, p99]})}
    )
    st, _ = drive(s, by_weight({20: [LOPSIDED_20], 50: [LOPSIDED_50]}))
    assert st.phase == "Paused" and st.unjudged_metrics == ["p95", "p99"], st.message
    assert "p95, p99 have not been judged in any window" in st.message, st.message
