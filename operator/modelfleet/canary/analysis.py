"""Judging measurements against a metric's thresholds: pass, fail or inconclusive.

Rules (docs/canary.md has the user-facing version):

- Missing data is never a failure and never a pass: a provider error, a query that
  matched no series, fewer than minRequests candidate samples or no value at all make
  the check inconclusive.
- `max` is absolute: fail when candidate > max.
- `maxRatioToStable` is relative: fail when candidate > ratio * max(stable, floor).
  The floor (1% error rate, 5 ms latency; 0 for custom queries) keeps a near-zero
  stable value from turning noise into a rollback. The stable value must come from at
  least minRequests stable samples in the same window; otherwise the stable value of the
  previous analysis is used (at 100% the stable pool gets no traffic), and without one
  the check is inconclusive.
- A metric fails when any threshold it can evaluate fails, even if another threshold is
  inconclusive.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from modelfleet.api.canary import CheckResult, MetricResult, MetricSpec
from modelfleet.canary.ports import Measurement
from modelfleet.canary.types import MetricObservation

NO_SERIES = "query returned no series (misconfigured?)"
NOT_ENOUGH_SAMPLES = "not enough samples"
PROVIDER_UNAVAILABLE = "metrics provider unavailable"
NO_DATA = "no data"

RATIO_FLOORS: dict[str, float] = {
    "error-rate": 0.01,
    "latency-p95": 0.005,
    "latency-p99": 0.005,
}


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def _missing(m: Measurement, who: str, min_requests: int) -> str | None:
    """Why `m` cannot be judged, or None when it can."""
    if m.error is not None:
        return f"{PROVIDER_UNAVAILABLE}: {m.error}"
    if m.no_series:
        return f"{NO_SERIES} for the {who} pool"
    if m.samples is None and min_requests > 0:
        return f"{NOT_ENOUGH_SAMPLES}: the {who} sample count is unknown"
    if m.samples is not None and m.samples < min_requests:
        return (
            f"{NOT_ENOUGH_SAMPLES}: {m.samples} {who} requests in the window, "
            f"minRequests is {min_requests}"
        )
    if m.usable_value is None:
        return f"{NO_DATA}: the provider returned no {who} value"
    return None


def judge_metric(
    metric: MetricSpec,
    observed: MetricObservation | None,
    min_requests: int,
    previous: MetricResult | None = None,
) -> MetricResult:
    """Judge one metric. `previous` is its result from the last analysis (stable fallback)."""

    def result(
        r: CheckResult,
        message: str,
        value: float | None = None,
        stable: float | None = None,
        threshold: float | None = None,
    ) -> MetricResult:
        samples = observed.candidate.samples if observed is not None else None
        return MetricResult(
            name=metric.name,
            result=r,
            value=value,
            stable_value=stable,
            threshold=threshold,
            samples=samples,
            message=message,
        )

    if observed is None:
        return result("inconclusive", f"{NO_DATA}: the metric was not measured")
    why = _missing(observed.candidate, "candidate", min_requests)
    if why is not None:
        return result("inconclusive", why, value=observed.candidate.usable_value)
    value = observed.candidate.usable_value
    assert value is not None  # _missing() checked it

    fails: list[str] = []
    holds: list[str] = []
    limits: list[float] = []
    baseline: float | None = None
    if metric.max is not None:
        limits.append(metric.max)
        if value > metric.max:
            fails.append(f"{_fmt(value)} > max {_fmt(metric.max)}")
    if metric.max_ratio_to_stable is not None:
        ratio = metric.max_ratio_to_stable
        baseline, note = _stable_baseline(observed.stable, min_requests, previous)
        if baseline is None:
            holds.append(note)
        else:
            floor = RATIO_FLOORS.get(metric.builtin or "", 0.0)
            limit = ratio * max(baseline, floor)
            limits.append(limit)
            if value > limit:
                fails.append(
                    f"{_fmt(value)} > {_fmt(ratio)} x stable {_fmt(baseline)}{note}"
                    f" (limit {_fmt(limit)})"
                )
    threshold = min(limits) if limits else None
    samples = observed.candidate.samples
    where = f" ({samples} requests)" if samples is not None else ""
    if fails:
        return result("fail", "; ".join(fails) + where, value, baseline, threshold)
    if holds:
        return result("inconclusive", "; ".join(holds), value, baseline, threshold)
    limit_text = f" <= {_fmt(threshold)}" if threshold is not None else ""
    return result("pass", f"{_fmt(value)}{limit_text}{where}", value, baseline, threshold)


def _stable_baseline(
    stable: Measurement | None, min_requests: int, previous: MetricResult | None
) -> tuple[float | None, str]:
    """(baseline, note); baseline None means inconclusive and the note says why."""
    why = (
        _missing(stable, "stable", min_requests)
        if stable is not None
        else f"{NO_DATA}: the stable pool was not measured"
    )
    if why is None and stable is not None:
        return stable.usable_value, ""
    if previous is not None and previous.stable_value is not None:
        return previous.stable_value, " (stable value from the previous analysis)"
    return None, f"cannot compare with stable: {why}"


def overall(results: Iterable[MetricResult]) -> CheckResult:
    """Any fail fails; otherwise any inconclusive is inconclusive; otherwise pass."""
    kinds = {r.result for r in results}
    if "fail" in kinds:
        return "fail"
    if "inconclusive" in kinds:
        return "inconclusive"
    return "pass"


def summarize(results: Sequence[MetricResult], kind: CheckResult) -> str:
    """`name: message` for every result of `kind`, for status.message and Events."""
    return "; ".join(f"{r.name}: {r.message}" for r in results if r.result == kind)
