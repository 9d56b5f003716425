"""The text gate's decisions for routes with `verify` (docs/router.md#text-gate). Pure.

The worker reads each image's text back (OCR) and reports it in `data[i].modelfleet`;
here that report is judged at the route's threshold, renders of one image are
ranked, and it is decided whether a failed image is rendered again, where, with
which settings, and what the client is told. Images are handled one by one: a
request for n images re-renders only those that failed, together, in one request.
Generations and edits alike: an edit's re-render is its form with rerender_fields replaced.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from modelfleet.api.routingpolicy import VerifySpec

PASSED, FAILED, UNREADABLE, UNVERIFIED = "passed", "failed", "unreadable", "unverified"
RESCUED = "rescued"  # a request-level verdict: every failed image was re-rendered to a pass
_RANK = {PASSED: 3, FAILED: 2, UNREADABLE: 1, UNVERIFIED: 0}
# Re-render seeds step past every seed the previous renders used (n <= 8, image i = seed+i),
# and stay where the worker takes them (seed + i <= 2^32 - 1).
SEED_STRIDE = 8
SEED_SPAN = 2**32 - SEED_STRIDE
ERROR_STATUS = 422
ERROR_CODE = "text_verification_failed"


@dataclass(frozen=True)
class Check:
    """One render's text, judged at the route's threshold."""

    status: str  # passed | failed | unreadable | unverified
    word_accuracy: float | None = None
    ned: float | None = None

    def rank(self) -> tuple[int, float, float]:
        wa = -1.0 if self.word_accuracy is None else self.word_accuracy
        ned = -1.0 if self.ned is None else self.ned
        return (_RANK[self.status], wa, ned)


def _number(v: object) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return float(v) if 0.0 <= v <= 1.0 else None


def judge(item: object, min_word_accuracy: float) -> Check:
    """The `modelfleet` block of one `data[i]` at the route's threshold.

    The router forwards its threshold, so the worker's own `passed` is used when
    the worker applied it (its word accuracy is unrounded); otherwise (an older
    worker, its own default) the router compares the reported word accuracy itself.
    No block or a malformed one: unverified; no text found: unreadable."""
    block = item.get("modelfleet") if isinstance(item, Mapping) else None
    if not isinstance(block, Mapping):
        return Check(UNVERIFIED)
    if block.get("status") == UNREADABLE:
        return Check(UNREADABLE)
    wa = _number(block.get("word_accuracy"))
    if wa is None:
        return Check(UNVERIFIED)
    ned = _number(block.get("ned"))
    passed = block.get("passed")
    if block.get("min_word_accuracy") == min_word_accuracy and isinstance(passed, bool):
        ok = passed
    else:
        ok = wa >= min_word_accuracy
    return Check(PASSED if ok else FAILED, wa, ned)


@dataclass(frozen=True)
class Render:
    item: Mapping[str, Any]  # the worker's data[i], as it answered
    check: Check
    pool: str


@dataclass(frozen=True)
class Slot:
    """One image of the request: its best render so far."""

    best: Render
    attempts: int = 1
    rerender_reason: str | None = None  # why it was first rendered again


def failure_reason(render: Render, min_word_accuracy: float) -> str:
    return f"word_accuracy {render.check.word_accuracy:g} < {min_word_accuracy:g} on pool {render.pool}"


def offer(slot: Slot, render: Render, min_word_accuracy: float) -> Slot:
    """A re-render of the slot's image arrived: the better one stays (ties keep the earlier)."""
    reason = slot.rerender_reason or failure_reason(slot.best, min_word_accuracy)
    best = render if render.check.rank() > slot.best.check.rank() else slot.best
    return replace(slot, best=best, attempts=slot.attempts + 1, rerender_reason=reason)


@dataclass(frozen=True)
class Rerender:
    slots: tuple[int, ...]  # indices into the request's images
    pool: str


@dataclass(frozen=True)
class Stop:
    reason: str | None  # None: nothing is failing; else why failed images remain


