"""Pre-flight replay, the pure part: golden prompts in, a verdict and status.replay out.

Before step 1, every golden (prompt, seed) is rendered once on the stable and once on the
candidate pool, and each render's verification block (the worker's OCR) is scored here.
The controller (modelfleet.controllers.replay) does the I/O; decide() asks gate() what
the replay allows: proceed to step 1, hold at Pending, roll back, or fail on the deadline.

Identity: a replay belongs to one canary run (status.startedAt, renewed by `retry`) and
one attempt of it (an inconclusive replay is retried); attempt_id() names both, so a
result that arrives for an older run or attempt is ignored.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from modelfleet.api.canary import CanarySpec, CanaryStatus
from modelfleet.api.common import format_time, parse_duration, parse_time
from modelfleet.api.replay import (
    MAX_STATUS_RENDERS,
    MAX_STATUS_TEXT,
    RenderStatus,
    ReplayGolden,
    ReplayPoolScore,
    ReplayRender,
    ReplayRenderResult,
    ReplayResult,
    ReplaySpec,
    ReplayStatus,
)
from modelfleet_common.expected_text import ExpectedTextError, expected_text, parse_text_field

# Condition and Event reasons of the replay (CamelCase, stable).
REPLAY_RUNNING = "ReplayRunning"
REPLAY_PASSED = "ReplayPassed"
REPLAY_FAILED = "ReplayFailed"
REPLAY_INCONCLUSIVE = "ReplayInconclusive"

RETRY_SECONDS = 30.0  # an inconclusive replay runs again this long after it was judged
MAX_GOLDEN_PROMPTS = 100
MAX_RENDERS = 400  # per pool: prompts x seeds
GOLDEN_FIELDS = frozenset({"prompt", "text", "size"})
_SIZE_CHARS = frozenset("0123456789x")
# Statuses that carry a word accuracy (unreadable: the OCR found no text, so 0).
SCORED: frozenset[RenderStatus] = frozenset({"passed", "failed", "unreadable"})


class GoldenError(ValueError):
    """The golden prompts cannot be used; the message names the ConfigMap, key, line, field."""


@dataclass(frozen=True)
class GoldenPrompt:
    line: int  # 1-based, in the ConfigMap key
    prompt: str
    text: tuple[str, ...]
    size: str | None = None

    def body(self, seed: int) -> dict[str, Any]:
        """The request sent to both pools: reproducible from (prompt, seed, pool)."""
        out: dict[str, Any] = {"prompt": self.prompt, "seed": seed, "n": 1, "text": list(self.text)}
        if self.size is not None:
            out["size"] = self.size
        return out


def golden_digest(doc: str) -> str:
    return "sha256:" + hashlib.sha256(doc.encode()).hexdigest()


def parse_golden(doc: str, where: str) -> tuple[GoldenPrompt, ...]:
    """JSON lines (blank lines and lines starting with # skipped). `where` names the
    source in errors, e.g. "ConfigMap golden key prompts.jsonl"."""
    out: list[GoldenPrompt] = []
    for n, raw in enumerate(doc.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        at = f"{where} line {n}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise GoldenError(f"{at}: not JSON ({exc.msg})") from None
        if not isinstance(item, dict):
            raise GoldenError(f"{at}: must be a JSON object with prompt and text")
        unknown = sorted(set(item) - GOLDEN_FIELDS)
        if unknown:
            raise GoldenError(f"{at}: unknown field {unknown[0]!r} (known: prompt, text, size)")
        prompt = item.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise GoldenError(f"{at}: prompt must be a non-empty string")
        try:
            field = parse_text_field(item.get("text"))
        except ExpectedTextError as exc:
            raise GoldenError(f"{at}: {exc}") from None
        text = expected_text(prompt, item.get("text")) if field is None else field
        if not text:
            raise GoldenError(
                f"{at}: no expected text: set text, or quote the lettering in the prompt"
            )
        size = item.get("size")
        if size is not None and not (
            isinstance(size, str) and size.count("x") == 1 and set(size) <= _SIZE_CHARS
        ):
            raise GoldenError(f"{at}: size must look like WIDTHxHEIGHT, e.g. 512x512")
        out.append(GoldenPrompt(n, prompt, text, size))
    if not out:
        raise GoldenError(f"{where}: holds no golden prompt")
    if len(out) > MAX_GOLDEN_PROMPTS:
        raise GoldenError(f"{where}: {len(out)} golden prompts; at most {MAX_GOLDEN_PROMPTS}")
    return tuple(out)


def plan(golden: Sequence[GoldenPrompt], seeds: Sequence[int]) -> list[tuple[GoldenPrompt, int]]:
    cases = [(g, s) for g in golden for s in seeds]
    if len(cases) > MAX_RENDERS:
        raise GoldenError(
            f"{len(golden)} golden prompts x {len(seeds)} seeds = {len(cases)} renders per "
            f"pool; at most {MAX_RENDERS}"
        )
    return cases


# --- one render --------------------------------------------------------------------------


@dataclass(frozen=True)
class RenderResult:
    status: RenderStatus
    word_accuracy: float | None = None
    read: str = ""
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"


# No verdict possible from these: busy, no endpoints, timed out, or the pin refused.
UNAVAILABLE_HTTP = frozenset({401, 403, 408, 429, 503, 504})


def _error_message(doc: Any) -> str:
    if isinstance(doc, Mapping) and isinstance(doc.get("error"), Mapping):
        return str(doc["error"].get("message", ""))[:MAX_STATUS_TEXT]
    return ""


def render_result(http_status: int, doc: Any, transport_error: str = "") -> RenderResult:
    """One answer through the router, as the replay scores it. `doc` is the parsed body
    (None when it was not JSON); transport_error: no HTTP answer at all."""
    if transport_error:
        return RenderResult("unavailable", detail=transport_error[:MAX_STATUS_TEXT])
    if http_status != 200:
        kind: RenderStatus = "unavailable" if http_status in UNAVAILABLE_HTTP else "error"
        return RenderResult(kind, detail=f"HTTP {http_status}: {_error_message(doc)}".strip())
    data = doc.get("data") if isinstance(doc, Mapping) else None
    if not isinstance(data, list) or not data or not isinstance(data[0], Mapping):
        return RenderResult("error", detail="answer without data[0]")
    block = data[0].get("modelfleet")
    if not isinstance(block, Mapping) or block.get("status") not in SCORED:
        return RenderResult(
            "unverified",
            detail="no verification block in the answer (worker verification off?)",
        )
    status: RenderStatus = block["status"]
    if status == "unreadable":
        return RenderResult("unreadable", 0.0, "", str(block.get("reason", ""))[:MAX_STATUS_TEXT])
    acc = block.get("word_accuracy")
    if isinstance(acc, bool) or not isinstance(acc, int | float) or not 0.0 <= acc <= 1.0:
        return RenderResult("unverified", detail="verification block without word_accuracy")
    return RenderResult(status, float(acc), str(block.get("read", ""))[:MAX_STATUS_TEXT])


# --- a whole run -------------------------------------------------------------------------

AttemptId = tuple[str, int]  # (canary status.startedAt, attempt number from 1)


@dataclass(frozen=True)
class ReplayCase:
    golden: GoldenPrompt
    seed: int
    stable: RenderResult
    candidate: RenderResult


@dataclass(frozen=True)
class ReplayRun:
    """A finished replay (or one that could not run: error, or timed out part-way)."""

    attempt: AttemptId
    started_at: str
    cases: tuple[ReplayCase, ...] = ()
    golden: ReplayGolden | None = None
    planned: int = 0  # renders per pool
    error: str = ""
    timed_out: bool = False


@dataclass(frozen=True)
class ReplayRunning:
    attempt: AttemptId
    started_at: str


ReplayObservation = ReplayRun | ReplayRunning


def attempt_id(status: CanaryStatus) -> AttemptId:
    """The attempt the status is in (running) or would start next (none yet, or judged)."""
    cur = status.replay
    if cur is None:
        n = 1
    elif cur.result is None:
        n = max(1, cur.attempts)
    else:
        n = cur.attempts + 1
    return (status.started_at or "", n)


def replay_due(spec: CanarySpec, status: CanaryStatus, now: datetime) -> bool:
    """Should a replay be running now? (The controller also waits for both pools ready.)"""
    if spec.replay is None or spec.paused or status.phase != "Pending":
        return False
    cur = status.replay
    if cur is None or cur.result is None:
        return True
    if cur.result != "inconclusive":
        return False
    judged = parse_time(cur.finished_at) if cur.finished_at else now
    return now >= judged + timedelta(seconds=RETRY_SECONDS)


def score_pool(pool: str, results: Sequence[RenderResult]) -> ReplayPoolScore:
    """Errors count as renders with word accuracy 0 (a pool that cannot render a golden
    prompt fails it); unavailable and unverified renders have no score at all."""
    scored = [r for r in results if r.status in SCORED or r.status == "error"]
    accs = [r.word_accuracy or 0.0 for r in scored]
    return ReplayPoolScore(
        pool=pool,
        renders=len(results),
        verified=sum(1 for r in results if r.status in ("passed", "failed")),
        unreadable=sum(1 for r in results if r.status == "unreadable"),
        failures=sum(1 for r in results if r.status not in SCORED),
        mean_word_accuracy=sum(accs) / len(accs) if accs else None,
        pass_rate=sum(1 for r in scored if r.passed) / len(scored) if scored else None,
    )


def _num(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3g}"


def _first_detail(results: Sequence[RenderResult], kinds: frozenset[str]) -> str:
    return next((f"{r.status}: {r.detail}" for r in results if r.status in kinds), "")


def _verdict(
    spec: ReplaySpec,
    run: ReplayRun,
    stable: ReplayPoolScore,
    cand: ReplayPoolScore,
) -> tuple[ReplayResult, str]:
    if run.error:
        return "inconclusive", f"replay could not run: {run.error}"
    s_res = [c.stable for c in run.cases]
    c_res = [c.candidate for c in run.cases]
    each = f"{run.planned} renders each"
    if run.timed_out:
        s_done = sum(1 for r in s_res if r.status != "unavailable")
        c_done = sum(1 for r in c_res if r.status != "unavailable")
        return "inconclusive", (
            f"replay timed out after {spec.timeout}: stable {s_done}/{run.planned}, "
            f"candidate {c_done}/{run.planned} renders answered"
        )
    bad = frozenset({"error", "unavailable", "unverified"})
    if stable.failures or any(r.status == "error" for r in s_res):
        n_bad = sum(1 for r in s_res if r.status in bad)
        return "inconclusive", (
            f"replay inconclusive: stable pool {stable.pool!r} did not render {n_bad} of "
            f"{run.planned} golden renders ({_first_detail(s_res, bad)}); the reference "
            "must render every golden prompt"
        )
    if stable.verified == 0:
        return "inconclusive", (
            f"replay inconclusive: stable pool {stable.pool!r} drew no readable text in "
            f"{run.planned} renders, so there is nothing to compare with"
        )
    no_score = frozenset({"unavailable", "unverified"})
    if any(r.status in no_score for r in c_res):
        n = sum(1 for r in c_res if r.status in no_score)
        return "inconclusive", (
            f"replay inconclusive: {n} of {run.planned} candidate renders have no score "
            f"({_first_detail(c_res, no_score)})"
        )
    ca, sa, cp = cand.mean_word_accuracy or 0.0, stable.mean_word_accuracy or 0.0, cand.pass_rate
    fails: list[str] = []
    holds: list[str] = []
    ratio_failed = False
    if spec.min_ratio_to_stable is not None:
        limit = spec.min_ratio_to_stable * sa
        text = f"{_num(ca)} {{}} {spec.min_ratio_to_stable:g} x stable {_num(sa)}"
        if ca < limit:
            ratio_failed = True
            fails.append("candidate word accuracy " + text.format("<"))
        else:
            holds.append("candidate word accuracy " + text.format(">="))
    if spec.min_word_accuracy is not None:
        op = "<" if ca < spec.min_word_accuracy else ">="
        (fails if op == "<" else holds).append(
            f"candidate word accuracy {_num(ca)} {op} min {spec.min_word_accuracy:g}"
        )
    if spec.min_pass_rate is not None:
        op = "<" if (cp or 0.0) < spec.min_pass_rate else ">="
        (fails if op == "<" else holds).append(
            f"candidate pass rate {_num(cp)} {op} min {spec.min_pass_rate:g}"
        )
    errors = sum(1 for r in c_res if r.status == "error")
    tail = f"; {errors} candidate renders failed ({_first_detail(c_res, frozenset({'error'}))})"
    tail = tail if errors else ""
    if fails:
        ref = each if ratio_failed else f"stable {_num(sa)}; {each}"
        return "fail", f"replay: {'; '.join(fails)} ({ref}){tail}"
    ref = each if spec.min_ratio_to_stable is not None else f"stable {_num(sa)}; {each}"
    return "pass", f"replay passed: {'; '.join(holds)} ({ref})"


def _status_result(r: RenderResult) -> ReplayRenderResult:
    return ReplayRenderResult(
        status=r.status, word_accuracy=r.word_accuracy, read=r.read, detail=r.detail
    )


def _worst(cases: Sequence[ReplayCase]) -> list[ReplayRender]:
    def gap(c: ReplayCase) -> float:
        cand = c.candidate.word_accuracy if c.candidate.status in SCORED else -1.0
        return (cand or 0.0) - (c.stable.word_accuracy or 0.0)

    order = sorted(range(len(cases)), key=lambda i: (gap(cases[i]), i))[:MAX_STATUS_RENDERS]
    return [
        ReplayRender(
            line=cases[i].golden.line,
            prompt=cases[i].golden.prompt[:MAX_STATUS_TEXT],
            seed=cases[i].seed,
            expected=list(cases[i].golden.text),
            stable=_status_result(cases[i].stable),
            candidate=_status_result(cases[i].candidate),
        )
        for i in sorted(order)
    ]


def judge(
    spec: ReplaySpec, stable_pool: str, candidate_pool: str, run: ReplayRun, now: str
) -> ReplayStatus:
    stable = score_pool(stable_pool, [c.stable for c in run.cases])
    cand = score_pool(candidate_pool, [c.candidate for c in run.cases])
    result, message = _verdict(spec, run, stable, cand)
    return ReplayStatus(
        result=result,
        message=message,
        started_at=run.started_at,
        finished_at=now,
        attempts=run.attempt[1],
        golden=run.golden,
        stable=stable if run.cases else None,
        candidate=cand if run.cases else None,
        renders=_worst(run.cases),
    )


# --- what the replay allows the canary -----------------------------------------------------

Verdict = Literal["proceed", "hold", "rollback", "fail"]
EventTuple = tuple[Literal["Normal", "Warning"], str, str]


@dataclass(frozen=True)
class ReplayGate:
    """proceed: step 1 may start; hold: stay Pending (weight 0); rollback: RolledBack
    (reason ReplayFailed); fail: Failed (the deadline passed without a verdict)."""

    verdict: Verdict
    status: ReplayStatus | None
    reason: str = ""
    message: str = ""
    events: tuple[EventTuple, ...] = ()


def gate(
    spec: CanarySpec,
    status: CanaryStatus,
    observation: ReplayObservation | None,
    now: datetime,
    deadline: datetime,
) -> ReplayGate:
    """Called by decide() in Pending once both pools are ready."""
    r = spec.replay
    if r is None:
        return ReplayGate("proceed", status.replay)
    cur = status.replay
    events: list[EventTuple] = []
    if observation is not None and observation.attempt == attempt_id(status):
        if isinstance(observation, ReplayRun):
            cur = judge(r, spec.stable_pool, spec.candidate_pool, observation, format_time(now))
            kind: Literal["Normal", "Warning"] = "Normal" if cur.result == "pass" else "Warning"
            reason = {"pass": REPLAY_PASSED, "fail": REPLAY_FAILED}.get(
                cur.result or "", REPLAY_INCONCLUSIVE
            )
            events.append((kind, reason, cur.message))
        elif cur is None or cur.result is not None:
            n = observation.attempt[1]
            cur = ReplayStatus(
                started_at=observation.started_at,
                attempts=n,
                message=(
                    f"rendering the golden prompts of ConfigMap {r.config_map!r} on pools "
                    f"{spec.stable_pool!r} and {spec.candidate_pool!r} (attempt {n})"
                ),
                golden=cur.golden if cur is not None else None,
            )
            events.append(("Normal", REPLAY_RUNNING, cur.message))
    if cur is not None and cur.result == "pass":
        return ReplayGate("proceed", cur, REPLAY_PASSED, cur.message, tuple(events))
    if cur is not None and cur.result == "fail":
        message = f"rolled back before any traffic moved: {cur.message}; candidate weight 0%"
        return ReplayGate("rollback", cur, REPLAY_FAILED, message, tuple(events))
    waiting = cur.message if cur is not None else "waiting to start"
    if now >= deadline:
        message = (
            f"pre-flight replay not passed within progressDeadline {spec.progress_deadline} "
            f"(deadline {format_time(deadline)}): {waiting}"
        )
        return ReplayGate("fail", cur, REPLAY_INCONCLUSIVE, message, tuple(events))
    retry = ""
    if cur is not None and cur.result == "inconclusive":
        retry = f"; retrying in {RETRY_SECONDS:g}s"
    reason = REPLAY_INCONCLUSIVE if cur is not None and cur.result else REPLAY_RUNNING
    message = (
        f"pre-flight replay: {waiting}{retry}; weight 0% until it passes; progressDeadline "
        f"{spec.progress_deadline} expires at {format_time(deadline)}"
    )
    return ReplayGate("hold", cur, reason, message, tuple(events))


def replay_timeout(spec: ReplaySpec) -> float:
    return parse_duration(spec.timeout).total_seconds()
