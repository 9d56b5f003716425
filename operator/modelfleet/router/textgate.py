"""The text gate's shell: read a verified answer, re-render what failed, answer the client.

Only routes with `verify` come here, and only for requests with expected text (generations
and edits); every other response passes through unread. The decisions are
modelfleet.routing.verify_gate's; this module parses bodies, sends the re-renders through
the router's ladder (inside the request's admission slot and before its deadline) and
counts."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from modelfleet.api.routingpolicy import VerifySpec
from modelfleet.router.metrics import RouterMetrics
from modelfleet.router.upstream import AttemptResult, Payload
from modelfleet.routing.form import boundary_of, replace_text_fields
from modelfleet.routing.hold import ColdFailure
from modelfleet.routing.ladder import Attempt, Tried, exhausted
from modelfleet.routing.stats import RERENDER_COST_HEADER
from modelfleet.routing.verify_gate import (
    ERROR_CODE,
    ERROR_STATUS,
    FAILED,
    PASSED,
    Render,
    Slot,
    Stop,
    annotate,
    exhausted_message,
    failure_reason,
    header_value,
    judge,
    next_step,
    offer,
    rerender_body,
    rerender_fields,
    verdict,
)
from modelfleet_common.errors import error_json

VERIFY_HEADER = "X-ModelFleet-Verify"
RERENDERED_HEADER = "X-ModelFleet-Rerendered"


@dataclass(frozen=True)
class Served:
    """A ladder's answer: the pool whose worker answered ok or with a 4xx."""

    pool: str
    res: AttemptResult
    seconds: float  # that attempt's duration


@dataclass(frozen=True)
class Unserved:
    """A ladder that found no answer."""

    tried: list[Tried]
    ladder: tuple[str, ...]
    deadline_hit: bool
    # A pool at zero that was held for (or could not be) and no other pool served.
    cold: ColdFailure | None = None


# Render n images on one pool before the deadline (the router's ladder for that pool).
RenderOn = Callable[[str, Payload, float], Awaitable[Served | Unserved]]


@dataclass(frozen=True)
class GateRequest:
    spec: VerifySpec
    # A generation: the body sent to the worker, threshold included. An edit: its fields
    # as JSON values (what rerender_body changes), the form itself in `edit`.
    forward: Mapping[str, Any]
    edit: Payload | None = None  # an edit's multipart payload as the client sent it

    def rerender(self, body: Mapping[str, Any]) -> Payload:
        """A re-render's payload: the JSON body, or the edit's form with the changed
        fields replaced (its files as sent)."""
        if self.edit is None:
            return Payload(json.dumps(body, separators=(",", ":")).encode())
        e = self.edit
        form = replace_text_fields(e.body, boundary_of(e.content_type), rerender_fields(body))
        return Payload(form, e.path, e.content_type)


@dataclass(frozen=True)
class GateAnswer:
    status: int
    body: bytes
    headers: dict[str, str]
    outcome: str  # label of requests_total


def _data(body: bytes) -> tuple[dict[str, Any], list[Any]] | None:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        return None
    return doc, doc["data"]


def _why_unserved(pool: str, got: Served | Unserved) -> str:
    if isinstance(got, Served):  # a 4xx: the pool refused the stronger settings, say
        text = got.res.body[:200].decode("utf-8", "replace")
        return f"re-render on pool {pool} refused: {got.res.status} {text}"
    if got.deadline_hit:
        return f"re-render on pool {pool} stopped: request deadline passed"
    return f"re-render on pool {pool} failed: {exhausted(got.tried, got.ladder).message}"


class TextGate:
    def __init__(
        self,
        metrics: RouterMetrics,
        clock: Callable[[], float],
        labels: tuple[str, str, str],  # namespace, policy, route
    ) -> None:
        self.metrics = metrics
        self.clock = clock
        self.labels = labels

    def _count(self, renders: list[Render]) -> None:
        m = self.metrics
        for r in renders:
            if r.check.status in (PASSED, FAILED):
                m.text(m.text_verified, *self.labels, r.pool)
                if r.check.status == FAILED:
                    m.text(m.text_failed, *self.labels, r.pool)

    async def run(
        self,
        gate: GateRequest,
        first: Served,
        deadline: float,
        render_on: RenderOn,
        headers: dict[str, str],
    ) -> GateAnswer:
        spec, m = gate.spec, self.metrics
        threshold = spec.min_word_accuracy
        parsed = _data(first.res.body)
        if parsed is None:  # worker-shaped but not JSON we can read: pass it on untouched
            return GateAnswer(200, first.res.body, {**headers, VERIFY_HEADER: "unverified"}, "ok")
        doc, data = parsed
        renders = [Render(it, judge(it, threshold), first.pool) for it in data]
        self._count(renders)
        slots = [Slot(r) for r in renders]
        rounds, render_s = 0, first.seconds
        first_reason: str | None = None
        rerender_pool: str | None = None
        rerender_usd: float | None = None  # what the re-renders' workers said they cost
        stop: str | None
        while True:
            step = next_step(slots, rounds, spec, first.pool, deadline - self.clock(), render_s)
            if isinstance(step, Stop):
                stop = step.reason
                break
            pool = step.pool
            rerender_pool = pool
            if first_reason is None:
                first_reason = failure_reason(slots[step.slots[0]].best, threshold)
            for i in step.slots:
                m.text(m.text_rerendered, *self.labels, slots[i].best.pool, pool)
            body = rerender_body(gate.forward, spec, len(step.slots), rounds + 1)
            t0 = self.clock()
            got = await render_on(pool, gate.rerender(body), deadline)
            render_s = self.clock() - t0
            if isinstance(got, Unserved) or got.res.outcome is not Attempt.OK:
                stop = _why_unserved(pool, got)
                break
            if got.res.cost_usd is not None:
                rerender_usd = (rerender_usd or 0.0) + got.res.cost_usd
            again = _data(got.res.body)
            if again is None:
                stop = f"re-render on pool {pool} answered a body that is not JSON"
                break
            rounds += 1
            new = [Render(it, judge(it, threshold), pool) for it in again[1]]
            self._count(new)
            for i, r in zip(step.slots, new, strict=False):
                slots[i] = offer(slots[i], r, threshold)

        out = {**headers, VERIFY_HEADER: verdict(slots), RERENDERED_HEADER: str(rounds)}
        if first_reason is not None:
            out["X-ModelFleet-Rerender-Reason"] = header_value(first_reason)
        if rerender_pool is not None:
            out["X-ModelFleet-Rerender-Pool"] = rerender_pool
        if rerender_usd is not None:
            out[RERENDER_COST_HEADER] = f"{rerender_usd:.9f}"
        failing = [s for s in slots if s.best.check.status == FAILED]
        for s in slots:
            if s.best.check.status == PASSED and s.attempts > 1:
                m.text(m.text_rescued, *self.labels, s.best.pool)
            elif s.best.check.status == FAILED:
                m.text(m.text_exhausted, *self.labels, s.best.pool)
        reason = stop or ""
        if failing:
            out["X-ModelFleet-Verify-Reason"] = header_value(reason)
        if failing and spec.on_exhausted == "error":
            message = exhausted_message(slots, threshold, reason)
            return GateAnswer(ERROR_STATUS, error_json(ERROR_CODE, message), out, ERROR_CODE)
        doc["data"] = [annotate(s, threshold, stop) for s in slots]
        return GateAnswer(200, json.dumps(doc, separators=(",", ":")).encode(), out, "ok")
