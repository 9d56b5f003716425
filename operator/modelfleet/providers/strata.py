"""Helpers both providers share for the service-time strata (one histogram per batch size)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from modelfleet.canary.statistics import Histogram
from modelfleet.routing.stats import BATCH_STRATA

_ORDER = {name: i for i, (_, name) in enumerate(BATCH_STRATA)}


def order_strata(strata: Iterable[tuple[str, Histogram]]) -> list[tuple[str, Histogram]]:
    """Strata in batch-size order (1, 2, 3, 4, 5-8, ...); names the router does not use
    (a newer router's) after them, alphabetically."""
    return sorted(strata, key=lambda s: (_ORDER.get(s[0], len(_ORDER)), s[0]))


def pooled(histograms: Sequence[Histogram]) -> Histogram:
    """All strata in one histogram (for the value: the median over every batch size).
    Raises ValueError when the strata's bounds differ."""
    if not histograms:
        return Histogram((), (0.0,))
    bounds = histograms[0].bounds
    if any(h.bounds != bounds for h in histograms):
        raise ValueError("strata have different bucket bounds")
    return Histogram(
        bounds, tuple(math.fsum(col) for col in zip(*(h.counts for h in histograms), strict=True))
    )
