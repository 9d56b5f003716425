"""Pre-flight replay, pure part: golden prompts, one render's score, the verdict over
both pools, and what the verdict allows the canary (gate)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from modelfleet.api.canary import CanarySpec, CanaryStatus
from modelfleet.api.common import format_time
from modelfleet.api.replay import MAX_STATUS_RENDERS, ReplaySpec, ReplayStatus
from modelfleet.canary.replay import (
    REPLAY_FAILED,
    REPLAY_INCONCLUSIVE,
    REPLAY_PASSED,
    REPLAY_RUNNING,
    RETRY_SECONDS,
    GoldenError,
    GoldenPrompt,
    RenderResult,
    ReplayCase,
    ReplayRun,
    ReplayRunning,
    attempt_id,
    gate,
    judge,
    parse_golden,
    plan,
    render_result,
    replay_due,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
STARTED = format_time(T0)
G = GoldenPrompt(1, 'a banner "SALE NOW"', ("SALE NOW",))


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def rspec(**kw: Any) -> ReplaySpec:
    return ReplaySpec(config_map="golden", **({"min_ratio_to_stable": 0.9} | kw))


def cspec(**kw: Any) -> CanarySpec:
    return CanarySpec(
        routing_policy="rp",
        route="all",
        stable_pool="stable",
        candidate_pool="cand",
        replay=kw.pop("replay", rspec()),
        **kw,
    )


def ok(acc: float, passed: bool | None = None) -> RenderResult:
    p = acc >= 0.9 if passed is None else passed
    return RenderResult("passed" if p else "failed", acc, "SALE NOW")


def run(pairs: list[tuple[RenderResult, RenderResult]], **kw: Any) -> ReplayRun:
    cases = tuple(ReplayCase(G, i, s, c) for i, (s, c) in enumerate(pairs))
    return ReplayRun((STARTED, 1), STARTED, cases, None, len(cases), **kw)


# --- golden prompts ------------------------------------------------------------------------


def test_golden_lines_with_text_size_and_prompt_quotes() -> None:
    doc = (
        '{"prompt": "poster", "text": ["SALE NOW", "50% OFF"], "size": "512x256"}\n'
        "\n# a comment\n"
        '{"prompt": "a sign that says \\"OPEN\\""}\n'
    )
    got = parse_golden(doc, "ConfigMap g key k")
    assert got == (
        GoldenPrompt(1, "poster", ("SALE NOW", "50% OFF"), "512x256"),
        GoldenPrompt(4, 'a sign that says "OPEN"', ("OPEN",)),
    )
    assert got[0].body(7) == {
        "prompt": "poster",
        "seed": 7,
        "n": 1,
        "text": ["SALE NOW", "50% OFF"],
        "size": "512x256",
    }


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ("not json", "ConfigMap g key k line 1: not JSON"),
        ("[1]", "line 1: must be a JSON object"),
        ('{"prompt": "x", "txt": ["A"]}', "line 1: unknown field 'txt'"),
        ('{"text": ["A"]}', "line 1: prompt must be a non-empty string"),
        ('{"prompt": "x", "text": "A"}', "line 1: text must be a list of strings"),
        ('{"prompt": "a cube"}', "line 1: no expected text"),
        ('{"prompt": "x", "text": ["A"], "size": "big"}', "line 1: size must look like"),
        ("\n# only comments\n", "ConfigMap g key k: holds no golden prompt"),
    ],
)
def test_golden_errors_name_the_line_and_field(doc: str, message: str) -> None:
    with pytest.raises(GoldenError, match=message.replace("(", r"\(")):
        parse_golden(doc, "ConfigMap g key k")


def test_plan_is_prompts_times_seeds_and_bounded() -> None:
    assert plan([G], [1, 2]) == [(G, 1), (G, 2)]
    with pytest.raises(GoldenError, match="renders per pool; at most 400"):
        plan([G] * 100, list(range(5)))


# --- one render ------------------------------------------------------------------------------


def _answer(block: dict[str, Any] | None) -> dict[str, Any]:
    item: dict[str, Any] = {"b64_json": "...", "seed": 1}
    if block is not None:
        item["modelfleet"] = block
    return {"data": [item]}


@pytest.mark.parametrize(
    ("status", "doc", "err", "want"),
    [
        (
            200,
            _answer({"status": "passed", "word_accuracy": 1.0, "read": "SALE NOW"}),
            "",
            RenderResult("passed", 1.0, "SALE NOW"),
        ),
        (
            200,
            _answer({"status": "failed", "word_accuracy": 0.5, "read": "SLAE NOW"}),
            "",
            RenderResult("failed", 0.5, "SLAE NOW"),
        ),
        (
            200,
            _answer({"status": "unreadable", "reason": "no text found"}),
            "",
            RenderResult("unreadable", 0.0, "", "no text found"),
        ),
        (200, _answer(None), "", "unverified"),
        (200, _answer({"status": "passed"}), "", "unverified"),
        (200, {"data": []}, "", "error"),
        (500, {"error": {"message": "boom"}}, "", RenderResult("error", detail="HTTP 500: boom")),
        (400, {"error": {"message": "size"}}, "", "error"),
        (429, None, "", "unavailable"),
        (503, None, "", "unavailable"),
        (0, None, "connection refused", RenderResult("unavailable", detail="connection refused")),
    ],
)
def test_render_result(status: int, doc: Any, err: str, want: RenderResult | str) -> None:
    got = render_result(status, doc, err)
    if isinstance(want, str):
        assert got.status == want and got.word_accuracy is None
    else:
        assert got == want


# --- the verdict -------------------------------------------------------------------------------


def test_fail_names_both_scores_and_the_render_count() -> None:
    pairs = [(ok(1.0), ok(0.5))] * 6 + [(ok(0.94), ok(0.32))] * 6
    st = judge(rspec(), "stable", "cand", run(pairs), STARTED)
    assert st.result == "fail"
    assert (
        st.message == "replay: candidate word accuracy 0.41 < 0.9 x stable 0.97 (12 renders each)"
    )
    assert st.stable is not None and st.candidate is not None
    assert (st.stable.pool, st.stable.renders, st.stable.verified) == ("stable", 12, 12)
    assert st.candidate.mean_word_accuracy == pytest.approx(0.41)
    assert st.candidate.pass_rate == 0.0 and st.stable.pass_rate == 1.0


@pytest.mark.parametrize(
    ("spec_kw", "pairs", "result", "message"),
    [
        (
            {},
            [(ok(1.0), ok(1.0))] * 3,
            "pass",
            "replay passed: candidate word accuracy 1 >= 0.9 x stable 1 (3 renders each)",
        ),
        (
            {"min_ratio_to_stable": None, "min_word_accuracy": 0.8},
            [(ok(1.0), ok(0.5))] * 2,
            "fail",
            "replay: candidate word accuracy 0.5 < min 0.8 (stable 1; 2 renders each)",
        ),
        (
            {"min_ratio_to_stable": None, "min_pass_rate": 0.75},
            [(ok(1.0), ok(1.0)), (ok(1.0), ok(0.5))],
            "fail",
            "replay: candidate pass rate 0.5 < min 0.75 (stable 1; 2 renders each)",
        ),
        (  # a candidate that errors on a golden prompt fails it (word accuracy 0)
            {},
            [(ok(1.0), ok(1.0)), (ok(1.0), RenderResult("error", detail="HTTP 500: boom"))],
            "fail",
            "replay: candidate word accuracy 0.5 < 0.9 x stable 1 (2 renders each); "
            "1 candidate renders failed (error: HTTP 500: boom)",
        ),
        (  # unreadable: the OCR found no text at all, word accuracy 0
            {},
            [(ok(1.0), RenderResult("unreadable", 0.0))] * 2,
            "fail",
            "replay: candidate word accuracy 0 < 0.9 x stable 1 (2 renders each)",
        ),
        (
            {},
            [(RenderResult("unavailable", detail="HTTP 503: busy"), ok(1.0)), (ok(1.0), ok(1.0))],
            "inconclusive",
            "replay inconclusive: stable pool 'stable' did not render 1 of 2 golden renders "
            "(unavailable: HTTP 503: busy); the reference must render every golden prompt",
        ),
        (
            {},
            [(RenderResult("unreadable", 0.0), ok(1.0))] * 2,
            "inconclusive",
            "replay inconclusive: stable pool 'stable' drew no readable text in 2 renders, "
            "so there is nothing to compare with",
        ),
        (
            {},
            [(ok(1.0), RenderResult("unverified", detail="off")), (ok(1.0), ok(1.0))],
            "inconclusive",
            "replay inconclusive: 1 of 2 candidate renders have no score (unverified: off)",
        ),
    ],
)
def test_verdicts(
    spec_kw: dict[str, Any],
    pairs: list[tuple[RenderResult, RenderResult]],
    result: str,
    message: str,
) -> None:
    st = judge(rspec(**spec_kw), "stable", "cand", run(pairs), STARTED)
    assert (st.result, st.message) == (result, message)


def test_timeout_and_error_are_inconclusive() -> None:
    part = run([(ok(1.0), RenderResult("unavailable"))] * 4, timed_out=True)
    st = judge(rspec(timeout="30s"), "stable", "cand", part, STARTED)
    assert (st.result, st.message) == (
        "inconclusive",
        "replay timed out after 30s: stable 4/4, candidate 0/4 renders answered",
    )
    err = ReplayRun((STARTED, 1), STARTED, error="ConfigMap 'golden' not found")
    st = judge(rspec(), "stable", "cand", err, STARTED)
    assert (st.result, st.message) == (
        "inconclusive",
        "replay could not run: ConfigMap 'golden' not found",
    )
    assert st.stable is None and st.renders == []


def test_status_keeps_the_worst_renders_in_configmap_order() -> None:
    pairs = [(ok(1.0), ok(1.0))] * 30 + [(ok(1.0), ok(0.0))] * 3
    st = judge(rspec(), "stable", "cand", run(pairs), STARTED)
    assert len(st.renders) == MAX_STATUS_RENDERS
    seeds = [r.seed for r in st.renders]
    assert seeds == sorted(seeds) and {30, 31, 32} <= set(seeds)
    worst = next(r for r in st.renders if r.seed == 30)
    assert worst.candidate.word_accuracy == 0.0 and worst.stable.read == "SALE NOW"
    assert worst.expected == ["SALE NOW"] and worst.line == 1


# --- identity and due ---------------------------------------------------------------------------


def _status(replay: ReplayStatus | None = None, phase: str = "Pending") -> CanaryStatus:
    return CanaryStatus(phase=phase, started_at=STARTED, replay=replay)  # type: ignore[arg-type]


def test_attempt_ids() -> None:
    assert attempt_id(_status()) == (STARTED, 1)
    assert attempt_id(_status(ReplayStatus(attempts=1))) == (STARTED, 1)  # running
    judged = ReplayStatus(result="inconclusive", attempts=1, finished_at=format_time(at(5)))
    assert attempt_id(_status(judged)) == (STARTED, 2)


@pytest.mark.parametrize(
    ("status", "now", "due"),
    [
        (_status(), 0, True),
        (_status(ReplayStatus(attempts=1)), 0, True),  # running: the task must exist
        (_status(ReplayStatus(result="pass", attempts=1)), 0, False),
        (_status(ReplayStatus(result="fail", attempts=1)), 0, False),
        (_status(phase="Progressing"), 0, False),
        (
            _status(ReplayStatus(result="inconclusive", attempts=1, finished_at=STARTED)),
            RETRY_SECONDS - 1,
            False,
        ),
        (
            _status(ReplayStatus(result="inconclusive", attempts=1, finished_at=STARTED)),
            RETRY_SECONDS,
            True,
        ),
    ],
)
def test_replay_due(status: CanaryStatus, now: float, due: bool) -> None:
    assert replay_due(cspec(), status, at(now)) is due


def test_no_replay_spec_is_never_due_and_always_proceeds() -> None:
    spec = cspec(replay=None)
    assert not replay_due(spec, _status(), T0)
    assert gate(spec, _status(), None, T0, at(600)).verdict == "proceed"


# --- the gate -------------------------------------------------------------------------------------


def test_gate_holds_while_running_then_passes() -> None:
    spec, deadline = cspec(), at(600)
    g = gate(spec, _status(), None, T0, deadline)
    assert (g.verdict, g.status, g.reason) == ("hold", None, REPLAY_RUNNING)
    g = gate(spec, _status(), ReplayRunning((STARTED, 1), STARTED), T0, deadline)
    assert g.verdict == "hold" and g.status is not None and g.status.attempts == 1
    assert g.status.result is None and [e[1] for e in g.events] == [REPLAY_RUNNING]
    running = _status(g.status)
    again = gate(spec, running, ReplayRunning((STARTED, 1), STARTED), at(1), deadline)
    assert again.status == g.status and again.events == ()  # no event on every tick
    done = run([(ok(1.0), ok(1.0))])
    g = gate(spec, running, done, at(2), deadline)
    assert g.verdict == "proceed" and g.status is not None and g.status.result == "pass"
    assert g.events == (("Normal", REPLAY_PASSED, g.status.message),)


def test_gate_rolls_back_a_failed_candidate() -> None:
    g = gate(cspec(), _status(ReplayStatus(attempts=1)), run([(ok(1.0), ok(0.2))]), T0, at(600))
    assert (g.verdict, g.reason) == ("rollback", REPLAY_FAILED)
    assert g.message == (
        "rolled back before any traffic moved: replay: candidate word accuracy 0.2 < 0.9 x "
        "stable 1 (1 renders each); candidate weight 0%"
    )
    assert g.events[0][:2] == ("Warning", REPLAY_FAILED)


def test_gate_ignores_a_result_of_another_run_or_attempt() -> None:
    spec, status = cspec(), _status(ReplayStatus(attempts=2))
    stale = run([(ok(1.0), ok(0.0))])  # attempt 1
    g = gate(spec, status, stale, T0, at(600))
    assert g.verdict == "hold" and g.status == status.replay
    other_run = ReplayRun(("2025-01-01T00:00:00.000Z", 2), STARTED)
    assert gate(spec, status, other_run, T0, at(600)).status == status.replay


def test_gate_inconclusive_holds_and_retries_until_the_deadline() -> None:
    spec = cspec()
    bad = run([(RenderResult("unavailable", detail="x"), ok(1.0))])
    g = gate(spec, _status(ReplayStatus(attempts=1)), bad, at(10), at(600))
    assert (g.verdict, g.reason) == ("hold", REPLAY_INCONCLUSIVE)
    assert "retrying in 30s; weight 0% until it passes" in g.message
    assert g.events[0][:2] == ("Warning", REPLAY_INCONCLUSIVE)
    judged = _status(g.status)
    late = gate(spec, judged, None, at(600), at(600))
    assert late.verdict == "fail" and late.message.startswith(
        "pre-flight replay not passed within progressDeadline 10m"
    )
    # The retry: a new attempt starts and shows as running again.
    retry = gate(spec, judged, ReplayRunning((STARTED, 2), STARTED), at(50), at(600))
    assert retry.status is not None and retry.status.attempts == 2
    assert retry.status.result is None


# --- decide() with a replay ---------------------------------------------------------------------


def _decide(spec: CanarySpec, status: CanaryStatus, replay: Any, now: float) -> Any:
    from modelfleet.canary import Observations, PoolReadiness, decide

    ready = PoolReadiness(True)
    return decide(spec, status, Observations(ready, ready, 1, replay=replay), at(now))


def _weights(decision: Any) -> list[int]:
    from modelfleet.canary import SetWeight

    return [a.weight for a in decision.actions if isinstance(a, SetWeight)]


def _progressing_reason(status: CanaryStatus) -> str:
    return next(c.reason for c in status.conditions if c.type == "Progressing")


def test_decide_holds_at_pending_with_weight_0_until_the_replay_passes() -> None:
    spec = cspec()
    d = _decide(spec, CanaryStatus(), None, 0)
    st = d.next_status
    assert (st.phase, _weights(d), _progressing_reason(st)) == ("Pending", [0], REPLAY_RUNNING)
    assert st.message.startswith("pre-flight replay: waiting to start; weight 0%")
    aid = attempt_id(st)
    d = _decide(spec, st, ReplayRunning(aid, format_time(at(1))), 1)
    st = d.next_status
    assert st.phase == "Pending" and _weights(d) == [0]
    assert st.replay is not None and st.replay.result is None
    done = ReplayRun(aid, format_time(at(1)), run([(ok(1.0), ok(1.0))]).cases, None, 1)
    d = _decide(spec, st, done, 5)
    st = d.next_status
    assert (st.phase, st.canary_weight, _weights(d)) == ("Progressing", 10, [10])
    assert st.replay is not None and st.replay.result == "pass"
    assert "pools ready; pre-flight replay passed; step 1/4" in st.message


def test_decide_rolls_back_a_candidate_that_fails_replay_before_any_traffic() -> None:
    from modelfleet.canary import EmitEvent, RollBack

    spec = cspec()
    st = _decide(spec, CanaryStatus(), None, 0).next_status
    aid = attempt_id(st)
    bad = ReplayRun(aid, STARTED, run([(ok(0.97), ok(0.41))] * 12).cases, None, 12)
    d = _decide(spec, st, bad, 3)
    st = d.next_status
    assert (st.phase, st.canary_weight, _weights(d)) == ("RolledBack", 0, [0])
    assert _progressing_reason(st) == REPLAY_FAILED
    assert "candidate word accuracy 0.41 < 0.9 x stable 0.97 (12 renders each)" in st.message
    reasons = [a.reason for a in d.actions if isinstance(a, EmitEvent)]
    assert reasons == [REPLAY_FAILED, "RolledBack"]
    assert [a.reason for a in d.actions if isinstance(a, RollBack)] == [REPLAY_FAILED]
    # A retry starts a new run: the replay is forgotten and runs again.
    d = _decide(spec, st.model_copy(update={"last_action": None}), None, 10)
    assert d.next_status.phase == "RolledBack"  # terminal without an action


def test_retry_forgets_the_replay() -> None:
    from modelfleet.canary import Observations, PoolReadiness, decide

    spec = cspec()
    st = _decide(spec, CanaryStatus(), None, 0).next_status
    bad = ReplayRun(attempt_id(st), STARTED, run([(ok(1.0), ok(0.0))]).cases, None, 1)
    st = _decide(spec, st, bad, 1).next_status
    assert st.phase == "RolledBack"
    ready = PoolReadiness(True)
    d = decide(spec, st, Observations(ready, ready, 1, action="retry:1"), at(20))
    assert d.next_status.phase == "Pending" and d.next_status.replay is None
    assert attempt_id(d.next_status) == (format_time(at(20)), 1)
    assert replay_due(spec, d.next_status, at(20))
