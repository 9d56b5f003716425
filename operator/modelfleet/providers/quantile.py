"""histogram_quantile() as Prometheus computes it, over cumulative buckets."""

from __future__ import annotations

import math
from collections.abc import Sequence


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float:
    """Quantile `q` of a cumulative histogram [(upper_bound, cumulative_count), ...].

    Same algorithm as Prometheus: linear interpolation inside the bucket holding the
    rank, the lowest bucket starting at 0 (when its bound is positive), the +Inf bucket
    answered with the highest finite bound. NaN when there are no observations or no
    +Inf bucket; non-monotonic counts (from merging scrapes) are flattened upwards.
    """
    if math.isnan(q):
        return math.nan
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    ordered = sorted(buckets, key=lambda b: b[0])
    if len(ordered) < 2 or not math.isinf(ordered[-1][0]):
        return math.nan
    bounds = [b for b, _ in ordered]
    counts: list[float] = []
    running = 0.0
    for _, c in ordered:
        running = max(running, c)
        counts.append(running)
    total = counts[-1]
    if total == 0:
        return math.nan
    rank = q * total
    b = next(i for i, c in enumerate(counts) if c >= rank)
    if b == len(counts) - 1:
        return bounds[-2]
    if b == 0 and bounds[0] <= 0:
        return bounds[0]
    start = 0.0
    end = bounds[b]
    count = counts[b]
    if b > 0:
        start = bounds[b - 1]
        count -= counts[b - 1]
        rank -= counts[b - 1]
    if count == 0:
        return end
    return start + (end - start) * (rank / count)
