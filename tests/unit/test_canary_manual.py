"""The manual-action rules (modelfleet.canary.manual): each request x each phase, and the
canary core and the plugin's hints both following them."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from modelfleet.api.canary import (
    ACTIVE_PHASES,
    PHASES,
    TERMINAL_PHASES,
    CanaryPhase,
    CanarySpec,
    CanaryStatus,
)
from modelfleet.api.common import format_time
from modelfleet.canary import EmitEvent, Observations, PoolReadiness, decide
from modelfleet.canary import reasons as R
from modelfleet.canary.manual import RULES, VERBS, Request, paused_for_lack_of_data, refusal
from modelfleet.kubectl.actions import action_hint

ACTIVE_ONLY = "only acts on"
PROMOTE = "promote only acts on active canaries"
ABORT = "abort only acts on Pending, Progressing or Paused canaries"
RETRY = "retry only acts on RolledBack, Failed or Paused canaries"
RESUME = "resume only acts on Paused canaries"
PAUSE = "pausing a finished canary has no effect"
RETRY_FIRST = f"{PROMOTE}; use retry first"

# None: the request acts. Columns in PHASES order.
#        Pending  Progressing  Paused  Succeeded  RolledBack   Failed
TABLE: dict[Request, tuple[str | None, ...]] = {
    "promote": (None, None, None, PROMOTE, RETRY_FIRST, RETRY_FIRST),
    "abort": (None, None, None, ABORT, ABORT, ABORT),
    "retry": (RETRY, RETRY, None, RETRY, None, None),
    "resume": (RESUME, RESUME, None, RESUME, RESUME, RESUME),
    "pause": (None, None, None, PAUSE, PAUSE, PAUSE),
}


def test_table_covers_every_request_and_phase() -> None:
    assert PHASES == ("Pending", "Progressing", "Paused", "Succeeded", "RolledBack", "Failed")
    assert set(TABLE) == set(RULES) == {*VERBS, "pause"}
    assert all(len(row) == len(PHASES) for row in TABLE.values())


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("verb", list(TABLE))
def test_refusal_per_phase(verb: Request, phase: CanaryPhase) -> None:
    want = TABLE[verb][PHASES.index(phase)]
    assert refusal(verb, phase) == want
    # Where the phase refuses, nothing else changes the answer.
    if want is not None:
        assert refusal(verb, phase, spec_paused=True, candidate_unready="0/1 ready") == want


@pytest.mark.parametrize("phase", sorted(ACTIVE_PHASES))
def test_promote_needs_a_ready_candidate(phase: CanaryPhase) -> None:
    assert refusal("promote", phase, candidate_unready="0/1 replicas ready") == (
        "candidate pool not ready: 0/1 replicas ready"
    )
    assert refusal("promote", phase, candidate_unready="") == "candidate pool not ready: "
    for verb in ("abort", "pause"):
        assert refusal(verb, phase, candidate_unready="0/1 replicas ready") is None


def test_resume_waits_for_spec_paused_false() -> None:
    assert refusal("resume", "Paused", spec_paused=True) == (
        "spec.paused is true, set it to false to resume"
    )
    for verb in ("promote", "abort", "retry", "pause"):
        assert refusal(verb, "Paused", spec_paused=True) is None


def _named(text: str) -> set[str]:
    return {p for p in PHASES if re.search(rf"\b{p}\b", text)}


def test_rule_texts_name_the_phases_they_act_in() -> None:
    # The sentences are written out (readable word order); these keep them true.
    for verb in ("abort", "retry", "resume"):
        assert _named(RULES[verb].refusal) == RULES[verb].acts_in, verb
    assert _named(RULES["retry"].help) == RULES["retry"].acts_in
    assert RULES["promote"].acts_in == ACTIVE_PHASES  # "active canaries"
    assert set(PHASES) - RULES["pause"].acts_in == TERMINAL_PHASES  # "a finished canary"
    assert all(ACTIVE_ONLY in RULES[v].refusal for v in VERBS)


@pytest.mark.parametrize(
    ("checks", "limit", "stuck"), [(0, 5, False), (4, 5, False), (5, 5, True), (9, 1, True)]
)
def test_paused_for_lack_of_data(checks: int, limit: int, stuck: bool) -> None:
    assert paused_for_lack_of_data(checks, limit) is stuck


# --- the canary core follows the rules --------------------------------------------------

T0 = datetime(2024, 1, 1, tzinfo=UTC)
SPEC = CanarySpec(
    routing_policy="rp", route="images", stable_pool="s", candidate_pool="c", interval="10s"
)


def _status(phase: CanaryPhase) -> CanaryStatus:
    ts = format_time(T0)
    started = phase != "Pending"
    return CanaryStatus(
        phase=phase,
        started_at=ts,
        current_step=0 if started else None,
        canary_weight=10 if started else 0,
        step_started_at=ts if started else None,
        finished_at=ts if phase in TERMINAL_PHASES else None,
    )


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("verb", VERBS)
@pytest.mark.parametrize(
    ("spec_paused", "candidate"),
    [(False, PoolReadiness(True)), (True, PoolReadiness(True)), (False, PoolReadiness(False, "x"))],
)
def test_decide_ignores_exactly_what_the_rules_refuse(
    verb: Request, phase: CanaryPhase, spec_paused: bool, candidate: PoolReadiness
) -> None:
    spec = SPEC.model_copy(update={"paused": spec_paused})
    o = Observations(stable=PoolReadiness(False), candidate=candidate, action=f"{verb}:1")
    d = decide(spec, _status(phase), o, T0)
    events = [a for a in d.actions if isinstance(a, EmitEvent)]
    why = refusal(
        verb,
        phase,
        spec_paused=spec_paused,
        candidate_unready=None if candidate.ready else candidate.message,
    )
    ignored = [e for e in events if e.reason == R.ACTION_IGNORED]
    if why is None:
        assert ignored == []
        acted = {"abort": R.ROLLED_BACK, "promote": R.PROMOTED, "retry": R.RETRIED}
        assert acted.get(verb, R.RESUMED) in [e.reason for e in events]
    else:
        assert [e.message for e in ignored] == [
            f"modelfleet.io/action='{verb}:1' ignored: canary is {phase}; {why}"
        ]
        assert events[0] == ignored[0]


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("verb", list(TABLE))
def test_plugin_hint_is_the_rule(verb: Request, phase: CanaryPhase) -> None:
    why = TABLE[verb][PHASES.index(phase)]
    hint = action_hint(verb, {"status": {"phase": phase}})
    assert hint == (None if why is None else f"the canary is {phase}; {why}")
    assert action_hint(verb, {"status": {}}) is None  # not yet seen by the operator
