"""Two-sample tests on binned data, for judging a candidate against its stable.

Providers aggregate observations into histograms (the routers' /v1/stats buckets,
Prometheus `_bucket` series), so the raw samples are gone. The Mann-Whitney U test still
works: every observation in a bucket is treated as tied with the others there, which is
exactly what the rank-sum test does with equal values. U, the tie-corrected variance and
the normal approximation are the textbook ones (scipy.stats.mannwhitneyu, method
"asymptotic", with continuity correction, gives the same numbers on bucket midpoints).

Why not a ratio of two p95s: a p95 from 50 requests rests on the 2-3 slowest of them and
moves by tens of percent between identical windows. U uses every observation, and the
verdict needs both evidence (p-value below alpha) and a difference that matters (an
effect size beyond the user's limit), so a large sample cannot fail a candidate for a
1% difference and a small one cannot fail it on noise. Short samples are inconclusive.

Pure: no I/O, no clock. Counts may be floats (Prometheus increase() extrapolates).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Result = Literal["pass", "fail", "inconclusive"]

MWU = "Mann-Whitney U"
MWU_STRATA = "Mann-Whitney U within strata (van Elteren)"
PROPORTIONS = "two-proportion test (Mann-Whitney U on 0/1)"


@dataclass(frozen=True)
class Histogram:
    """Non-cumulative counts over `bounds` (upper bounds, ascending); one count more than
    bounds, the last for the +Inf bucket."""

    bounds: tuple[float, ...]
    counts: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.counts) != len(self.bounds) + 1:
            raise ValueError(
                f"histogram: {len(self.counts)} counts for {len(self.bounds)} bounds "
                "(need one more, for +Inf)"
            )
        if any(b >= a for a, b in zip(self.bounds[1:], self.bounds, strict=False)):
            raise ValueError("histogram: bounds must be strictly increasing")
        if any(not c >= 0 for c in self.counts):  # also rejects NaN
            raise ValueError("histogram: counts must be non-negative numbers")

    @property
    def total(self) -> float:
        return math.fsum(self.counts)

    @staticmethod
    def from_cumulative(buckets: Sequence[tuple[float, float]]) -> Histogram:
        """From Prometheus-style [(upper_bound, cumulative_count), ..., (inf, total)].
        Counts that decrease (merged scrapes, resets) are flattened upwards, as
        histogram_quantile does."""
        ordered = sorted(buckets, key=lambda b: b[0])
        if not ordered or not math.isinf(ordered[-1][0]):
            raise ValueError("histogram: cumulative buckets need a +Inf bucket")
        counts: list[float] = []
        prev = 0.0
        for _, c in ordered:
            c = max(prev, c)
            counts.append(c - prev)
            prev = c
        return Histogram(tuple(b for b, _ in ordered[:-1]), tuple(counts))

    def quantile(self, q: float) -> float | None:
        """Linear interpolation inside the bucket holding the rank (the first bucket
        starts at 0), like PromQL histogram_quantile; the +Inf bucket answers the highest
        finite bound. None when empty."""
        total = self.total
        if total <= 0:
            return None
        rank = q * total
        below = 0.0
        for i, c in enumerate(self.counts):
            if c > 0 and below + c >= rank:
                if i == len(self.bounds):
                    return self.bounds[-1] if self.bounds else None
                lo = self.bounds[i - 1] if i > 0 else min(0.0, self.bounds[0])
                return lo + (self.bounds[i] - lo) * max(0.0, rank - below) / c
            below += c
        return self.bounds[-1] if self.bounds else None


@dataclass(frozen=True)
class UTest:
    """Mann-Whitney U of sample X (candidate) against Y (stable), possibly stratified.

    u: pairs with x > y plus half the ties, summed over strata (scipy's U1 for x);
    pairs: the pairs compared (n_x * n_y unstratified; only pairs within a stratum else);
    p_greater / p_less: one-sided p-values for "X tends to be larger / smaller";
    p_two_sided: for "X and Y differ"; all 1.0 when the data cannot show a difference
    (an empty side, or every observation tied)."""

    n_x: float
    n_y: float
    u: float
    pairs: float
    z: float
    p_greater: float
    p_less: float
    p_two_sided: float

    @property
    def superiority(self) -> float:
        """P(X > Y) + P(X = Y) / 2, the common-language effect size (Vargha-Delaney A);
        0.5 when X and Y are alike."""
        return self.u / self.pairs if self.pairs > 0 else 0.5

    @property
    def cliffs_delta(self) -> float:
        """P(X > Y) - P(X < Y), from -1 to 1."""
        return 2.0 * self.superiority - 1.0


def _sf(z: float) -> float:
    """Upper tail of the standard normal."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def _u_one(x: Sequence[float], y: Sequence[float]) -> tuple[float, float, float, float]:
    """(n_x, n_y, U, tie-corrected variance of U) for one pair of count vectors."""
    if len(x) != len(y):
        raise ValueError(f"mann_whitney: {len(x)} and {len(y)} buckets; bounds must match")
    n_x, n_y = math.fsum(x), math.fsum(y)
    u = 0.0
    y_below = 0.0
    tie_term = 0.0
    for a, b in zip(x, y, strict=True):
        u += a * (y_below + b / 2.0)
        y_below += b
        t = a + b
        tie_term += t * t * t - t
    n = n_x + n_y
    if n <= 1:
        return n_x, n_y, u, 0.0
    untied = n_x * n_y / 12.0 * (n + 1.0)  # the variance without ties
    var = untied - n_x * n_y / 12.0 * tie_term / (n * (n - 1.0))
    # Rounding leaves a tiny non-zero variance when every observation is tied.
    return n_x, n_y, u, var if var > 1e-9 * untied else 0.0


def mann_whitney_strata(
    strata: Sequence[tuple[Sequence[float], Sequence[float]]], continuity: bool = True
) -> UTest:
    """U test within strata combined as van Elteren's test: each stratum's U - E[U] weighted
    by 1 / (N_k + 1), over the root of the weighted variances; normal approximation,
    continuity correction of half the smallest weight. One stratum is the plain
    (tie-corrected, continuity-corrected) Mann-Whitney U test. Strata where one side is
    empty carry no comparison and count for nothing, n_x and n_y included."""
    n_x = n_y = u_sum = pairs = num = var = 0.0
    w_min = math.inf
    for x, y in strata:
        nx, ny, u, v = _u_one(x, y)
        if nx <= 0 or ny <= 0:
            continue
        w = 1.0 / (nx + ny + 1.0)
        n_x, n_y, u_sum, pairs = n_x + nx, n_y + ny, u_sum + u, pairs + nx * ny
        num += w * (u - nx * ny / 2.0)
        var += w * w * v
        if v > 0:
            w_min = min(w_min, w)
    if var <= 0:
        return UTest(n_x, n_y, u_sum, pairs, 0.0, 1.0, 1.0, 1.0)
    sd = math.sqrt(var)
    cc = 0.5 * w_min if continuity else 0.0
    return UTest(
        n_x,
        n_y,
        u_sum,
        pairs,
        num / sd,
        min(1.0, _sf((num - cc) / sd)),
        min(1.0, _sf((-num - cc) / sd)),
        min(1.0, 2.0 * _sf((abs(num) - cc) / sd)),
    )


def binomial_tail(k: float, n: float, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), exact: how likely `k` or more events in `n`
    trials are when the true rate is `p`. Counts are rounded (Prometheus' increase()
    extrapolates)."""
    kk, nn = round(k), round(n)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"binomial_tail: rate {p} not within 0..1")
    if kk <= 0:
        return 1.0
    if kk > nn:
        return 0.0
    return math.fsum(math.comb(nn, i) * p**i * (1.0 - p) ** (nn - i) for i in range(kk, nn + 1))


def mann_whitney(x: Sequence[float], y: Sequence[float], continuity: bool = True) -> UTest:
    """U test on two count vectors over the same buckets (ascending), ties within a bucket."""
    return mann_whitney_strata([(x, y)], continuity)


@dataclass(frozen=True)
class Comparison:
    """How a candidate is judged against its stable on one metric.

    higher_is_better: False for latency, service time, cost, error rate; True for quality
    scores and accuracy. Effect limits (at least one):
    - max_ratio (lower is better) / min_ratio (higher is better): candidate / stable of the
      medians (of the proportions, for proportion_verdict). `floor` is the least stable
      value a ratio is taken against, so a near-zero stable cannot turn noise into a
      rollback.
    - max_worse_probability: P(a candidate observation is worse than a stable one), ties
      half; 0.5 means alike, e.g. 0.75 means worse in three pairs of four.
    The candidate fails when some limit is exceeded and the one-sided p-value is below
    `alpha`. A limit exceeded without that evidence is inconclusive (the step holds and
    a fresh window gathers more); fewer than `min_samples` on either side is too.
    """

    higher_is_better: bool = False
    max_ratio: float | None = None
    min_ratio: float | None = None
    max_worse_probability: float | None = None
    alpha: float = 0.01
    min_samples: int = 20
    floor: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha must be between 0 and 1 (exclusive), not {self.alpha}")
        if self.min_samples < 1:
            raise ValueError(f"minSamples must be at least 1, not {self.min_samples}")
        if self.floor < 0:
            raise ValueError(f"floor must be >= 0, not {self.floor}")
        if self.max_ratio is not None:
            if self.higher_is_better:
                raise ValueError("maxRatioToStable is for lower-is-better metrics; use min")
            if not self.max_ratio > 0:
                raise ValueError(f"maxRatioToStable must be > 0, not {self.max_ratio}")
        if self.min_ratio is not None:
            if not self.higher_is_better:
                raise ValueError("minRatioToStable is for higher-is-better metrics; use max")
            if not self.min_ratio > 0:
                raise ValueError(f"minRatioToStable must be > 0, not {self.min_ratio}")
        p = self.max_worse_probability
        if p is not None and not 0.5 < p < 1.0:
            raise ValueError(f"maxWorseProbability must be between 0.5 and 1, not {p}")
        if self.max_ratio is None and self.min_ratio is None and p is None:
            raise ValueError(
                "a comparison with stable needs an effect limit (maxRatioToStable, "
                "minRatioToStable or maxWorseProbability): significance alone fails "
                "candidates for differences too small to matter"
            )


@dataclass(frozen=True)
class Verdict:
    """The outcome of one comparison, with everything needed to explain it.
    ratio, candidate and stable are medians (proportions for proportion_verdict)."""

    result: Result
    message: str
    method: str
    n_candidate: float
    n_stable: float
    candidate: float | None = None
    stable: float | None = None
    ratio: float | None = None
    worse_probability: float | None = None
    p_value: float | None = None


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def _fmt_n(n: float) -> str:
    return str(round(n)) if abs(n - round(n)) < 1e-9 else f"{n:.1f}"


def _ratio(candidate: float, stable: float, floor: float) -> float:
    base = max(stable, floor)
    if base > 0:
        return candidate / base
    return 1.0 if candidate <= 0 else math.inf


def _judge(
    c: Comparison,
    method: str,
    test: UTest,
    cand: float | None,
    stable: float | None,
    what: str,
    note: str = "",
) -> Verdict:
    """Shared tail of both verdicts: sample check, effect limits, evidence."""
    n_c, n_s = test.n_x, test.n_y
    worse_p = 1.0 - test.superiority if c.higher_is_better else test.superiority
    p = test.p_less if c.higher_is_better else test.p_greater
    ratio = _ratio(cand, stable, c.floor) if cand is not None and stable is not None else None
    samples = f"n {_fmt_n(n_c)} candidate / {_fmt_n(n_s)} stable"

    def verdict(result: Result, message: str) -> Verdict:
        return Verdict(result, message, method, n_c, n_s, cand, stable, ratio, worse_p, p)

    if n_c < c.min_samples or n_s < c.min_samples:
        return verdict(
            "inconclusive",
            f"not enough samples for {method}: {samples}, minSamples {c.min_samples}{note}",
        )
    assert cand is not None and stable is not None and ratio is not None  # both non-empty
    worse = "lower" if c.higher_is_better else "higher"
    exceeded: list[str] = []
    held: list[str] = []
    r_text = f"{what} {_fmt(cand)} vs stable {_fmt(stable)}, ratio {_fmt(ratio)}"
    if c.max_ratio is not None:
        (exceeded if ratio > c.max_ratio else held).append(
            f"{r_text} {'>' if ratio > c.max_ratio else '<='} max {_fmt(c.max_ratio)}"
        )
    if c.min_ratio is not None:
        (exceeded if ratio < c.min_ratio else held).append(
            f"{r_text} {'<' if ratio < c.min_ratio else '>='} min {_fmt(c.min_ratio)}"
        )
    if c.max_worse_probability is not None:
        over = worse_p > c.max_worse_probability
        (exceeded if over else held).append(
            f"P(candidate {worse}) {worse_p:.2f} {'>' if over else '<='} "
            f"max {_fmt(c.max_worse_probability)}"
        )
    # Without a ratio limit the medians still belong in the explanation.
    r_info = f"; {r_text}" if c.max_ratio is None and c.min_ratio is None else ""
    prob = "" if c.max_worse_probability is not None else f", P(candidate {worse}) {worse_p:.2f}"
    evidence = (
        f"one-sided p {p:.2g} {'<' if p < c.alpha else '>='} alpha {_fmt(c.alpha)}"
        f" ({method}, {samples}{prob}, Cliff's delta {test.cliffs_delta:+.2f})"
    )
    if exceeded:
        text = "; ".join(exceeded) + r_info
        if p < c.alpha:
            return verdict("fail", f"{text}; {evidence}{note}")
        return verdict("inconclusive", f"{text} but not significant: {evidence}{note}")
    return verdict("pass", "; ".join(held) + r_info + f"; {evidence}{note}")


def compare_histograms(candidate: Histogram, stable: Histogram, c: Comparison) -> Verdict:
    """Judge the candidate's distribution against the stable's (Mann-Whitney U on the
    buckets; effect sizes from interpolated medians and the U statistic)."""
    return compare_strata([("", candidate, stable)], c)


def compare_strata(strata: Sequence[tuple[str, Histogram, Histogram]], c: Comparison) -> Verdict:
    """Judge candidate against stable only within strata (name, candidate, stable), e.g.
    service time per image by batch size: observations compare only with observations of
    the same stratum. Strata one side lacks are left out (and named in the message). The
    ratio is of the medians' averages over the strata both sides have, weighted by
    n_c * n_s / (n_c + n_s) (a stratum counts as much as its comparison is precise)."""
    used: list[tuple[str, Histogram, Histogram]] = []
    left_c = left_s = 0.0
    for name, cand, stable in strata:
        if cand.bounds != stable.bounds:
            raise ValueError("compare_histograms: candidate and stable bucket bounds differ")
        if cand.total > 0 and stable.total > 0:
            used.append((name, cand, stable))
        else:
            left_c, left_s = left_c + cand.total, left_s + stable.total
    test = mann_whitney_strata([(a.counts, b.counts) for _, a, b in used])
    cand_m = stable_m = weight = 0.0
    for _, a, b in used:
        ma, mb = a.quantile(0.5), b.quantile(0.5)
        assert ma is not None and mb is not None  # both non-empty
        h = a.total * b.total / (a.total + b.total)
        cand_m, stable_m, weight = cand_m + h * ma, stable_m + h * mb, weight + h
    what = "median" if len(strata) == 1 else "median (matched by stratum)"
    note = ""
    if len(strata) > 1:
        names = ", ".join(n for n, _, _ in used) or "none"
        note = f"; strata compared: {names}"
        if left_c or left_s:
            note += (
                f"; left out {_fmt_n(left_c)} candidate / {_fmt_n(left_s)} stable "
                "in strata only one side has"
            )
    method = MWU if len(strata) == 1 else MWU_STRATA
    if weight <= 0:
        return _judge(c, method, test, None, None, what, note)
    return _judge(c, method, test, cand_m / weight, stable_m / weight, what, note)


def compare_proportions(
    candidate_hits: float,
    candidate_n: float,
    stable_hits: float,
    stable_n: float,
    c: Comparison,
) -> Verdict:
    """Judge a proportion (error rate: lower is better; OCR pass rate: higher is better).
    Mann-Whitney U on two buckets (miss, hit) is the pooled two-proportion z-test up to a
    factor sqrt((N-1)/N) on z, so the same machinery judges rates."""
    for name, hits, n in (
        ("candidate", candidate_hits, candidate_n),
        ("stable", stable_hits, stable_n),
    ):
        if not 0 <= hits <= n:
            raise ValueError(f"compare_proportions: {name} hits {hits} not within 0..{n}")
    test = mann_whitney(
        (candidate_n - candidate_hits, candidate_hits), (stable_n - stable_hits, stable_hits)
    )
    pc = candidate_hits / candidate_n if candidate_n > 0 else None
    ps = stable_hits / stable_n if stable_n > 0 else None
    return _judge(c, PROPORTIONS, test, pc, ps, "rate")
