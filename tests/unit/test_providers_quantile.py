"""histogram_quantile() matches Prometheus' bucket interpolation."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelfleet.providers.quantile import histogram_quantile

INF = math.inf


@pytest.mark.parametrize(
    ("q", "buckets", "want"),
    [
        (0.5, [(0.1, 0), (1.0, 100), (INF, 100)], 0.55),  # rank 50 of 100 in (0.1, 1]
        (0.95, [(0.1, 50), (1.0, 100), (INF, 100)], 0.91),
        (0.5, [(0.1, 100), (1.0, 100), (INF, 100)], 0.05),  # first bucket starts at 0
        (0.99, [(0.1, 0), (1.0, 90), (INF, 100)], 1.0),  # rank in +Inf: highest finite bound
        (0.5, [(1.0, 4), (0.1, 2), (INF, 4)], 0.1),  # unsorted input
        (0.5, [(0.1, 5), (1.0, 3), (INF, 10)], 0.1 + 0.9 * 0.0),  # non-monotonic flattened
        (1.5, [(1.0, 1), (INF, 1)], INF),
        (-0.1, [(1.0, 1), (INF, 1)], -INF),
    ],
)
def test_known_values(q: float, buckets: list[tuple[float, float]], want: float) -> None:
    got = histogram_quantile(q, buckets)
    if math.isinf(want):
        assert got == want
    else:
        assert got == pytest.approx(want)


@pytest.mark.parametrize("buckets", [[], [(INF, 5)], [(1.0, 5), (2.0, 5)], [(1.0, 0), (INF, 0)]])
def test_nan_cases(buckets: list[tuple[float, float]]) -> None:
    assert math.isnan(histogram_quantile(0.5, buckets))


@given(
    counts=st.lists(st.integers(min_value=0, max_value=1000), min_size=1, max_size=8),
    q=st.floats(min_value=0.01, max_value=1.0),
)
def test_monotonic_in_q_and_within_bounds(counts: list[int], q: float) -> None:
    bounds = [0.1 * 2**i for i in range(len(counts))]
    cum = []
    total = 0
    for c in counts:
        total += c
        cum.append(total)
    buckets = [*zip(bounds, cum, strict=True), (INF, total + 1)]
    v = histogram_quantile(q, buckets)
    assert 0.0 <= v <= bounds[-1]
    assert histogram_quantile(min(1.0, q + 0.01), buckets) >= v - 1e-12
