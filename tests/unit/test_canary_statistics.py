"""Binned Mann-Whitney U and the verdicts built on it (modelfleet.canary.statistics).

The reference is scipy.stats.mannwhitneyu (asymptotic, continuity-corrected) on the raw
values each replaced by its bucket's midpoint: the same ties, so the same numbers."""

from __future__ import annotations

import bisect
import math
import random
from collections import Counter
from collections.abc import Callable, Iterable, Sequence

import pytest
from scipy import stats as sps

from modelfleet.canary.statistics import (
    MWU,
    PROPORTIONS,
    Comparison,
    Histogram,
    binomial_tail,
    compare_histograms,
    compare_proportions,
    compare_strata,
    mann_whitney,
    mann_whitney_strata,
)
from modelfleet.providers.quantile import histogram_quantile
from modelfleet.routing.stats import LATENCY_BUCKETS, SERVICE_TIME_BUCKETS

INF = math.inf
LATENCY = Comparison(max_ratio=1.2, alpha=0.01, min_samples=20)


def binned(values: Sequence[float], bounds: Sequence[float] = SERVICE_TIME_BUCKETS) -> Histogram:
    counts = [0] * (len(bounds) + 1)
    for v in values:
        counts[bisect.bisect_left(bounds, v)] += 1  # le: a value on a bound is in that bucket
    return Histogram(tuple(bounds), tuple(counts))


def midpoints(h: Histogram) -> list[float]:
    """Each observation as its bucket's midpoint (the +Inf bucket: twice the last bound)."""
    edges = (0.0, *h.bounds, 2 * h.bounds[-1])
    out: list[float] = []
    for i, c in enumerate(h.counts):
        out += [(edges[i] + edges[i + 1]) / 2] * int(c)
    return out


def lognormal(rng: random.Random, median: float, sigma: float) -> Callable[[], float]:
    return lambda: median * math.exp(rng.gauss(0.0, sigma))


# -- the U test itself ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seed", "n_x", "n_y", "x_median", "y_median", "sigma", "bounds"),
    [
        (1, 40, 60, 0.03, 0.03, 0.2, SERVICE_TIME_BUCKETS),  # identical
        (2, 35, 120, 0.045, 0.03, 0.2, SERVICE_TIME_BUCKETS),  # 1.5x slower
        (3, 12, 9, 0.02, 0.03, 0.5, SERVICE_TIME_BUCKETS),  # faster, small, wide
        (4, 200, 50, 0.5, 0.55, 0.1, LATENCY_BUCKETS),  # coarse buckets, many ties
        (5, 30, 30, 2.0, 1.0, 1.5, LATENCY_BUCKETS),  # spills into +Inf
    ],
)
def test_matches_scipy_on_bucket_midpoints(
    seed: int,
    n_x: int,
    n_y: int,
    x_median: float,
    y_median: float,
    sigma: float,
    bounds: tuple[float, ...],
) -> None:
    rng = random.Random(seed)
    hx = binned([lognormal(rng, x_median, sigma)() for _ in range(n_x)], bounds)
    hy = binned([lognormal(rng, y_median, sigma)() for _ in range(n_y)], bounds)
    t = mann_whitney(hx.counts, hy.counts)
    x, y = midpoints(hx), midpoints(hy)
    for alternative, ours in (
        ("greater", t.p_greater),
        ("less", t.p_less),
        ("two-sided", t.p_two_sided),
    ):
        ref = sps.mannwhitneyu(x, y, alternative=alternative, method="asymptotic")
        assert ours == pytest.approx(float(ref.pvalue), rel=1e-9, abs=1e-15), alternative
    assert t.u == pytest.approx(float(sps.mannwhitneyu(x, y, method="asymptotic").statistic))
    assert (t.n_x, t.n_y) == (n_x, n_y)


