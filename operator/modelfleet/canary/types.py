"""Inputs and outputs of the canary core: observations in, status + actions out."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from modelfleet.api.canary import (
    COST_METRICS,
    LATENCY_METRICS,
    RATE_METRICS,
    TEXT_METRICS,
    CanaryStatus,
    MetricSpec,
    StepRecord,
)
from modelfleet.canary.ports import Measurement
from modelfleet.canary.replay import ReplayObservation

# --- observations -------------------------------------------------------------------------


@dataclass(frozen=True)
class PoolReadiness:
    """Whether a pool can take traffic, and why not in words."""

    ready: bool
    message: str = ""
    # Ready replicas now (None: unknown); requests per ready replica tell whether two
    # pools' end-to-end latencies are comparable.
    ready_replicas: int | None = None
    # The pool cannot get the GPUs its replicas need (its CapacityStarved condition), in
    # words; None when it can. A starved candidate pauses the canary (CapacityStarved).
    starved: str | None = None


def uses_reference(metric: MetricSpec) -> bool:
    """Whether the stable side of `metric` is measured over the stable's reference window
    (from referenceLookback before the canary began until now) instead of the candidate's
    window: the rank and proportion tests of load-independent quantities (service time per
    image within a batch size, error and pass rates). End-to-end latency holds queueing,
    so it is only ever compared within the same window; so are method value checks."""
    if not metric.compares_with_stable or metric.builtin is None:
        return False
    if metric.builtin in LATENCY_METRICS or metric.method == "value":
        return False
    if metric.method in ("mann-whitney", "proportion"):
        return True
    return metric.builtin == "service-time" or metric.builtin in RATE_METRICS


@dataclass(frozen=True)
class AnalysisPlan:
    """What the controller must measure before calling decide().

    `step` and `step_started_at` identify the window; decide() ignores results whose
    identity no longer matches the status, so a result is consumed at most once.
    """

    kind: Literal["full", "early"]
    step: int
    step_started_at: str
    window_seconds: int
    metrics: tuple[MetricSpec, ...]
    # The stable's reference window for rank and proportion tests, ending now (None: the
    # stable is measured over the candidate's window).
    reference_window_seconds: int | None = None

    def needs_stable(self, metric: MetricSpec) -> bool:
        """Relative thresholds need the stable pool's value; text metrics always measure it,
        since the stable's verified renders tell "no text in this traffic" from "the
        candidate stopped rendering readable text"; cost per image too, so status shows
        what the stable costs beside the candidate even when only max judges it."""
        return (
            metric.compares_with_stable
            or metric.builtin in TEXT_METRICS
            or metric.builtin in COST_METRICS
        )

    def stable_window_seconds(self, metric: MetricSpec) -> int:
        """The window the stable pool is measured over for `metric`."""
        if self.reference_window_seconds is not None and uses_reference(metric):
            return max(self.window_seconds, self.reference_window_seconds)
        return self.window_seconds


@dataclass(frozen=True)
class MetricObservation:
    """One metric measured on both pools.

    stable: over the candidate's window, or over the stable's reference window for rank
    and proportion tests (AnalysisPlan.stable_window_seconds); stable_same_window: the
    stable over the candidate's own window too, when `stable` is that longer reference
    (the tests prefer it when it holds enough samples: both pools measured at once)."""

    candidate: Measurement
    stable: Measurement | None = None
    stable_same_window: Measurement | None = None


@dataclass(frozen=True)
class AnalysisObservation:
    """Results for an AnalysisPlan, keyed by metric name."""

    plan: AnalysisPlan
    metrics: Mapping[str, MetricObservation]


@dataclass(frozen=True)
class Observations:
    """Everything decide() may look at besides spec, status and the time.

    action: raw value of the `modelfleet.io/action` annotation (see canary.manual).
    generation: metadata.generation of the Canary.
    replay: the pre-flight replay's state (canary.replay), when spec.replay is set.
    """

    stable: PoolReadiness
    candidate: PoolReadiness
    generation: int | None = None
    analysis: AnalysisObservation | None = None
    action: str | None = None
    replay: ReplayObservation | None = None


# --- actions ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SetWeight:
    """Send `weight` percent of the route to the candidate, the rest to stable.

    Emitted on every tick while the canary owns the route, so applying it must be
    idempotent; this also heals a crash between status write and apply.
    """

    weight: int


@dataclass(frozen=True)
class Promote:
    """Point the route at the candidate pool permanently (drop the weight override)."""

    pool: str


@dataclass(frozen=True)
class RollBack:
    """The canary was rolled back (weight already 0 via SetWeight(0)); for logs/metrics."""

    reason: str
    message: str


@dataclass(frozen=True)
class ScaleDownStable:
    """Scale the old stable pool to zero; emitted only once spec.scaleDownDelay has passed."""

    pool: str


@dataclass(frozen=True)
class RecordAnalysis:
    """An analysis was judged (already in next_status.history); for logs/metrics."""

    record: StepRecord
    early: bool = False


@dataclass(frozen=True)
class EmitEvent:
    """A Kubernetes Event on the Canary. Emitted on transitions only."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class ScalePool:
    """Write a pool's replicas through its scale subresource (spec.capacity shift)."""

    pool: str
    replicas: int


Action = SetWeight | Promote | RollBack | ScaleDownStable | RecordAnalysis | EmitEvent | ScalePool


@dataclass(frozen=True)
class Decision:
    """decide()'s answer.

    requeue_after: seconds until decide() needs to run again (None: only on change);
    0 means as soon as possible (e.g. an analysis is due but was not supplied).
    """

    next_status: CanaryStatus
    actions: list[Action] = field(default_factory=list)
    requeue_after: float | None = None

    def status_changed(self, old: CanaryStatus) -> bool:
        """True when the status must be written (skip the write when unchanged)."""
        return self.next_status != old
