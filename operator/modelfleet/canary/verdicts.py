"""Comparing a candidate with its stable by rank or proportion, and when end-to-end latency
may be compared at all. The statistics are modelfleet.canary.statistics; this module picks
the test for a metric and feeds it the measurements.

- mann-whitney: both pools' measurements carry binned samples (Measurement.strata, e.g.
  service time per image by batch size); compare_strata() within strata both have.
- proportion: error-rate / text-pass-rate with counts (Measurement.hits of samples);
  compare_proportions().
- value: the ratio of the two values (analysis.py, as before the statistics).

Pure: no I/O, no clock.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

from modelfleet.api.canary import HIGHER_IS_BETTER, LATENCY_METRICS, RATE_METRICS, MetricSpec
from modelfleet.canary.ports import Measurement
from modelfleet.canary.statistics import (
    Comparison,
    Histogram,
    Verdict,
    compare_proportions,
    compare_strata,
)
from modelfleet.canary.types import MetricObservation

Method = Literal["mann-whitney", "proportion", "value"]

# The least stable rate a rate ratio is taken against (a near-zero stable error rate
# must not turn noise into a rollback).
PROPORTION_FLOORS: dict[str, float] = {"error-rate": 0.01}


def higher_is_better(metric: MetricSpec) -> bool:
    """Quality metrics; for a custom query, a min threshold without a max says so."""
    if metric.builtin is not None:
        return metric.builtin in HIGHER_IS_BETTER
    lower = metric.max is not None or metric.max_ratio_to_stable is not None
    return not lower and (metric.min is not None or metric.min_ratio_to_stable is not None)


def _direction_fits(metric: MetricSpec) -> bool:
    """A ratio limit in the metric's own direction (maxRatioToStable on a lower-is-better
    metric, minRatioToStable on a higher-is-better one), or maxWorseProbability."""
    if higher_is_better(metric):
        return metric.max_ratio_to_stable is None
    return metric.min_ratio_to_stable is None


def method_for(metric: MetricSpec, candidate: Measurement) -> Method:
    """The comparison with stable `metric` gets. auto follows the candidate's data: binned
    samples -> mann-whitney; a rate with counts -> proportion; else value. Checks without
    a stable comparison are judged on the value."""
    if not metric.compares_with_stable:
        return "value"
    if metric.method in ("mann-whitney", "proportion", "value"):
        return metric.method
    if not _direction_fits(metric):
        return "value"
    if candidate.strata is not None:
        return "mann-whitney"
    if metric.builtin in RATE_METRICS and candidate.hits is not None:
        return "proportion"
    return "value"


def comparison_for(metric: MetricSpec, min_samples: int) -> Comparison:
    """The statistics' view of the metric's relative limits (ValueError when they do not
    fit, e.g. maxRatioToStable on a higher-is-better metric)."""
    higher = higher_is_better(metric)
    return Comparison(
        higher_is_better=higher,
        max_ratio=metric.max_ratio_to_stable,
        min_ratio=metric.min_ratio_to_stable,
        max_worse_probability=metric.max_worse_probability,
        alpha=metric.alpha,
        min_samples=max(1, metric.min_samples if metric.min_samples is not None else min_samples),
        floor=PROPORTION_FLOORS.get(metric.builtin or "", 0.0),
    )


def _unusable(m: Measurement | None, who: str) -> str | None:
    if m is None:
        return f"the {who} pool was not measured"
    if m.error is not None:
        return f"metrics provider unavailable for the {who} pool: {m.error}"
    if m.no_series:
        return f"query returned no series (misconfigured?) for the {who} pool"
    return None


def _inconclusive(method: Method, message: str, c: Measurement, s: Measurement | None) -> Verdict:
    return Verdict(
        "inconclusive",
        message,
        method,
        float(c.samples or 0),
        float(s.samples or 0) if s is not None else 0.0,
    )


def compare(
    metric: MetricSpec, observed: MetricObservation, method: Method, min_samples: int
) -> Verdict:
    """Judge the relative limits of `metric` by `method` (mann-whitney or proportion).
    Missing or unfit data is inconclusive, never a failure; the message says why."""
    cand = observed.candidate
    stable, note = _baseline(observed, method, metric, min_samples)
    for m, who in ((cand, "candidate"), (stable, "stable")):
        why = _unusable(m, who)
        if why is not None:
            prefix = "" if who == "candidate" else "cannot compare with stable: "
            return _inconclusive(method, f"{prefix}{why}", cand, stable)
    assert stable is not None  # _unusable checked it
    try:
        c = comparison_for(metric, min_samples)
        if method == "mann-whitney":
            if cand.strata is None or stable.strata is None:
                who = "candidate" if cand.strata is None else "stable"
                return _inconclusive(
                    method,
                    f"method mann-whitney: the provider gave no distribution for the {who} "
                    "pool (only a value)",
                    cand,
                    stable,
                )
            return _noted(compare_strata(_pair_strata(cand.strata, stable.strata), c), note)
        if (
            cand.hits is None
            or stable.hits is None
            or cand.samples is None
            or stable.samples is None
        ):
            who = "candidate" if cand.hits is None or cand.samples is None else "stable"
            return _inconclusive(
                method,
                f"method proportion: the provider gave no counts for the {who} pool",
                cand,
                stable,
            )
        verdict = compare_proportions(cand.hits, cand.samples, stable.hits, stable.samples, c)
        return _noted(verdict, note)
    except ValueError as e:  # limits that do not fit the metric, mismatched buckets
        return _inconclusive(method, f"cannot compare with stable: {e}", cand, stable)


SAME_WINDOW = "stable sample: the same window"
REFERENCE = "stable sample: its reference since before the canary (too few in the same window)"


def _baseline(
    observed: MetricObservation, method: Method, metric: MetricSpec, min_samples: int
) -> tuple[Measurement | None, str]:
    """The stable measurement to compare with, and a note saying which. The same window
    comes first: both pools ran at once, so a slowdown of the whole machine (or cluster)
    is seen on both sides, while the longer reference may come from a quieter time. The
    reference serves where the same window is too thin: batch sizes the stable did not
    run at a low weight, and the 100% step."""
    same, reference = observed.stable_same_window, observed.stable
    if same is None:
        return reference, ""
    least = _least(metric, min_samples)
    if _unusable(same, "stable") is None and _enough(observed.candidate, same, method, least):
        return same, SAME_WINDOW
    return reference, REFERENCE


def _least(metric: MetricSpec, min_samples: int) -> int:
    """The samples each side needs in the same window to be compared there."""
    return max(1, metric.min_samples if metric.min_samples is not None else min_samples)


def _enough(cand: Measurement, stable: Measurement, method: Method, least: int) -> bool:
    """Whether both sides hold `least` samples where they can be compared (strata both
    have, for the rank test)."""
    if method == "mann-whitney":
        if cand.strata is None or stable.strata is None:
            return False
        s = dict(stable.strata)
        shared = [(h, s[n]) for n, h in cand.strata if n in s and h.total > 0 and s[n].total > 0]
        return (
            sum(hc.total for hc, _ in shared) >= least
            and sum(hs.total for _, hs in shared) >= least
        )
    return stable.hits is not None and stable.samples is not None and stable.samples >= least


def _noted(verdict: Verdict, note: str) -> Verdict:
    return replace(verdict, message=f"{verdict.message}; {note}") if note else verdict


def _pair_strata(
    cand: tuple[tuple[str, Histogram], ...], stable: tuple[tuple[str, Histogram], ...]
) -> list[tuple[str, Histogram, Histogram]]:
    """(name, candidate, stable) for every stratum either side has; the side without it
    gets an empty histogram (compare_strata leaves such strata out and says so)."""
    c, s = dict(cand), dict(stable)
    names = list(c) + [n for n in s if n not in c]
    out: list[tuple[str, Histogram, Histogram]] = []
    for n in names:
        hc, hs = c.get(n), s.get(n)
        like = hc if hc is not None else hs
        assert like is not None
        empty = Histogram(like.bounds, (0.0,) * len(like.counts))
        out.append((n, hc if hc is not None else empty, hs if hs is not None else empty))
    return out


def stable_idle(
    method: Method, observed: MetricObservation, metric: MetricSpec, min_samples: int
) -> str | None:
    """Why a rank test cannot be judged in this window, or None: the stable served fewer
    requests in it than a same-window comparison needs (the 100% step, where it serves
    only what began before the step). Its sample would then be the reference from
    earlier minutes, and times per image drift with what else the machine runs, so that
    would judge the candidate's window against another load (issue 11: equal footing or
    inconclusive). Rates (errors, passed renders) do not drift with load and still use
    the reference."""
    same = observed.stable_same_window
    if method != "mann-whitney" or same is None or same.error is not None:
        return None
    if same.strata is not None:
        served = round(sum(h.total for _, h in same.strata))
    else:
        served = same.samples or 0
    least = _least(metric, min_samples)
    if served >= least:
        return None
    what = "nothing" if served == 0 else f"only {served} (fewer than {least})"
    return (
        f"the stable served {what} in this window (100%), and its reference was measured "
        "minutes earlier under another load"
    )


def load_mismatch(
    metric: MetricSpec,
    observed: MetricObservation,
    tolerance: float,
    candidate_replicas: int | None,
    stable_replicas: int | None,
) -> str | None:
    """Why `metric`'s ratio to stable cannot be judged in this window, or None. End-to-end
    latency holds queueing, so it is compared only when the pools' requests per ready
    replica match: the larger at most (1 + loadMatchTolerance) times the smaller."""
    if metric.builtin not in LATENCY_METRICS:
        return None
    cn = observed.candidate.samples
    sn = observed.stable.samples if observed.stable is not None else None
    if not candidate_replicas or not stable_replicas:
        return (
            "cannot compare end-to-end latency with stable: ready replicas unknown "
            f"(candidate {candidate_replicas}, stable {stable_replicas})"
        )
    if cn is None or sn is None:
        return "cannot compare end-to-end latency with stable: request counts unknown"
    lc, ls = cn / candidate_replicas, sn / stable_replicas
    lo, hi = min(lc, ls), max(lc, ls)
    if hi > 0 and (lo <= 0 or hi > (1.0 + tolerance) * lo):
        return (
            f"loads differ: candidate {lc:.4g} vs stable {ls:.4g} requests per ready replica "
            f"in the window ({cn}/{candidate_replicas} vs {sn}/{stable_replicas}), beyond "
            f"loadMatchTolerance {tolerance:g}; end-to-end latency holds queueing, so its "
            "ratio to stable is not judged (service-time compares like with like)"
        )
    return None
