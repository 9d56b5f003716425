"""The canary state machine: decide() (plan_analysis() is in plan.py). Pure: no clock, no I/O.

One controller tick:

    plan = plan_analysis(spec, status, now)
    analysis = await collect_analysis(provider, plan, ...) if plan else None
    decision = decide(spec, status, Observations(..., analysis=analysis), now)
    apply decision.actions (each idempotent), write decision.next_status if it changed,
    requeue after decision.requeue_after seconds.

Restart safety: all state lives in status. An analysis is tied to its window by
(currentStep, stepStartedAt); consuming it always moves stepStartedAt (or leaves the
phase), so the same result can never be counted twice, and a result for an older
window is ignored. SetWeight(status.canaryWeight) is emitted on every tick, so a crash
between the status write and applying the weight heals on the next tick.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Literal

from modelfleet.api.canary import (
    CanaryPhase,
    CanarySpec,
    CanaryStatus,
    MetricResult,
    StepRecord,
)
from modelfleet.api.common import format_time, parse_duration, parse_time
from modelfleet.api.conditions import ConditionStatus, get_condition, set_condition
from modelfleet.canary import capacity, replay
from modelfleet.canary import reasons as R
from modelfleet.canary.analysis import (
    judge_metric,
    needs_a_judged_window,
    overall,
    still_unjudged,
    summarize,
)
from modelfleet.canary.manual import (
    ACTION_ANNOTATION,
    ManualAction,
    parse_action,
    paused_for_lack_of_data,
    refusal,
)
from modelfleet.canary.plan import aware, early_check_period, early_metrics, interval_seconds
from modelfleet.canary.types import (
    Action,
    AnalysisObservation,
    Decision,
    EmitEvent,
    Observations,
    Promote,
    RecordAnalysis,
    RollBack,
    ScaleDownStable,
    SetWeight,
)

PENDING_POLL_SECONDS = 5.0
HISTORY_LIMIT = 30

CONDITION_READY = "Ready"
CONDITION_PROGRESSING = "Progressing"


def decide(
    spec: CanarySpec, status: CanaryStatus, observations: Observations, now: datetime
) -> Decision:
    """Next status and the actions to apply. Same inputs, same output."""
    return _Tick(spec, status, observations, aware(now)).run()


class _Tick:
    """One decide() call; mutable scratch state kept out of the public surface."""

    def __init__(
        self, spec: CanarySpec, status: CanaryStatus, obs: Observations, now: datetime
    ) -> None:
        self.spec = spec
        self.old = status
        self.st = status.model_copy(deep=True)
        self.obs = obs
        self.now = now
        self.ts = format_time(now)
        self.steps = spec.steps
        self.actions: list[Action] = []
        self.events: list[EmitEvent] = []
        prog = get_condition(status.conditions, CONDITION_PROGRESSING)
        self.reason: str = prog.reason if prog is not None and prog.reason else R.POOLS_NOT_READY

    # --- driver -----------------------------------------------------------------------

    def run(self) -> Decision:
        st = self.st
        if self.obs.generation is not None:
            st.observed_generation = self.obs.generation
        if st.phase is None:
            self._reset()
        if self.obs.action and self.obs.action != st.last_action:
            st.last_action = self.obs.action
            self._manual(parse_action(self.obs.action))
        phase = st.phase
        if phase == "Pending":
            self._pending()
        elif phase == "Progressing":
            self._progressing()
        elif phase == "Paused":
            self._paused()
        # Succeeded, RolledBack, Failed are terminal; `retry` is the way out.
        return self._finish()

    def _finish(self) -> Decision:
        st = self.st
        head: list[Action] = []
        requeue: float | None = None
        if st.phase in ("Pending", "RolledBack", "Failed"):
            st.canary_weight = 0
            head.append(SetWeight(0))
        elif st.phase in ("Progressing", "Paused"):
            head.append(SetWeight(st.canary_weight or 0))
        elif st.phase == "Succeeded":
            head.append(Promote(self.spec.candidate_pool))
            due = parse_time(st.finished_at or self.ts) + parse_duration(self.spec.scale_down_delay)
            if self.now >= due:
                head.append(ScaleDownStable(self.spec.stable_pool))
            else:
                requeue = (due - self.now).total_seconds()
        if st.phase == "Pending":
            requeue = self._pending_requeue()
        elif st.phase == "Progressing":
            requeue = self._progressing_requeue()
        elif st.phase == "Paused" and self.reason == R.CAPACITY_STARVED:
            requeue = capacity.WAIT_POLL_SECONDS  # pool status is not watched: look again
        self._conditions()
        if len(st.history) > HISTORY_LIMIT:
            st.history = st.history[-HISTORY_LIMIT:]
        return Decision(
            next_status=st, actions=head + self.actions + list(self.events), requeue_after=requeue
        )

    # --- helpers ----------------------------------------------------------------------

    def _event(self, type_: Literal["Normal", "Warning"], reason: str, message: str) -> None:
        self.events.append(EmitEvent(type=type_, reason=reason, message=message))

    def _where(self) -> str:
        st = self.st
        if st.current_step is None:
            return "before the first step"
        return f"at step {st.current_step + 1}/{len(self.steps)} ({st.canary_weight}%)"

    def _reset(self) -> None:
        st = self.st
        st.phase = "Pending"
        st.started_at = self.ts
        st.finished_at = None
        st.current_step = None
        st.canary_weight = 0
        st.step_started_at = None
        st.failed_checks = 0
        st.inconclusive_checks = 0
        st.unjudged_metrics = []
        st.metrics = []
        st.replay = None  # a new run replays again
        self.reason = R.POOLS_NOT_READY

    def _deadline(self) -> datetime:
        started = parse_time(self.st.started_at or self.ts)
        return started + parse_duration(self.spec.progress_deadline)

    def _enter_step(self, index: int, why: str) -> None:
        st = self.st
        st.phase = "Progressing"
        st.current_step = index
        st.canary_weight = self.steps[index]
        st.step_started_at = self.ts
        self.reason = R.STEP_PROGRESSING
        st.message = self._progress_message(why)
        self._event("Normal", R.STEP_PROGRESSING, st.message)

    def _progress_message(self, why: str) -> str:
        st = self.st
        assert st.step_started_at is not None
        due = parse_time(st.step_started_at) + timedelta(seconds=interval_seconds(self.spec))
        prefix = f"{why}; " if why else ""
        return (
            f"{prefix}step {(st.current_step or 0) + 1}/{len(self.steps)}: candidate weight "
            f"{st.canary_weight}%, analysis at {format_time(due)}"
        )

    def _terminate(self, phase: CanaryPhase, reason: str, message: str) -> None:
        st = self.st
        st.phase = phase
        st.finished_at = self.ts
        st.message = message
        self.reason = reason

    def _rollback(self, reason: str, message: str) -> None:
        self._terminate("RolledBack", reason, message)
        self.st.canary_weight = 0
        self.actions.append(RollBack(reason=reason, message=message))
        self._event("Warning", R.ROLLED_BACK, message)

    def _succeed(self, reason: str, message: str) -> None:
        self._terminate("Succeeded", reason, message)
        self.st.current_step = len(self.steps) - 1
        self.st.canary_weight = 100
        self._event("Normal", reason, message)

    def _ignore(self, action: ManualAction, why: str) -> None:
        self._event(
            "Warning",
            R.ACTION_IGNORED,
            f"{ACTION_ANNOTATION}={action.raw!r} ignored: canary is {self.st.phase}; {why}",
        )

    # --- manual actions ---------------------------------------------------------------

    def _manual(self, action: ManualAction) -> None:
        st = self.st
        if action.verb is None:
            self._event("Warning", R.INVALID_ACTION, action.error or "invalid action")
            return
        assert st.phase is not None  # run() makes a new canary Pending first
        candidate = self.obs.candidate
        why = refusal(
            action.verb,
            st.phase,
            spec_paused=self.spec.paused,
            candidate_unready=None if candidate.ready else candidate.message,
        )
        if why is not None:
            self._ignore(action, why)
            return
        by = f"{ACTION_ANNOTATION}={action.raw!r}"
        if action.verb == "abort":
            self._rollback(R.ABORTED, f"aborted by {by} {self._where()}; candidate weight 0%")
        elif action.verb == "promote":
            self._succeed(
                R.PROMOTED,
                f"promoted by {by} {self._where()}, skipping the remaining steps; "
                f"route now serves pool {self.spec.candidate_pool!r}",
            )
        elif action.verb == "retry":
            self._reset()
            st.message = f"retried by {by}: starting again from step 1"
            self._event("Normal", R.RETRIED, st.message)
        else:
            self._resume(f"resumed by {by}")

    def _resume(self, why: str) -> None:
        st = self.st
        st.inconclusive_checks = 0
        if st.current_step is None:
            # Paused before it ever started: wait for pools again with a fresh deadline.
            st.phase = "Pending"
            st.started_at = self.ts
            self.reason = R.POOLS_NOT_READY
            st.message = why
            self._event("Normal", R.RESUMED, why)
            self._pending()
            return
        st.phase = "Progressing"
        st.step_started_at = self.ts  # a fresh window: the paused time is not analysed
        self.reason = R.STEP_PROGRESSING
        st.message = self._progress_message(why)
        self._event("Normal", R.RESUMED, st.message)

    # --- phases -----------------------------------------------------------------------

    def _pending(self) -> None:
        st = self.st
        if self.spec.paused:
            self._pause_user()
            return
        if self._capacity_starved():
            return
        missing = [
            f"{role} pool {name!r} not ready" + (f": {r.message}" if r.message else "")
            for role, name, r in (
                ("stable", self.spec.stable_pool, self.obs.stable),
                ("candidate", self.spec.candidate_pool, self.obs.candidate),
            )
            if not r.ready
        ]
        if not missing:
            self._replay_gate()
            return
        deadline = self._deadline()
        waiting = "; ".join(missing)
        if self.now >= deadline:
            self._terminate(
                "Failed",
                R.PROGRESS_DEADLINE_EXCEEDED,
                f"pools not ready within progressDeadline {self.spec.progress_deadline} "
                f"(deadline {format_time(deadline)}): {waiting}",
            )
            self._event("Warning", R.PROGRESS_DEADLINE_EXCEEDED, st.message)
            return
        if self.reason != R.POOLS_NOT_READY or not st.message.startswith("waiting"):
            self._event("Normal", R.POOLS_NOT_READY, waiting)
        self.reason = R.POOLS_NOT_READY
        st.message = (
            f"waiting for pools: {waiting}; progressDeadline {self.spec.progress_deadline} "
            f"expires at {format_time(deadline)}"
        )

    def _replay_gate(self) -> None:
        """Pools ready: with spec.replay, step 1 waits for the pre-flight replay to pass."""
        st = self.st
        g = replay.gate(self.spec, st, self.obs.replay, self.now, self._deadline())
        st.replay = g.status
        for type_, reason, message in g.events:
            self._event(type_, reason, message)
        if g.verdict == "proceed":
            st.unjudged_metrics = [
                m.name for m in self.spec.analysis.metrics if needs_a_judged_window(m)
            ]
            self._enter_step(0, "pools ready" + ("; pre-flight replay passed" if g.status else ""))
        elif g.verdict == "rollback":
            self._rollback(g.reason, g.message)
        elif g.verdict == "fail":
            self._terminate("Failed", R.PROGRESS_DEADLINE_EXCEEDED, g.message)
            self._event("Warning", R.PROGRESS_DEADLINE_EXCEEDED, g.message)
        else:
            self.reason, st.message = g.reason, g.message

    def _pending_requeue(self) -> float:
        left = (self._deadline() - self.now).total_seconds()
        return max(0.0, min(PENDING_POLL_SECONDS, left))

    def _progressing(self) -> None:
        st = self.st
        last = len(self.steps) - 1
        step = min(st.current_step or 0, last)
        if step != st.current_step or st.canary_weight != self.steps[step]:
            # spec.steps changed under a running step: adopt the new weight, new window.
            self._enter_step(step, "spec.steps changed")
        if self.spec.paused:
            self._pause_user()
            return
        if self._capacity_starved():
            return
        a = self.obs.analysis
        if a is None or not self._current(a):
            return
        if a.plan.kind == "full":
            self._judge_full(a)
        else:
            self._judge_early(a)

    def _current(self, a: AnalysisObservation) -> bool:
        """Is this analysis about the window the status is in? (else it is stale)"""
        return (
            a.plan.step == self.st.current_step
            and a.plan.step_started_at == self.st.step_started_at
        )

    def _progressing_requeue(self) -> float:
        st = self.st
        assert st.step_started_at is not None
        elapsed = (self.now - parse_time(st.step_started_at)).total_seconds()
        interval = interval_seconds(self.spec)
        remaining = interval - elapsed
        if remaining <= 0:
            return 0.0
        if early_metrics(self.spec):
            period = early_check_period(interval)
            next_early = period * (math.floor(elapsed / period) + 1) - elapsed
            return min(remaining, next_early)
        return remaining

    def _judge(self, a: AnalysisObservation, prefix: str) -> list[MetricResult]:
        previous = {m.name: m for m in self.st.metrics}
        analysis = self.spec.analysis
        results = [
            judge_metric(
                m,
                a.metrics.get(m.name),
                analysis.min_requests,
                previous.get(m.name),
                analysis.min_verified,
                load_match_tolerance=analysis.load_match_tolerance,
                candidate_replicas=self.obs.candidate.ready_replicas,
                stable_replicas=self.obs.stable.ready_replicas,
            )
            for m in a.plan.metrics
        ]
        if prefix:
            results = [r.model_copy(update={"message": prefix + r.message}) for r in results]
        return results

    def _record(self, results: list[MetricResult], early: bool, held: bool = False) -> StepRecord:
        st = self.st
        record = StepRecord(
            step=st.current_step or 0,
            weight=st.canary_weight or 0,
            result="inconclusive" if held else overall(results),
            time=self.ts,
            metrics=results,
        )
        st.history.append(record)
        names = {r.name for r in results}
        st.metrics = [m for m in st.metrics if m.name not in names] + results
        order = {m.name: i for i, m in enumerate(self.spec.analysis.metrics)}
        st.metrics.sort(key=lambda m: order.get(m.name, len(order)))
        self.actions.append(RecordAnalysis(record=record, early=early))
        return record

    def _judge_full(self, a: AnalysisObservation) -> None:
        st = self.st
        results = self._judge(a, "")
        st.unjudged_metrics = still_unjudged(st.unjudged_metrics, results)
        held = (
            overall(results) == "pass"
            and self._takes_all_traffic_next()
            and bool(st.unjudged_metrics)
        )
        record = self._record(results, early=False, held=held)
        if held:
            # Recorded as inconclusive: it holds the weight for a window on equal footing,
            # and after inconclusiveLimit such windows pauses (resume or promote decide).
            self._analysis_inconclusive(results, unjudged=self._unjudged_text(results))
        elif record.result == "pass":
            st.failed_checks = 0
            st.inconclusive_checks = 0
            passed = f"analysis passed at {st.canary_weight}%"
            if (st.current_step or 0) >= len(self.steps) - 1:
                self._succeed(
                    R.SUCCEEDED,
                    f"{passed} at the last step; route now serves pool "
                    f"{self.spec.candidate_pool!r}",
                )
            else:
                self._enter_step((st.current_step or 0) + 1, passed)
        elif record.result == "fail":
            self._analysis_failed(results)
        else:
            self._analysis_inconclusive(results)

    def _takes_all_traffic_next(self) -> bool:
        """Passing this step would succeed, or enter a step where the stable serves nothing
        (so a ratio to it can no longer be judged)."""
        step = self.st.current_step or 0
        return step >= len(self.steps) - 1 or self.steps[step + 1] >= 100

    def _unjudged_text(self, results: list[MetricResult]) -> str:
        st = self.st
        names = st.unjudged_metrics
        why = "; ".join(f"{r.name}: {r.message}" for r in results if r.name in names)
        verb = "has" if len(names) == 1 else "have"
        return (
            f"analysis passed at {st.canary_weight}%, but {', '.join(names)} {verb} not been "
            f"judged in any window of this canary ({why or 'not measured'})"
        )

    def _judge_early(self, a: AnalysisObservation) -> None:
        results = self._judge(a, f"early check over {a.plan.window_seconds}s: ")
        # Early checks only ever cut a window short on failure; pass and inconclusive
        # wait for the full window.
        if overall(results) != "fail":
            return
        self.st.unjudged_metrics = still_unjudged(self.st.unjudged_metrics, results)
        self._record(results, early=True)
        self._analysis_failed(results)

    def _analysis_failed(self, results: list[MetricResult]) -> None:
        st = self.st
        st.failed_checks += 1
        st.inconclusive_checks = 0
        limit = self.spec.analysis.failure_limit
        failing = summarize(results, "fail")
        if st.failed_checks >= limit:
            self._rollback(
                R.ANALYSIS_FAILED,
                f"rolled back {self._where()} after {st.failed_checks} failed "
                f"analyses (failureLimit {limit}): {failing}; candidate weight 0%",
            )
            return
        st.step_started_at = self.ts
        self.reason = R.ANALYSIS_FAILED
        st.message = self._progress_message(
            f"analysis failed ({st.failed_checks}/{limit}): {failing}; holding and retrying"
        )
        self._event("Warning", R.ANALYSIS_FAILED, st.message)

    def _analysis_inconclusive(
        self, results: list[MetricResult], unjudged: str | None = None
    ) -> None:
        """Hold the weight and retry; pause after inconclusiveLimit in a row. `unjudged`:
        the window passed, but a check was never judged (see _unjudged_text)."""
        st = self.st
        st.inconclusive_checks += 1
        limit = self.spec.analysis.inconclusive_limit
        if st.inconclusive_checks >= limit:
            st.phase = "Paused"
            self.reason = R.PAUSED_NO_DATA
            st.message = (
                self._no_data_message()
                if unjudged is None
                else f"paused {self._where()} after {st.inconclusive_checks} windows in a row "
                f"(inconclusiveLimit {limit}): {unjudged}; weight held. Annotate "
                f"{ACTION_ANNOTATION}=resume:<id> to look again, or promote:<id> to accept "
                "the candidate without that check"
            )
            self._event("Warning", R.PAUSED_NO_DATA, st.message)
            return
        st.step_started_at = self.ts
        self.reason = R.ANALYSIS_INCONCLUSIVE
        st.message = self._progress_message(
            f"analysis inconclusive ({st.inconclusive_checks}/{limit}): "
            f"{summarize(results, 'inconclusive')}; holding weight and retrying"
            if unjudged is None
            else f"{unjudged}; holding {st.canary_weight}% for a window that judges it "
            f"({st.inconclusive_checks}/{limit})"
        )
        self._event("Normal", R.ANALYSIS_INCONCLUSIVE, st.message)

    def _no_data_message(self) -> str:
        st = self.st
        return (
            f"paused {self._where()} after {st.inconclusive_checks} inconclusive analyses "
            f"in a row (inconclusiveLimit {self.spec.analysis.inconclusive_limit}): "
            f"{summarize(st.metrics, 'inconclusive')}; weight held; fix the cause, then "
            f"annotate {ACTION_ANNOTATION}=resume:<id> (or retry:<id>)"
        )

    def _pause_user(self) -> None:
        st = self.st
        if st.phase != "Paused" or self.reason != R.PAUSED_BY_USER:
            st.phase = "Paused"
            self.reason = R.PAUSED_BY_USER
            st.message = f"paused by spec.paused {self._where()}; weight held"
            self._event("Normal", R.PAUSED_BY_USER, st.message)

    def _capacity_starved(self) -> bool:
        """A candidate the cluster cannot place pauses the canary (weight held, no
        analysis, no deadline): never a rollback, never a failed check. True if so."""
        starved = self.obs.candidate.starved
        if starved is None:
            return False
        st = self.st
        message = capacity.paused_message(self.spec.candidate_pool, starved, self._where())
        if st.phase != "Paused" or self.reason != R.CAPACITY_STARVED:
            self._event("Warning", R.CAPACITY_STARVED, message)
        st.phase, self.reason, st.message = "Paused", R.CAPACITY_STARVED, message
        return True

    def _paused(self) -> None:
        st = self.st
        if self.spec.paused:
            self._pause_user()
        elif self.reason == R.CAPACITY_STARVED:
            if not self._capacity_starved():
                self._resume(f"resumed: candidate pool {self.spec.candidate_pool!r} has capacity")
        elif paused_for_lack_of_data(st.inconclusive_checks, self.spec.analysis.inconclusive_limit):
            # Paused for lack of data; only a `resume` (or retry) action continues.
            if self.reason != R.PAUSED_NO_DATA:
                self.reason = R.PAUSED_NO_DATA
                st.message = self._no_data_message()
        else:
            self._resume("resumed: spec.paused is false")

    # --- conditions -------------------------------------------------------------------

    def _conditions(self) -> None:
        st = self.st
        phase = st.phase
        progressing: ConditionStatus = "True" if phase in ("Pending", "Progressing") else "False"
        ready: ConditionStatus = "True" if phase == "Succeeded" else "False"
        ready_reason = R.ROLLED_BACK if phase == "RolledBack" else self.reason
        gen = st.observed_generation
        conds = set_condition(
            st.conditions, CONDITION_READY, ready, ready_reason, st.message, self.now, gen
        )
        st.conditions = set_condition(
            conds, CONDITION_PROGRESSING, progressing, self.reason, st.message, self.now, gen
        )