@pytest.mark.parametrize(
    ("x", "y", "u", "superiority"),
    [
        ((0, 0, 3), (2, 0, 0), 6.0, 1.0),  # every x above every y
        ((3, 0, 0), (0, 0, 2), 0.0, 0.0),  # every x below
        ((0, 2, 0), (0, 2, 0), 2.0, 0.5),  # all tied: half of 4 pairs
        ((1, 1, 0), (0, 1, 1), 0.5, 0.125),  # x=(1,2) y=(2,3): one tie
    ],
)
def test_known_u(x: tuple[int, ...], y: tuple[int, ...], u: float, superiority: float) -> None:
    t = mann_whitney(x, y)
    assert t.u == u
    assert t.superiority == superiority
    assert t.cliffs_delta == pytest.approx(2 * superiority - 1)


@pytest.mark.parametrize(
    ("x", "y"),
    [
        ((0, 5, 0), (0, 7, 0)),  # one bucket holds everything: no variance
        ((0, 0, 0), (1, 2, 3)),  # an empty side
        ((0, 0, 0), (0, 0, 0)),
    ],
)
def test_no_evidence_is_p_one(x: tuple[int, ...], y: tuple[int, ...]) -> None:
    t = mann_whitney(x, y)
    assert (t.p_greater, t.p_less, t.p_two_sided) == (1.0, 1.0, 1.0)


def test_identical_histograms_p_is_one() -> None:
    h = binned([0.01 * (1 + i % 7) for i in range(70)])
    t = mann_whitney(h.counts, h.counts)
    assert t.superiority == 0.5
    assert t.p_two_sided == 1.0
    assert t.p_greater > 0.5 and t.p_less > 0.5


def test_fractional_counts_from_prometheus_increase() -> None:
    """increase() extrapolates: counts like 29.7 still give sensible, scaled answers."""
    whole = mann_whitney((10, 20, 0), (0, 20, 10))
    scaled = mann_whitney((9.9, 19.8, 0), (0, 19.8, 9.9))
    assert scaled.superiority == pytest.approx(whole.superiority)
    # 1% fewer observations: a slightly weaker p-value, nothing erratic.
    assert whole.p_less < scaled.p_less < 1.2 * whole.p_less


def test_bucket_count_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="bounds must match"):
        mann_whitney((1, 2), (1, 2, 3))


def _van_elteren_by_ranks(strata: list[tuple[list[float], list[float]]]) -> float:
    """Independent reference: rank sums per stratum (scipy ranks, midranks for ties)."""
    num = var = 0.0
    for x, y in strata:
        n1, n2 = len(x), len(y)
        n = n1 + n2
        ranks = sps.rankdata(x + y)
        w = float(sum(ranks[:n1]))
        ties = sum(c**3 - c for c in Counter(ranks.tolist()).values())
        v = n1 * n2 / 12 * ((n + 1) - ties / (n * (n - 1)))
        num += (w - n1 * (n + 1) / 2) / (n + 1)
        var += v / (n + 1) ** 2
    return num / math.sqrt(var)


def test_strata_match_van_elteren_by_ranks() -> None:
    rng = random.Random(13)
    strata = []
    for n_x, n_y, med in ((10, 40, 0.03), (25, 25, 0.025), (40, 8, 0.02)):
        hx = binned([lognormal(rng, med * 1.1, 0.2)() for _ in range(n_x)])
        hy = binned([lognormal(rng, med, 0.2)() for _ in range(n_y)])
        strata.append((hx, hy))
    t = mann_whitney_strata([(a.counts, b.counts) for a, b in strata], continuity=False)
    assert t.z == pytest.approx(
        _van_elteren_by_ranks([(midpoints(a), midpoints(b)) for a, b in strata])
    )
    assert (t.n_x, t.n_y) == (75, 73)
    assert t.pairs == 10 * 40 + 25 * 25 + 40 * 8
    # One stratum is the plain test; a stratum one side lacks changes nothing.
    one = mann_whitney_strata([(strata[0][0].counts, strata[0][1].counts), ((0,) * 52, (3,) * 52)])
    assert one == mann_whitney(strata[0][0].counts, strata[0][1].counts)