def next_step(
    slots: Sequence[Slot],
    rounds_done: int,
    spec: VerifySpec,
    first_pool: str,
    remaining_s: float,
    render_s: float,
) -> Rerender | Stop:
    """Re-render the failed images, or stop. `render_s` is how long the last render took:
    a re-render that could not finish before the request deadline is not started (it
    would hold a GPU for an answer nobody gets)."""
    failing = tuple(i for i, s in enumerate(slots) if s.best.check.status == FAILED)
    if not failing:
        return Stop(None)
    if rounds_done >= spec.max_rerenders:
        if spec.max_rerenders == 0:
            return Stop("maxRerenders is 0")
        return Stop(f"maxRerenders {spec.max_rerenders} reached")
    if remaining_s < render_s:
        return Stop(
            f"request deadline: {max(remaining_s, 0.0):.2f}s left, a render took {render_s:.2f}s"
        )
    return Rerender(failing, spec.on_fail.pool or first_pool)


def _stronger(asked: object, floor: float | None) -> Any:
    if floor is None:
        return asked
    if isinstance(asked, int | float) and not isinstance(asked, bool) and asked > floor:
        return asked
    return floor


def rerender_body(
    forward: Mapping[str, Any], spec: VerifySpec, n: int, round_no: int
) -> dict[str, Any]:
    """The request for round `round_no` (1, 2, ...) re-rendering `n` images: onFail's
    settings where stronger than the request's, the route's threshold, and, when the
    client fixed a seed, a seed derived from it (the same seed on the same pool would
    draw the same image again; derived, the whole answer stays reproducible)."""
    body = dict(forward)
    body["n"] = n
    of = spec.on_fail
    if of.guidance_scale is not None:
        body["guidance_scale"] = _stronger(forward.get("guidance_scale"), of.guidance_scale)
    if of.steps is not None:
        body["steps"] = int(_stronger(forward.get("steps"), of.steps))
    seed = forward.get("seed")
    if isinstance(seed, int) and not isinstance(seed, bool):
        body["seed"] = (seed + round_no * SEED_STRIDE) % SEED_SPAN
    body["min_word_accuracy"] = spec.min_word_accuracy
    return body


# The fields rerender_body sets: what an edit's re-render replaces in the client's form.
RERENDER_FIELDS = ("n", "seed", "steps", "guidance_scale", "min_word_accuracy")


def rerender_fields(body: Mapping[str, Any]) -> dict[str, str]:
    """rerender_body's settings as multipart text values, for an edit's re-render (the
    client's form with these fields replaced; its files and other fields unchanged)."""
    return {k: json.dumps(body[k]) for k in RERENDER_FIELDS if k in body}


def verdict(slots: Sequence[Slot]) -> str:
    """The request's X-ModelFleet-Verify: failed if any image still fails, rescued if a
    failed one was re-rendered to a pass, passed if any passed, else unverified."""
    statuses = [s.best.check.status for s in slots]
    if FAILED in statuses:
        return FAILED
    if any(s.attempts > 1 for s in slots):
        return RESCUED
    if PASSED in statuses:
        return PASSED
    return UNVERIFIED


def annotate(slot: Slot, min_word_accuracy: float, stop_reason: str | None) -> dict[str, Any]:
    """The `data[i]` the client gets: the best render, its block stating the route's
    judgement and whether, why and how often it was rendered."""
    item = dict(slot.best.item)
    block = item.get("modelfleet")
    if not isinstance(block, Mapping):
        return item
    b = dict(block)
    status = slot.best.check.status
    if status in (PASSED, FAILED):
        b["status"] = status
        b["passed"] = status == PASSED
        b["min_word_accuracy"] = min_word_accuracy
    b["rerendered"] = slot.attempts > 1
    b["rerender_reason"] = slot.rerender_reason
    b["attempts"] = slot.attempts
    b["pool"] = slot.best.pool
    if status == FAILED and stop_reason:
        b["exhausted_reason"] = stop_reason
    item["modelfleet"] = b
    return item


def exhausted_message(slots: Sequence[Slot], min_word_accuracy: float, reason: str) -> str:
    """The 422 for onExhausted: error, naming each failed image's best score."""
    failed = [(i, s) for i, s in enumerate(slots) if s.best.check.status == FAILED]
    parts = ", ".join(
        f"image {i}: best word_accuracy {s.best.check.word_accuracy:g} after "
        f"{s.attempts} render{'s' if s.attempts > 1 else ''}"
        for i, s in failed
    )
    return (
        f"{len(failed)} of {len(slots)} image(s) failed text verification at "
        f"minWordAccuracy {min_word_accuracy:g} ({parts}); {reason}"
    )


def header_value(text: str, limit: int = 300) -> str:
    """A reason as a header value: ASCII, one line, bounded."""
    flat = " ".join(text.split())
    return flat.encode("ascii", "replace").decode("ascii")[:limit]
