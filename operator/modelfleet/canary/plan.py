"""When the canary's next analysis is due and over which windows: plan_analysis(), which
the controller runs before decide() (whose window arithmetic it shares). Pure."""

from __future__ import annotations

import math
from datetime import UTC, datetime

from modelfleet.api.canary import REFERENCE_HORIZON_SECONDS, CanarySpec, CanaryStatus, MetricSpec
from modelfleet.api.common import parse_duration, parse_time
from modelfleet.canary.types import AnalysisPlan

EARLY_METRICS = frozenset({"error-rate"})


def aware(t: datetime) -> datetime:
    """Naive times are UTC."""
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def interval_seconds(spec: CanarySpec) -> float:
    return parse_duration(spec.interval).total_seconds()


def early_check_period(interval: float) -> float:
    """How often the early-abort check runs inside a window: 1-5 s, about 5 per window."""
    return max(1.0, min(5.0, interval / 5.0))


def early_metrics(spec: CanarySpec) -> tuple[MetricSpec, ...]:
    """Metrics judged before the window ends: error rates only (latency is too noisy)."""
    return tuple(m for m in spec.analysis.metrics if m.builtin in EARLY_METRICS)


def plan_analysis(spec: CanarySpec, status: CanaryStatus, now: datetime) -> AnalysisPlan | None:
    """What to measure before decide(), or None when no analysis is due.

    full: the step's interval has elapsed; all metrics over the last `interval`.
    early: inside the window; error-rate metrics over the elapsed part (fast abort).
    """
    if (
        status.phase != "Progressing"
        or spec.paused
        or status.current_step is None
        or status.step_started_at is None
    ):
        return None
    elapsed = (aware(now) - parse_time(status.step_started_at)).total_seconds()
    interval = interval_seconds(spec)
    reference = reference_window_seconds(spec, status, now)
    if elapsed >= interval:
        return AnalysisPlan(
            kind="full",
            step=status.current_step,
            step_started_at=status.step_started_at,
            window_seconds=max(1, math.floor(interval)),
            metrics=tuple(spec.analysis.metrics),
            reference_window_seconds=reference,
        )
    early = early_metrics(spec)
    if early and elapsed >= early_check_period(interval):
        return AnalysisPlan(
            kind="early",
            step=status.current_step,
            step_started_at=status.step_started_at,
            window_seconds=max(1, math.floor(elapsed)),
            metrics=early,
            reference_window_seconds=reference,
        )
    return None


def reference_window_seconds(spec: CanarySpec, status: CanaryStatus, now: datetime) -> int | None:
    """The stable's reference window, ending now: from referenceLookback before the canary
    began (status.startedAt), at most REFERENCE_HORIZON_SECONDS. None without a start."""
    if status.started_at is None:
        return None
    lookback = parse_duration(spec.analysis.reference_lookback).total_seconds()
    span = (aware(now) - parse_time(status.started_at)).total_seconds() + lookback
    return max(1, min(REFERENCE_HORIZON_SECONDS, math.ceil(span)))