def _pooled(hs: Iterable[Histogram]) -> Histogram:
    counts = [0.0] * (len(SERVICE_TIME_BUCKETS) + 1)
    for h in hs:
        counts = [a + b for a, b in zip(counts, h.counts, strict=True)]
    return Histogram(SERVICE_TIME_BUCKETS, tuple(counts))


def test_batching_confound_is_removed_by_strata() -> None:
    """Same model; per-image time is x0.78 at batch 4. At a 10% step the candidate runs
    mostly alone, the stable mostly in batches of 4: pooled, the candidate looks about
    1.22x slower and would be rolled back; compared batch size by batch size it is alike."""
    rng = random.Random(17)
    b1, b4 = lognormal(rng, 0.074, 0.12), lognormal(rng, 0.058, 0.12)
    cand = {"1": binned([b1() for _ in range(36)]), "4": binned([b4() for _ in range(3)])}
    stable = {"1": binned([b1() for _ in range(25)]), "4": binned([b4() for _ in range(300)])}
    pooled = compare_histograms(_pooled(cand.values()), _pooled(stable.values()), LATENCY)
    assert pooled.result == "fail", pooled.message
    matched = compare_strata([(k, cand[k], stable[k]) for k in ("1", "4")], LATENCY)
    assert matched.result == "pass", matched.message
    assert "strata compared: 1, 4" in matched.message
    # And a model 1.5x slower per image is still caught, batch size by batch size.
    slow = {k: binned([1.5 * x for x in midpoints(h)]) for k, h in cand.items()}
    caught = compare_strata([(k, slow[k], stable[k]) for k in ("1", "4")], LATENCY)
    assert caught.result == "fail", caught.message
    assert caught.ratio is not None and 1.35 < caught.ratio < 1.65


# R10 (x1.26 a bucket), the service-time buckets before R20.
R10 = tuple(
    float(f"{m}e{e}")
    for e in range(-3, 2)
    for m in ("1", "1.25", "1.6", "2", "2.5", "3.15", "4", "5", "6.3", "8")
)


@pytest.mark.parametrize(
    ("stable_s", "factor", "result", "ratio_low", "ratio_high"),
    [
        (0.0775, 1.05, "pass", 1.0, 1.12),  # 5% slower, straddling the 0.08 bound
        (0.0775, 1.0, "pass", 0.9, 1.1),  # the same
        (0.0775, 1.5, "fail", 1.35, 1.65),  # 1.5x slower
        (0.0625, 1.5, "fail", 1.35, 1.65),
        (0.0710, 1.25, "fail", 1.2, 1.35),  # just beyond the limit
    ],
)
def test_bucket_resolution_is_finer_than_the_ratio_limit(
    stable_s: float, factor: float, result: str, ratio_low: float, ratio_high: float
) -> None:
    """CPU-time service times of one model are narrow (a few percent). A candidate 5%
    slower (a busier neighbour at a low weight) whose values straddle a bucket bound
    must not read as 1.2x: the ratio is of medians interpolated inside buckets, so
    buckets must be finer than the limit. With R10 it read 1.21 (seen in CI: 1.213)."""
    rng = random.Random(3)
    s, c = lognormal(rng, stable_s, 0.015), lognormal(rng, stable_s * factor, 0.015)
    stable, cand = [s() for _ in range(60)], [c() for _ in range(30)]
    v = compare_histograms(binned(cand), binned(stable), LATENCY)
    assert v.result == result, v.message
    assert v.ratio is not None and ratio_low < v.ratio < ratio_high, v.message
    if factor == 1.05:
        coarse = compare_histograms(binned(cand, R10), binned(stable, R10), LATENCY)
        assert coarse.result == "fail" and coarse.ratio is not None and coarse.ratio > 1.2


def test_strata_one_side_lacks_are_left_out_and_named() -> None:
    h = binned([0.03] * 25 + [0.04] * 25)
    empty = binned([])
    v = compare_strata([("1", h, h), ("2", h, empty), ("4", empty, h)], LATENCY)
    assert v.result == "pass"
    assert (v.n_candidate, v.n_stable) == (50, 50)
    assert "strata compared: 1" in v.message
    assert "left out 50 candidate / 50 stable" in v.message
    none = compare_strata([("2", h, empty), ("4", empty, h)], LATENCY)
    assert none.result == "inconclusive"
    assert "strata compared: none" in none.message


