"""The canary state machine: phases x analysis outcomes x manual actions x restarts."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import pytest

from modelfleet.api.canary import CanarySpec, CanaryStatus, MetricSpec
from modelfleet.api.common import format_time
from modelfleet.canary import (
    CONDITION_PROGRESSING,
    CONDITION_READY,
    AnalysisObservation,
    Decision,
    EmitEvent,
    MetricObservation,
    Observations,
    PoolReadiness,
    Promote,
    RecordAnalysis,
    RollBack,
    ScaleDownStable,
    SetWeight,
    decide,
    plan_analysis,
)
from modelfleet.canary import reasons as R
from modelfleet.canary.ports import Measurement

T0 = datetime(2024, 1, 1, tzinfo=UTC)
READY = PoolReadiness(True)
NOT_READY = PoolReadiness(False, "0/1 replicas ready")

Outcome = Literal["pass", "fail", "inconclusive", "no-series", "provider-error"]
OUTCOMES: tuple[Outcome, ...] = ("pass", "fail", "inconclusive", "no-series", "provider-error")


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def make_spec(**kw: Any) -> CanarySpec:
    base: dict[str, Any] = {
        "routing_policy": "rp",
        "route": "images",
        "stable_pool": "stable",
        "candidate_pool": "cand",
        "interval": "10s",
    }
    base.update(kw)
    return CanarySpec(**base)


def obs(**kw: Any) -> Observations:
    base: dict[str, Any] = {"stable": READY, "candidate": READY, "generation": 1}
    base.update(kw)
    return Observations(**base)


def measurement(outcome: Outcome, metric: MetricSpec, stable: bool = False) -> Measurement:
    if outcome == "provider-error":
        return Measurement.failed("connection refused")
    if outcome == "no-series":
        return Measurement(no_series=True)
    if outcome == "inconclusive":
        return Measurement(value=0.0, samples=3)
    is_latency = metric.builtin is not None and (
        metric.builtin.startswith("latency") or metric.builtin == "service-time"
    )
    if outcome == "fail" and not stable:
        return Measurement(value=5.0 if is_latency else 0.5, samples=200)
    return Measurement(value=0.2 if is_latency else 0.0, samples=200)


def analysis(
    spec: CanarySpec, status: CanaryStatus, now: datetime, outcome: Outcome
) -> AnalysisObservation | None:
    plan = plan_analysis(spec, status, now)
    if plan is None:
        return None
    return AnalysisObservation(
        plan=plan,
        metrics={
            m.name: MetricObservation(
                candidate=measurement(outcome, m),
                stable=measurement("pass" if outcome == "fail" else outcome, m, stable=True),
            )
            for m in plan.metrics
        },
    )


def tick(
    spec: CanarySpec,
    status: CanaryStatus,
    now: datetime,
    outcome: Outcome | None = None,
    **obs_kw: Any,
) -> Decision:
    """One controller tick: plan, measure with `outcome`, decide."""
    a = analysis(spec, status, now, outcome) if outcome is not None else None
    return decide(spec, status, replace(obs(**obs_kw), analysis=a), now)


def weights(d: Decision) -> list[int]:
    return [a.weight for a in d.actions if isinstance(a, SetWeight)]


def events(d: Decision) -> list[EmitEvent]:
    return [a for a in d.actions if isinstance(a, EmitEvent)]


def progressing_at(spec: CanarySpec, step: int = 0, started: float = 0.0) -> CanaryStatus:
    """A status that is Progressing at `step`, its window opened at T0 + started."""
    status = decide(spec, CanaryStatus(), obs(), at(started)).next_status
    assert status.phase == "Progressing"
    return status.model_copy(
        update={"current_step": step, "canary_weight": spec.steps[step]}, deep=True
    )


# --- lifecycle ----------------------------------------------------------------------------


def cond(status: CanaryStatus, type_: str) -> tuple[str, str]:
    c = next(c for c in status.conditions if c.type == type_)
    return c.status, c.reason


def test_pending_waits_then_fails_at_deadline() -> None:
    spec = make_spec(progress_deadline="1m")
    d = decide(spec, CanaryStatus(), obs(candidate=NOT_READY), T0)
    st = d.next_status
    assert st.phase == "Pending"
    assert weights(d) == [0]
    assert "candidate pool 'cand' not ready: 0/1 replicas ready" in st.message
    assert "progressDeadline 1m expires at 2024-01-01T00:01:00.000Z" in st.message
    assert d.requeue_after == 5.0
    assert cond(st, CONDITION_PROGRESSING) == ("True", R.POOLS_NOT_READY)
    # Still waiting: nothing changes, no new Event.
    d2 = decide(spec, st, obs(candidate=NOT_READY), at(30))
    assert d2.next_status == st and events(d2) == []
    d3 = decide(spec, st, obs(candidate=NOT_READY), at(58))
    assert d3.requeue_after == pytest.approx(2.0)
    d4 = decide(spec, st, obs(candidate=NOT_READY), at(60))
    assert d4.next_status.phase == "Failed"
    assert weights(d4) == [0]
    assert "pools not ready within progressDeadline 1m" in d4.next_status.message
    assert [e.reason for e in events(d4)] == [R.PROGRESS_DEADLINE_EXCEEDED]
    assert cond(d4.next_status, CONDITION_PROGRESSING) == ("False", R.PROGRESS_DEADLINE_EXCEEDED)
    assert d4.requeue_after is None


def test_happy_path_walks_every_step_then_promotes() -> None:
    spec = make_spec(scale_down_delay="30s")
    d = decide(spec, CanaryStatus(), obs(), T0)
    st = d.next_status
    assert (st.phase, st.current_step, st.canary_weight) == ("Progressing", 0, 10)
    assert weights(d) == [10]
    assert d.requeue_after == pytest.approx(2.0)  # first early check
    t = 0.0
    seen = [st.canary_weight]
    while st.phase == "Progressing":
        assert plan_analysis(spec, st, at(t + 5)) is not None  # early check inside the window
        assert tick(spec, st, at(t + 5), "pass").next_status == st  # early pass: no change
        t += 10
        d = tick(spec, st, at(t), "pass")
        st = d.next_status
        seen.append(st.canary_weight)
    assert seen == [10, 30, 60, 100, 100]
    assert st.phase == "Succeeded"
    assert [h.result for h in st.history] == ["pass"] * 4
    assert Promote("cand") in d.actions and not any(
        isinstance(a, ScaleDownStable) for a in d.actions
    )
    assert d.requeue_after == pytest.approx(30.0)
    assert cond(st, CONDITION_READY) == ("True", R.SUCCEEDED)
    later = decide(spec, st, obs(), at(t + 30))
    assert ScaleDownStable("stable") in later.actions and later.requeue_after is None
    assert later.next_status == st  # level-triggered: nothing to write


@pytest.mark.parametrize("outcome", OUTCOMES)
@pytest.mark.parametrize("step", [0, 3])
def test_full_analysis_outcomes(outcome: Outcome, step: int) -> None:
    spec = make_spec()
    st = progressing_at(spec, step)
    d = tick(spec, st, at(10), outcome)
    nx = d.next_status
    rec = [a for a in d.actions if isinstance(a, RecordAnalysis)]
    assert len(rec) == 1 and nx.history[-1] == rec[0].record
    if outcome == "pass":
        if step == 3:
            assert nx.phase == "Succeeded" and Promote("cand") in d.actions
        else:
            assert (nx.phase, nx.current_step, nx.canary_weight) == ("Progressing", 1, 30)
            assert weights(d) == [30]
    elif outcome == "fail":
        assert nx.phase == "RolledBack" and weights(d) == [0] and nx.canary_weight == 0
        assert "error-rate: 0.5 > max 0.05 (200 requests)" in nx.message
        assert "service-time: 5 > 1.5 x stable 0.2" in nx.message
        assert any(isinstance(a, RollBack) and a.reason == R.ANALYSIS_FAILED for a in d.actions)
        assert [e.type for e in events(d)] == ["Warning"]
        assert cond(nx, CONDITION_PROGRESSING) == ("False", R.ANALYSIS_FAILED)
        assert cond(nx, CONDITION_READY) == ("False", R.ROLLED_BACK)
    else:
        # Missing data holds the weight and retries with a fresh window.
        assert (nx.phase, nx.current_step, nx.canary_weight) == (
            "Progressing",
            step,
            st.canary_weight,
        )
        assert nx.inconclusive_checks == 1 and nx.failed_checks == 0
        assert nx.step_started_at == "2024-01-01T00:00:10.000Z"
        assert weights(d) == [st.canary_weight]
        assert cond(nx, CONDITION_PROGRESSING) == ("True", R.ANALYSIS_INCONCLUSIVE)
        expected = {
            "inconclusive": "not enough samples: 3 candidate requests in the window, "
            "minRequests is 20",
            "no-series": "query returned no series (misconfigured?)",
            "provider-error": "metrics provider unavailable: connection refused",
        }[outcome]
        assert expected in nx.message
        assert all(m.result == "inconclusive" for m in nx.metrics)


@pytest.mark.parametrize("outcome", ["inconclusive", "no-series", "provider-error"])
def test_repeated_inconclusive_pauses_never_promotes_or_rolls_back(outcome: Outcome) -> None:
    spec = make_spec(analysis={"inconclusive_limit": 3})
    st = progressing_at(spec, 3)  # the last step: a pass here would promote
    t = 0.0
    for i in range(1, 4):
        t += 10
        d = tick(spec, st, at(t), outcome)
        st = d.next_status
        assert st.inconclusive_checks == i
    assert st.phase == "Paused" and st.canary_weight == 100 and weights(d) == [100]
    assert cond(st, CONDITION_PROGRESSING) == ("False", R.PAUSED_NO_DATA)
    assert [e.reason for e in events(d)] == [R.PAUSED_NO_DATA]
    want = {
        "inconclusive": "not enough samples",
        "no-series": "query returned no series (misconfigured?)",
        "provider-error": "metrics provider unavailable: connection refused",
    }[outcome]
    assert want in st.message and "after 3 inconclusive analyses" in st.message
    # Nothing more happens while paused, whatever the data says; no analysis is planned.
    assert plan_analysis(spec, st, at(t + 100)) is None
    d = decide(spec, st, obs(), at(t + 100))
    assert d.next_status == st and d.requeue_after is None


def test_failure_limit_holds_then_rolls_back_and_pass_resets() -> None:
    spec = make_spec(analysis={"failure_limit": 2})
    st = progressing_at(spec, 1)
    st = tick(spec, st, at(10), "fail").next_status
    assert (st.phase, st.failed_checks, st.canary_weight) == ("Progressing", 1, 30)
    assert "analysis failed (1/2)" in st.message
    # inconclusive neither confirms nor clears a failure streak
    st = tick(spec, st, at(20), "inconclusive").next_status
    assert (st.failed_checks, st.inconclusive_checks) == (1, 1)
    passed = tick(spec, st, at(30), "pass").next_status
    assert (passed.failed_checks, passed.inconclusive_checks, passed.current_step) == (0, 0, 2)
    d = tick(spec, st, at(30), "fail")
    assert d.next_status.phase == "RolledBack"
    assert "after 2 failed analyses (failureLimit 2)" in d.next_status.message


def test_fail_resets_inconclusive_streak() -> None:
    spec = make_spec(analysis={"failure_limit": 3})
    st = progressing_at(spec)
    st = tick(spec, st, at(10), "inconclusive").next_status
    st = tick(spec, st, at(20), "fail").next_status
    assert (st.failed_checks, st.inconclusive_checks) == (1, 0)


# --- early abort -------------------------------------------------------------------------


def test_early_check_rolls_back_inside_the_window() -> None:
    spec = make_spec()
    st = progressing_at(spec, 1)
    plan = plan_analysis(spec, st, at(4.5))
    assert plan is not None and plan.kind == "early" and plan.window_seconds == 4
    assert [m.name for m in plan.metrics] == ["error-rate"]
    d = tick(spec, st, at(4.5), "fail")
    assert d.next_status.phase == "RolledBack" and weights(d) == [0]
    assert "early check over 4s" in d.next_status.message
    assert any(isinstance(a, RecordAnalysis) and a.early for a in d.actions)


@pytest.mark.parametrize("outcome", ["pass", "inconclusive", "no-series", "provider-error"])
def test_early_check_only_acts_on_failure(outcome: Outcome) -> None:
    spec = make_spec()
    st = progressing_at(spec, 1)
    d = tick(spec, st, at(4.5), outcome)
    assert d.next_status == st and weights(d) == [30] and events(d) == []
    assert d.requeue_after == pytest.approx(1.5)  # next early check at 6 s


def test_no_early_plan_before_first_period_or_without_error_rate() -> None:
    spec = make_spec()
    st = progressing_at(spec)
    assert plan_analysis(spec, st, at(1.0)) is None
    latency_only = make_spec(
        analysis={"metrics": [{"name": "p95", "builtin": "latency-p95", "max": 1.0}]}
    )
    st2 = progressing_at(latency_only)
    assert plan_analysis(latency_only, st2, at(5)) is None
    assert decide(latency_only, st2, obs(), at(5)).requeue_after == pytest.approx(5.0)


def test_rollback_within_15s_of_candidate_starting_to_fail() -> None:
    """Simulated controller loop: ticks only when requeue_after says so, 1 s of I/O lag."""
    spec = make_spec(interval="10s")
    fail_at = 23.0  # mid-window of step 2
    rps = 20.0  # candidate requests per second

    def measure(m: MetricSpec, start: float, end: float) -> Measurement:
        total = (end - start) * rps
        bad = max(0.0, end - max(start, fail_at)) * rps
        if m.builtin == "error-rate":
            return Measurement(value=bad / total if total else None, samples=int(total))
        return Measurement(value=0.2, samples=int(total))

    st = decide(spec, CanaryStatus(), obs(), T0).next_status
    now = 0.0
    rolled_back_at = None
    for _ in range(200):
        plan = plan_analysis(spec, st, at(now))
        a = None
        if plan is not None:
            a = AnalysisObservation(
                plan=plan,
                metrics={
                    m.name: MetricObservation(
                        candidate=measure(m, now - plan.window_seconds, now),
                        stable=Measurement(value=0.2, samples=1000),
                    )
                    for m in plan.metrics
                },
            )
        d = decide(spec, st, replace(obs(), analysis=a), at(now))
        st = d.next_status
        if st.phase == "RolledBack":
            rolled_back_at = now
            break
        assert d.requeue_after is not None
        now += d.requeue_after + 1.0  # the controller's own latency
    assert rolled_back_at is not None
    assert rolled_back_at - fail_at <= 15.0


# --- manual actions ----------------------------------------------------------------------


def status_in(phase: str, spec: CanarySpec) -> CanaryStatus:
    if phase == "Pending":
        return decide(spec, CanaryStatus(), obs(candidate=NOT_READY), T0).next_status
    st = progressing_at(spec, 1)
    if phase == "Progressing":
        return st
    if phase == "Paused":
        return decide(spec.model_copy(update={"paused": True}), st, obs(), at(1)).next_status
    if phase == "Succeeded":
        return decide(spec, st, obs(action="promote:x"), at(1)).next_status
    if phase == "RolledBack":
        return decide(spec, st, obs(action="abort:x"), at(1)).next_status
    if phase == "Failed":
        pending = status_in("Pending", spec)
        return decide(spec, pending, obs(candidate=NOT_READY), at(3600)).next_status
    raise AssertionError(phase)


PHASES = ["Pending", "Progressing", "Paused", "Succeeded", "RolledBack", "Failed"]
# phase after the action (spec.paused false, pools ready); None = ignored with an Event
EXPECTED: dict[tuple[str, str], str | None] = {
    ("Pending", "abort"): "RolledBack",
    ("Progressing", "abort"): "RolledBack",
    ("Paused", "abort"): "RolledBack",
    ("Pending", "promote"): "Succeeded",
    ("Progressing", "promote"): "Succeeded",
    ("Paused", "promote"): "Succeeded",
    ("Paused", "retry"): "Progressing",
    ("RolledBack", "retry"): "Progressing",
    ("Failed", "retry"): "Progressing",
    ("Paused", "resume"): "Progressing",
}


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("verb", ["abort", "promote", "retry", "resume"])
def test_manual_action_matrix(phase: str, verb: str) -> None:
    spec = make_spec()
    st = status_in(phase, spec)
    assert st.phase == phase
    now = at(2)
    # In Pending the stable pool is kept unready so the canary cannot start by itself.
    o = obs(action=f"{verb}:42", stable=NOT_READY if phase == "Pending" else READY)
    d = decide(spec, st, o, now)
    nx = d.next_status
    assert nx.last_action == f"{verb}:42"
    want = EXPECTED.get((phase, verb))
    if want is None:
        assert nx.phase == phase
        assert [e.reason for e in events(d)] == [R.ACTION_IGNORED]
        assert f"modelfleet.io/action='{verb}:42' ignored" in events(d)[0].message
    else:
        assert nx.phase == want
    if want == "RolledBack":
        assert weights(d) == [0] and cond(nx, CONDITION_PROGRESSING) == ("False", R.ABORTED)
    if want == "Succeeded":
        assert Promote("cand") in d.actions and nx.canary_weight == 100
        assert cond(nx, CONDITION_READY) == ("True", R.PROMOTED)
    if verb == "retry" and want:
        assert (nx.current_step, nx.canary_weight, nx.failed_checks) == (0, 10, 0)
        assert nx.inconclusive_checks == 0 and weights(d) == [10]
    if verb == "resume" and want:
        assert nx.current_step == st.current_step and nx.step_started_at == format_time(now)
    # Handled once: the same annotation again changes nothing and emits nothing.
    again = decide(spec, nx, o, now)
    assert again.next_status == nx and events(again) == []


def test_promote_needs_a_ready_candidate_and_invalid_actions_warn() -> None:
    spec = make_spec()
    st = status_in("Progressing", spec)
    d = decide(spec, st, obs(candidate=NOT_READY, action="promote:1"), at(2))
    assert d.next_status.phase == "Progressing"
    assert "candidate pool not ready" in events(d)[0].message
    d = decide(spec, st, obs(action="launch:1"), at(2))
    assert [e.reason for e in events(d)] == [R.INVALID_ACTION]
    assert "unknown action 'launch'" in events(d)[0].message
    assert d.next_status.last_action == "launch:1"


def test_resume_refused_while_spec_paused_and_retry_stays_paused() -> None:
    spec = make_spec(paused=True)
    st = status_in("Paused", make_spec())
    d = decide(spec, st, obs(action="resume:1"), at(3))
    assert d.next_status.phase == "Paused" and "spec.paused is true" in events(d)[0].message
    d = decide(spec, st, obs(action="retry:1"), at(3))
    assert d.next_status.phase == "Paused" and d.next_status.current_step is None
    assert weights(d) == [0]


def test_spec_pause_holds_and_unpause_resumes_same_step_with_fresh_window() -> None:
    spec = make_spec()
    paused_spec = make_spec(paused=True)
    st = progressing_at(spec, 2)
    assert plan_analysis(paused_spec, st, at(10)) is None
    d = decide(paused_spec, st, obs(), at(5))
    p = d.next_status
    assert p.phase == "Paused" and weights(d) == [60] and d.requeue_after is None
    assert cond(p, CONDITION_PROGRESSING) == ("False", R.PAUSED_BY_USER)
    assert decide(paused_spec, p, obs(), at(500)).next_status == p
    d = decide(spec, p, obs(), at(600))
    r = d.next_status
    assert (r.phase, r.current_step, r.canary_weight) == ("Progressing", 2, 60)
    assert r.step_started_at == "2024-01-01T00:10:00.000Z"
    assert [e.reason for e in events(d)] == [R.RESUMED]


def test_no_data_pause_survives_spec_pause_toggle_until_resume_action() -> None:
    spec = make_spec(analysis={"inconclusive_limit": 1})
    st = tick(spec, progressing_at(spec), at(10), "no-series").next_status
    assert st.phase == "Paused"
    user = decide(make_spec(analysis={"inconclusive_limit": 1}, paused=True), st, obs(), at(11))
    assert cond(user.next_status, CONDITION_PROGRESSING)[1] == R.PAUSED_BY_USER
    back = decide(spec, user.next_status, obs(), at(12)).next_status
    assert back.phase == "Paused" and cond(back, CONDITION_PROGRESSING)[1] == R.PAUSED_NO_DATA
    assert "query returned no series (misconfigured?)" in back.message
    resumed = decide(spec, back, obs(action="resume:7"), at(13)).next_status
    assert (resumed.phase, resumed.inconclusive_checks) == ("Progressing", 0)


# --- restart safety ----------------------------------------------------------------------


@pytest.mark.parametrize("outcome", OUTCOMES)
@pytest.mark.parametrize("action", [None, "abort:1", "promote:1", "retry:1", "resume:1"])
def test_decide_leaves_its_inputs_alone(outcome: Outcome, action: str | None) -> None:
    """decide() works on a copy: the status it was given (what the controller compares
    against to skip unchanged writes) must come back untouched, and a replayed tick on
    an equal copy of the inputs gets the same answer."""
    spec = make_spec()
    st = progressing_at(spec, 1)
    before = st.model_copy(deep=True)
    a = analysis(spec, st, at(10), outcome)
    o = replace(obs(action=action), analysis=a)
    first = decide(spec, st, o, at(10))
    assert st == before
    assert first.next_status != st or action is None, "every action changes lastAction"
    replay = decide(spec.model_copy(deep=True), before, o, at(10))
    assert replay == first


@pytest.mark.parametrize("outcome", OUTCOMES)
def test_status_written_but_action_not_applied_is_idempotent(outcome: Outcome) -> None:
    """Crash after the status write: the next tick sees the new status with the old
    measurements; nothing is counted twice and the weight is re-applied."""
    spec = make_spec(analysis={"failure_limit": 3})
    st = progressing_at(spec, 1)
    a = analysis(spec, st, at(10), outcome)
    first = decide(spec, st, replace(obs(), analysis=a), at(10)).next_status
    d = decide(spec, first, replace(obs(), analysis=a), at(10.5))
    assert d.next_status.failed_checks == first.failed_checks
    assert d.next_status.inconclusive_checks == first.inconclusive_checks
    assert d.next_status.current_step == first.current_step
    assert len(d.next_status.history) == len(first.history)
    assert weights(d) == [first.canary_weight]
    assert [x for x in d.actions if isinstance(x, RecordAnalysis)] == []


def test_stale_analysis_for_another_window_is_ignored() -> None:
    spec = make_spec()
    st = progressing_at(spec, 1)
    a = analysis(spec, st, at(10), "fail")
    assert a is not None
    stale = replace(a, plan=replace(a.plan, step_started_at="2023-12-31T23:59:00.000Z"))
    d = decide(spec, st, replace(obs(), analysis=stale), at(10))
    assert d.next_status == st and d.requeue_after == 0.0


def test_conditions_keep_transition_time_while_reason_unchanged() -> None:
    spec = make_spec()
    st = progressing_at(spec, 0)
    c0 = next(c for c in st.conditions if c.type == CONDITION_PROGRESSING)
    st2 = tick(spec, st, at(10), "pass").next_status  # step advance: same status+reason
    c1 = next(c for c in st2.conditions if c.type == CONDITION_PROGRESSING)
    assert (c1.status, c1.reason) == (c0.status, c0.reason)
    assert c1.last_transition_time == c0.last_transition_time
    assert c1.message != c0.message and "step 2/4" in c1.message
    st3 = tick(spec, st2, at(20), "inconclusive").next_status
    c2 = next(c for c in st3.conditions if c.type == CONDITION_PROGRESSING)
    assert c2.reason == R.ANALYSIS_INCONCLUSIVE
    assert c2.last_transition_time == "2024-01-01T00:00:20Z"
    assert c2.observed_generation == 1


def test_steps_changed_mid_run_adopts_new_weight() -> None:
    spec = make_spec()
    st = progressing_at(spec, 3)
    shorter = make_spec(steps=[50, 100])
    d = decide(shorter, st, obs(generation=2), at(3))
    nx = d.next_status
    assert (nx.current_step, nx.canary_weight, nx.observed_generation) == (1, 100, 2)
    assert nx.step_started_at == format_time(at(3))


def test_history_is_bounded() -> None:
    spec = make_spec(analysis={"inconclusive_limit": 1000})
    st = progressing_at(spec)
    for i in range(1, 40):
        st = tick(spec, st, at(10 * i), "inconclusive").next_status
    assert len(st.history) == 30
