"""Judging measurements against a metric's thresholds: pass, fail or inconclusive.

Rules (docs/canary.md has the user-facing version):

- Missing data is never a failure and never a pass: a provider error, a query that
  matched no series, fewer than minRequests candidate samples or no value at all make
  the check inconclusive.
- `max` is absolute: fail when candidate > max; `min` its higher-is-better twin.
- Relative limits (maxRatioToStable, minRatioToStable, maxWorseProbability) are judged
  by the metric's method (canary.verdicts.method_for):
  - mann-whitney (both pools carry binned samples, e.g. service time by batch size) and
    proportion (error-rate / text-pass-rate with counts): canary.statistics; fail only
    when an effect limit is exceeded and p < alpha, inconclusive below minSamples; the
    stable is measured over its reference window (AnalysisPlan.stable_window_seconds).
  - value: fail when candidate > ratio * max(stable, floor) (< ratio * stable for min).
    The floor (1% error rate, 5 ms latency; 0 for custom queries) keeps a near-zero
    stable value from turning noise into a rollback. The stable value must come from at
    least minRequests stable samples in the same window; otherwise the stable value of
    the previous analysis is used, and without one the check is inconclusive.
- End-to-end latency (latency-p95/p99) ratios are judged only when the pools' requests
  per ready replica match within loadMatchTolerance, and never fall back to an earlier
  window: queueing makes latency depend on load.
- Text metrics are counted over verified renders: their sample count is the verified
  renders in the window, gated by minVerified instead of minRequests.
- cost-per-image is the USD the workers reported over the images of ok answers, judged
  on its value (max, maxRatioToStable). Its samples are images (gated by minRequests):
  a pool that made no images has no cost per image, which is inconclusive, never a
  failure. A stable that reports no cost (no price set) makes every priced candidate
  exceed a ratio; the message says so. The stable's value is reported even when only max
  judges the candidate, so status can show both.
- A metric fails when any threshold it can evaluate fails, even if another threshold is
  inconclusive.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from modelfleet.api.canary import (
    COST_METRICS,
    LATENCY_METRICS,
    TEXT_METRICS,
    CheckResult,
    MetricResult,
    MetricSpec,
)
from modelfleet.canary.ports import Measurement
from modelfleet.canary.statistics import Verdict, binomial_tail
from modelfleet.canary.types import MetricObservation
from modelfleet.canary.verdicts import (
    PROPORTION_FLOORS,
    compare,
    load_mismatch,
    method_for,
    stable_idle,
)

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


@dataclass(frozen=True)
class SampleGate:
    """The least samples a value needs, and what they are called in messages."""

    least: int
    unit: str = "requests"
    setting: str = "minRequests"


def sample_gate(metric: MetricSpec, min_requests: int, min_verified: int | None) -> SampleGate:
    """Text metrics count verified renders (minVerified); everything else requests."""
    if metric.builtin in TEXT_METRICS and min_verified is not None:
        return SampleGate(min_verified, "verified renders", "minVerified")
    if metric.builtin in COST_METRICS:
        return SampleGate(min_requests, "images")
    return SampleGate(min_requests)


def _missing(m: Measurement, who: str, gate: SampleGate | int) -> str | None:
    """Why `m` cannot be judged, or None when it can."""
    g = gate if isinstance(gate, SampleGate) else SampleGate(gate)
    if m.error is not None:
        return f"{PROVIDER_UNAVAILABLE}: {m.error}"
    if m.no_series:
        return f"{NO_SERIES} for the {who} pool"
    if m.samples is None and g.least > 0:
        return f"{NOT_ENOUGH_SAMPLES}: the {who} sample count is unknown"
    if m.samples is not None and m.samples < g.least:
        return (
            f"{NOT_ENOUGH_SAMPLES}: {m.samples} {who} {g.unit} in the window, "
            f"{g.setting} is {g.least}"
        )
    if m.usable_value is None:
        return f"{NO_DATA}: the provider returned no {who} value"
    return None


def errors_prove_max(metric: MetricSpec, candidate: Measurement) -> str | None:
    """Before minRequests, the errors alone may prove an error rate above `max`: when k
    errors in n requests would happen with probability below `alpha` at a true rate of
    `max` (exact binomial tail), the check fails now. A candidate whose every request
    fails is rolled back after a few requests, not after minRequests; a few errors among
    many successes never prove it. Returns the reason, or None."""
    if metric.builtin != "error-rate" or metric.max is None or metric.max >= 1.0:
        return None
    n, k = candidate.samples, candidate.hits
    if n is None or k is None or n <= 0 or candidate.error is not None:
        return None
    p = binomial_tail(k, n, metric.max)
    if p >= metric.alpha:
        return None
    return (
        f"{_fmt(k)} of {n} requests failed: the error rate is above max {_fmt(metric.max)} "
        f"with one-sided p {p:.2g} < alpha {_fmt(metric.alpha)} (exact binomial test; "
        "judged before minRequests because the errors alone prove it)"
    )


def judge_metric(
    metric: MetricSpec,
    observed: MetricObservation | None,
    min_requests: int,
    previous: MetricResult | None = None,
    min_verified: int | None = None,
    *,
    load_match_tolerance: float = 0.25,
    candidate_replicas: int | None = None,
    stable_replicas: int | None = None,
) -> MetricResult:
    """Judge one metric. `previous` is its result from the last analysis (stable fallback
    of value checks); `min_verified` gates the text metrics (None: they use min_requests
    like the rest). The ready replicas and `load_match_tolerance` decide whether a
    latency ratio to stable can be judged in this window."""
    gate = sample_gate(metric, min_requests, min_verified)
    method = method_for(metric, observed.candidate) if observed is not None else "value"

    def result(
        r: CheckResult,
        message: str,
        value: float | None = None,
        stable: float | None = None,
        threshold: float | None = None,
        verdict: Verdict | None = None,
    ) -> MetricResult:
        samples = observed.candidate.samples if observed is not None else None
        stable_samples = (
            observed.stable.samples if observed is not None and observed.stable else None
        )
        shows_stable = metric.compares_with_stable or metric.builtin in COST_METRICS
        if (
            stable is None
            and shows_stable
            and not metric.compares_with_stable
            and observed is not None
        ):
            # Cost per image: the stable's shown beside the candidate's when only max
            # judged it (a ratio check shows the baseline it used instead).
            stable = observed.stable.usable_value if observed.stable is not None else None
        p_value = worse = ratio = None
        if verdict is not None:
            samples, stable_samples = round(verdict.n_candidate), round(verdict.n_stable)
            p_value, worse, ratio = verdict.p_value, verdict.worse_probability, verdict.ratio
            # The medians (rates) the test compared, unless an absolute limit judged the value.
            if verdict.candidate is not None and metric.max is None and metric.min is None:
                value = verdict.candidate
            stable = verdict.stable if verdict.stable is not None else stable
            if threshold is None and verdict.stable is not None:
                threshold = _ratio_limit(metric, verdict.stable)
        elif stable is not None and value is not None and stable > 0:
            ratio = value / stable
        return MetricResult(
            name=metric.name,
            result=r,
            value=value,
            stable_value=stable,
            threshold=threshold,
            samples=samples,
            stable_samples=stable_samples if shows_stable else None,
            method=method,
            p_value=p_value,
            worse_probability=worse,
            ratio=ratio,
            message=message,
        )

    if observed is None:
        return result("inconclusive", f"{NO_DATA}: the metric was not measured")
    if _no_text_on_either_pool(metric, observed):
        return result(
            "inconclusive",
            "not applicable: neither pool produced a verified render in the window; "
            "decided on the other checks",
        ).model_copy(update={"informational": True})

    verdict: Verdict | None = None
    # Why the ratio to stable cannot be judged in this window, whatever the test:
    # end-to-end latency at unequal load per replica, or a rank test whose stable served
    # (next to) nothing in it (100%: its only sample is from an earlier load).
    unjudged = load_mismatch(
        metric, observed, load_match_tolerance, candidate_replicas, stable_replicas
    ) or (
        stable_idle(method, observed, metric, gate.least) if metric.compares_with_stable else None
    )
    if unjudged is not None and _only_relative(metric):
        # Said in status; this step does not hold for it, as it is judged in the windows
        # where the footing is equal. The canary holds before 100% until one has judged it
        # (core: unjudged_metrics).
        return result(
            "inconclusive",
            f"not judged in this window: {unjudged}; decided on the other checks",
            value=observed.candidate.usable_value,
        ).model_copy(update={"informational": True, "unjudged": True})
    # With an absolute limit too, that limit is judged and the ratio left out (and said).
    if method != "value" and unjudged is None:
        verdict = compare(metric, observed, method, gate.least)
    value_checks = metric.max is not None or metric.min is not None or verdict is None
    why = _missing(observed.candidate, "candidate", gate)
    if why is not None and value_checks:
        proof = errors_prove_max(metric, observed.candidate)
        if proof is not None:
            value = observed.candidate.usable_value
            return result("fail", proof, value=value, threshold=metric.max, verdict=verdict)
        if verdict is None or verdict.result != "fail":
            text = why if verdict is None else f"{why}; {verdict.message}"
            return result(
                "inconclusive", text, value=observed.candidate.usable_value, verdict=verdict
            )
        value_checks = False  # the test failed the candidate: that stands
    value = observed.candidate.usable_value

    fails: list[str] = []
    holds: list[str] = []
    limits: list[float] = []
    baseline: float | None = None
    if value_checks:
        assert value is not None  # _missing() checked it
        _absolute(metric, value, fails, limits)
        if verdict is None and metric.compares_with_stable and unjudged is None:
            baseline = _relative(
                metric,
                observed,
                value,
                gate,
                previous,
                fails,
                holds,
                limits,
            )
    higher = metric.min is not None or metric.min_ratio_to_stable is not None
    lower = metric.max is not None or metric.max_ratio_to_stable is not None
    # The binding limit: the tightest of its family (the upper one when both are set).
    threshold = (min(limits) if lower or not higher else max(limits)) if limits else None
    samples = observed.candidate.samples
    where = f" ({samples} {gate.unit})" if samples is not None else ""
    tail = f"; {verdict.message}" if verdict is not None else ""
    if unjudged is not None:
        tail += f"; ratio to stable not judged in this window: {unjudged}"
    if verdict is not None and verdict.result == "fail":
        text = "; ".join(fails) + where + tail if fails else verdict.message
        return result("fail", text, value, baseline, threshold, verdict)
    if fails:
        text = "; ".join(fails) + where + tail
        return result("fail", text, value, baseline, threshold, verdict)
    if verdict is not None and verdict.result == "inconclusive":
        return result(
            "inconclusive",
            "; ".join([*holds, verdict.message]),
            value,
            baseline,
            threshold,
            verdict,
        )
    if holds:
        return result("inconclusive", "; ".join(holds), value, baseline, threshold, verdict)
    if not value_checks and verdict is not None:
        return result("pass", verdict.message, value, baseline, threshold, verdict)
    sign = ">=" if higher and not lower else "<="
    limit_text = f" {sign} {_fmt(threshold)}" if threshold is not None else ""
    text = f"{_fmt(value or 0.0)}{limit_text}{where}{tail}"
    return result("pass", text, value, baseline, threshold, verdict)


def _only_relative(metric: MetricSpec) -> bool:
    """The metric has only limits relative to the stable (no absolute max or min)."""
    return metric.max is None and metric.min is None


def needs_a_judged_window(metric: MetricSpec) -> bool:
    """A check that a window may leave unjudged (informational), with no absolute limit
    to fall back on: some window of the canary must judge it before the candidate takes
    all the traffic, or the swap would rest on no measurement of it at all."""
    return metric.compares_with_stable and _only_relative(metric)


def still_unjudged(pending: Sequence[str], results: Iterable[MetricResult]) -> list[str]:
    """`pending` less the checks these results decided: passed or failed, or not
    applicable to either pool (no text drawn). Holding results and windows that left a
    check unjudged keep it pending."""
    decided = {
        r.name
        for r in results
        if r.result != "inconclusive" or (r.informational and not r.unjudged)
    }
    return [name for name in pending if name not in decided]


def _ratio_limit(metric: MetricSpec, stable: float) -> float | None:
    """The median (rate) a test's ratio limit allows, for status' threshold."""
    if metric.max_ratio_to_stable is not None:
        floor = PROPORTION_FLOORS.get(metric.builtin or "", 0.0)
        return metric.max_ratio_to_stable * max(stable, floor)
    if metric.min_ratio_to_stable is not None:
        return metric.min_ratio_to_stable * stable
    return None


def _absolute(metric: MetricSpec, value: float, fails: list[str], limits: list[float]) -> None:
    if metric.max is not None:
        limits.append(metric.max)
        if value > metric.max:
            fails.append(f"{_fmt(value)} > max {_fmt(metric.max)}")
    if metric.min is not None:
        limits.append(metric.min)
        if value < metric.min:
            fails.append(f"{_fmt(value)} < min {_fmt(metric.min)}")


def _relative(
    metric: MetricSpec,
    observed: MetricObservation,
    value: float,
    gate: SampleGate,
    previous: MetricResult | None,
    fails: list[str],
    holds: list[str],
    limits: list[float],
) -> float | None:
    """Method value: the candidate's value against ratio x the stable's. Returns the
    stable value used (None when it could not be judged; `holds` says why)."""
    if metric.max_worse_probability is not None:
        holds.append(
            "maxWorseProbability needs a rank or proportion test, and the provider gave no "
            "distribution or counts for this metric"
        )
    if metric.min_ratio_to_stable is None and metric.max_ratio_to_stable is None:
        return None
    if metric.builtin in LATENCY_METRICS:
        # Called only at matched loads (judge_metric checks): never fall back to an
        # earlier, differently loaded window.
        previous = None
    baseline, note = _stable_baseline(observed.stable, gate, previous)
    if baseline is None:
        holds.append(note)
        return None
    if metric.min_ratio_to_stable is not None:
        ratio = metric.min_ratio_to_stable
        limit = ratio * baseline
        limits.append(limit)
        if value < limit:
            fails.append(
                f"{_fmt(value)} < {_fmt(ratio)} x stable {_fmt(baseline)}{note}"
                f" (limit {_fmt(limit)})"
            )
    if metric.max_ratio_to_stable is not None:
        ratio = metric.max_ratio_to_stable
        floor = RATIO_FLOORS.get(metric.builtin or "", 0.0)
        limit = ratio * max(baseline, floor)
        limits.append(limit)
        if value > limit:
            hint = (
                " (the stable reports no cost: give it a price, e.g. spec.cost.gpuHourPrice, "
                "or judge with max)"
                if metric.builtin in COST_METRICS and baseline <= 0
                else ""
            )
            fails.append(
                f"{_fmt(value)} > {_fmt(ratio)} x stable {_fmt(baseline)}{note}"
                f" (limit {_fmt(limit)}){hint}"
            )
    return baseline


def _stable_baseline(
    stable: Measurement | None, gate: SampleGate, previous: MetricResult | None
) -> tuple[float | None, str]:
    """(baseline, note); baseline None means inconclusive and the note says why."""
    why = (
        _missing(stable, "stable", gate)
        if stable is not None
        else f"{NO_DATA}: the stable pool was not measured"
    )
    if why is None and stable is not None:
        return stable.usable_value, ""
    if previous is not None and previous.stable_value is not None:
        return previous.stable_value, " (stable value from the previous analysis)"
    return None, f"cannot compare with stable: {why}"


def _no_text_on_either_pool(metric: MetricSpec, observed: MetricObservation) -> bool:
    """Pools whose renders carry no readable expected text (tiny diffusion models, prompts
    without quoted text): the text checks cannot apply. Only when the stable has none
    either: a candidate alone without verified renders stays inconclusive and holds."""
    if metric.builtin not in TEXT_METRICS or observed.stable is None:
        return False
    return observed.candidate.samples == 0 and observed.stable.samples == 0


def overall(results: Iterable[MetricResult]) -> CheckResult:
    """Any fail fails; otherwise any inconclusive is inconclusive; otherwise pass.
    Informational results (checks that could not apply) are left out; with nothing
    else judged, the analysis is inconclusive."""
    judged = [r for r in results if not r.informational]
    if not judged:
        return "inconclusive"
    kinds = {r.result for r in judged}
    if "fail" in kinds:
        return "fail"
    if "inconclusive" in kinds:
        return "inconclusive"
    return "pass"


def summarize(results: Sequence[MetricResult], kind: CheckResult) -> str:
    """`name: message` for every result of `kind`, for status.message and Events."""
    return "; ".join(f"{r.name}: {r.message}" for r in results if r.result == kind)