# -- histograms ----------------------------------------------------------------------------


def test_from_cumulative_and_quantile_agree_with_histogram_quantile() -> None:
    cumulative = [(0.1, 5.0), (0.25, 30.0), (0.5, 38.0), (1.0, 40.0), (INF, 41.0)]
    h = Histogram.from_cumulative(cumulative)
    assert h.bounds == (0.1, 0.25, 0.5, 1.0)
    assert h.counts == (5.0, 25.0, 8.0, 2.0, 1.0)
    for q in (0.0, 0.1, 0.5, 0.9, 0.99, 1.0):
        assert h.quantile(q) == pytest.approx(histogram_quantile(q, cumulative))
    # Decreasing cumulative counts (merged scrapes) are flattened, never negative.
    flat = Histogram.from_cumulative([(1.0, 5.0), (2.0, 3.0), (INF, 6.0)])
    assert flat.counts == (5.0, 0.0, 1.0)
    assert Histogram((1.0,), (0, 0)).quantile(0.5) is None


@pytest.mark.parametrize(
    ("bounds", "counts", "message"),
    [
        ((1.0, 2.0), (1, 2), "need one more"),
        ((2.0, 1.0), (1, 2, 3), "strictly increasing"),
        ((1.0,), (1, -1), "non-negative"),
        ((1.0,), (1, math.nan), "non-negative"),
    ],
)
def test_bad_histograms(bounds: tuple[float, ...], counts: tuple[float, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Histogram(bounds, counts)
    with pytest.raises(ValueError, match=r"\+Inf"):
        Histogram.from_cumulative([(1.0, 2.0)])


# -- verdicts ------------------------------------------------------------------------------


def test_identical_distribution_passes() -> None:
    rng = random.Random(7)
    draw = lognormal(rng, 0.03, 0.2)
    v = compare_histograms(
        binned([draw() for _ in range(60)]), binned([draw() for _ in range(90)]), LATENCY
    )
    assert v.result == "pass", v.message
    assert v.method == MWU
    assert (v.n_candidate, v.n_stable) == (60, 90)
    assert v.ratio is not None and 0.9 < v.ratio < 1.1
    assert "n 60 candidate / 90 stable" in v.message
    assert "Mann-Whitney U" in v.message and "one-sided p" in v.message


def test_same_histogram_is_never_a_failure() -> None:
    h = binned([0.02, 0.021, 0.03, 0.05, 0.2] * 10)
    v = compare_histograms(h, h, LATENCY)
    assert v.result == "pass"
    assert v.p_value is not None and v.p_value > 0.5
    assert v.ratio == 1.0 and v.worse_probability == 0.5


def test_one_and_a_half_times_slower_fails() -> None:
    rng = random.Random(11)
    stable = binned([lognormal(rng, 0.03, 0.2)() for _ in range(100)])
    slow = binned([lognormal(rng, 0.045, 0.2)() for _ in range(30)])
    v = compare_histograms(slow, stable, LATENCY)
    assert v.result == "fail", v.message
    assert v.ratio is not None and 1.35 < v.ratio < 1.65
    assert v.p_value is not None and v.p_value < 1e-6
    assert v.worse_probability is not None and v.worse_probability > 0.85
    assert "> max 1.2" in v.message and "< alpha 0.01" in v.message


@pytest.mark.parametrize(("n_candidate", "n_stable"), [(19, 100), (100, 19), (0, 0), (5, 500)])
def test_small_samples_are_inconclusive(n_candidate: int, n_stable: int) -> None:
    rng = random.Random(5)
    slow = binned([lognormal(rng, 0.3, 0.2)() for _ in range(n_candidate)])
    stable = binned([lognormal(rng, 0.03, 0.2)() for _ in range(n_stable)])
    v = compare_histograms(slow, stable, LATENCY)
    assert v.result == "inconclusive"
    assert "not enough samples" in v.message and "minSamples 20" in v.message


def test_exceeded_without_evidence_is_inconclusive() -> None:
    """Two modes, the median falls in the upper one for the candidate and the lower one for
    the stable by one observation: the medians differ 2x, the samples hardly at all."""
    cand = binned([0.02] * 12 + [0.05] * 13)
    stable = binned([0.02] * 13 + [0.05] * 12)
    v = compare_histograms(cand, stable, LATENCY)
    assert v.ratio is not None and v.ratio > 2
    assert v.result == "inconclusive", v.message
    assert "not significant" in v.message


def test_significant_but_small_difference_passes() -> None:
    """With thousands of samples a 5% slowdown is significant, and still not a failure."""
    rng = random.Random(3)
    cand = binned([lognormal(rng, 0.0315, 0.1)() for _ in range(5000)])
    stable = binned([lognormal(rng, 0.03, 0.1)() for _ in range(5000)])
    v = compare_histograms(cand, stable, LATENCY)
    assert v.p_value is not None and v.p_value < 1e-6
    assert v.result == "pass", v.message


def test_worse_probability_limit() -> None:
    c = Comparison(max_worse_probability=0.75, min_samples=10)
    slower = compare_histograms(binned([0.05] * 20), binned([0.03] * 20), c)
    assert slower.result == "fail" and slower.worse_probability == 1.0
    assert "P(candidate higher) 1.00 > max 0.75" in slower.message
    assert "median" in slower.message  # medians are explained even without a ratio limit
    faster = compare_histograms(binned([0.03] * 20), binned([0.05] * 20), c)
    assert faster.result == "pass" and faster.worse_probability == 0.0


def test_higher_is_better_scores() -> None:
    """Quality scores in [0, 1]: a candidate that reads text worse fails, a better one passes."""
    bounds = tuple(i / 10 for i in range(1, 11))
    rng = random.Random(9)
    good = [min(1.0, max(0.0, rng.gauss(0.9, 0.05))) for _ in range(50)]
    bad = [min(1.0, max(0.0, rng.gauss(0.6, 0.1))) for _ in range(50)]
    c = Comparison(higher_is_better=True, min_ratio=0.9, min_samples=20)
    worse = compare_histograms(binned(bad, bounds), binned(good, bounds), c)
    assert worse.result == "fail", worse.message
    assert "< min 0.9" in worse.message
    better = compare_histograms(binned(good, bounds), binned(bad, bounds), c)
    assert better.result == "pass", better.message


def test_bounds_must_match() -> None:
    with pytest.raises(ValueError, match="bounds differ"):
        compare_histograms(binned([1.0], (1.0, 2.0)), binned([1.0], (1.0, 3.0)), LATENCY)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_ratio": 1.2, "alpha": 0.0}, "alpha"),
        ({"max_ratio": 1.2, "alpha": 1.0}, "alpha"),
        ({"max_ratio": 1.2, "min_samples": 0}, "minSamples"),
        ({"max_ratio": 0.0}, "maxRatioToStable must be > 0"),
        ({"max_ratio": 1.2, "higher_is_better": True}, "lower-is-better"),
        ({"min_ratio": 0.9}, "higher-is-better"),
        ({"max_worse_probability": 0.4}, "maxWorseProbability"),
        ({}, "needs an effect limit"),
        ({"max_ratio": 1.2, "floor": -1.0}, "floor"),
    ],
)
def test_bad_comparisons(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Comparison(**kwargs)  # type: ignore[arg-type]


# -- proportions ---------------------------------------------------------------------------

ERRORS = Comparison(max_ratio=2.0, floor=0.01, alpha=0.01, min_samples=20)


def test_proportion_test_is_the_pooled_z_test() -> None:
    """U on (miss, hit) buckets: z = pooled two-proportion z * sqrt((N-1)/N); and scipy
    on 0/1 arrays agrees."""
    x_hits, n_x, y_hits, n_y = 12, 80, 4, 120
    t = mann_whitney((n_x - x_hits, x_hits), (n_y - y_hits, y_hits), continuity=False)
    p1, p2 = x_hits / n_x, y_hits / n_y
    pooled = (x_hits + y_hits) / (n_x + n_y)
    z = (p1 - p2) / math.sqrt(pooled * (1 - pooled) * (1 / n_x + 1 / n_y))
    n = n_x + n_y
    assert t.z == pytest.approx(z * math.sqrt((n - 1) / n))
    x = [1] * x_hits + [0] * (n_x - x_hits)
    y = [1] * y_hits + [0] * (n_y - y_hits)
    ref = sps.mannwhitneyu(x, y, alternative="greater", method="asymptotic")
    v = compare_proportions(x_hits, n_x, y_hits, n_y, ERRORS)
    assert v.p_value == pytest.approx(float(ref.pvalue), rel=1e-9)
    assert v.method == PROPORTIONS


@pytest.mark.parametrize(
    ("cand", "stable", "want"),
    [
        ((0, 100), (0, 100), "pass"),  # nobody errs: no evidence either way, ratio 1
        ((2, 100), (1, 100), "pass"),  # 2% vs 1%: ratio 2 at most, and not significant
        ((30, 100), (1, 100), "fail"),  # 30% vs 1%
        ((30, 100), (0, 100), "fail"),  # stable clean: the floor (1%) makes a ratio
        ((5, 10), (0, 100), "inconclusive"),  # 50% but only 10 candidate requests
        ((8, 40), (2, 100), "fail"),  # 20% of 40
        ((3, 40), (2, 100), "inconclusive"),  # 7.5% vs 2%: above 2x, not yet significant
    ],
)
def test_error_rate_verdicts(cand: tuple[int, int], stable: tuple[int, int], want: str) -> None:
    v = compare_proportions(cand[0], cand[1], stable[0], stable[1], ERRORS)
    assert v.result == want, v.message


def test_accuracy_is_higher_is_better() -> None:
    c = Comparison(higher_is_better=True, min_ratio=0.9, min_samples=20)
    assert compare_proportions(60, 100, 95, 100, c).result == "fail"
    assert compare_proportions(94, 100, 95, 100, c).result == "pass"
    with pytest.raises(ValueError, match=r"candidate hits 5 not within 0\.\.4"):
        compare_proportions(5, 4, 1, 10, c)


# -- rates over many runs, on the service-time buckets -------------------------------------


def test_false_failure_and_detection_rates() -> None:
    """The bench goals in miniature: 0 of 300 identical pairs fail; at least 99% of 300
    pairs with a 1.5x slower candidate fail, at 30 candidate vs 70 stable samples (a 30%
    step of a 100-request window), noise as wide as the tiny CPU workers show."""
    rng = random.Random(2024)
    false_fail = detected = 0
    for _ in range(300):
        stable = binned([lognormal(rng, 0.03, 0.25)() for _ in range(70)])
        same = binned([lognormal(rng, 0.03, 0.25)() for _ in range(30)])
        slow = binned([lognormal(rng, 0.045, 0.25)() for _ in range(30)])
        false_fail += compare_histograms(same, stable, LATENCY).result == "fail"
        detected += compare_histograms(slow, stable, LATENCY).result == "fail"
    assert false_fail == 0
    assert detected >= 297


@pytest.mark.parametrize(
    ("k", "n", "p", "expected"),
    [
        (0, 5, 0.3, 1.0),
        (6, 5, 0.3, 0.0),
        (2, 2, 0.02, 0.0004),
        (1, 3, 0.02, 1 - 0.98**3),
        (5, 10, 0.5, 0.623046875),  # 638/1024
    ],
)
def test_binomial_tail(k: int, n: int, p: float, expected: float) -> None:
    from scipy.stats import binom

    assert binomial_tail(k, n, p) == pytest.approx(expected, rel=1e-9, abs=1e-15)
    assert binomial_tail(k, n, p) == pytest.approx(float(binom.sf(k - 1, n, p)), abs=1e-12)
