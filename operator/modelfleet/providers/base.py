"""The metrics-provider port: what the canary core asks for and what comes back.

This module does no I/O so the pure canary core can import the data types.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from modelfleet.api.canary import MetricSpec


@dataclass(frozen=True)
class MetricQuery:
    """One number to fetch: `metric` for `pool` over the last `window_seconds`."""

    namespace: str
    pool: str
    metric: MetricSpec
    window_seconds: int
    stable_pool: str = ""
    candidate_pool: str = ""


@dataclass(frozen=True)
class Measurement:
    """What a provider saw. Providers report numbers only; the core judges them.

    - value: the metric value, None when there was no data (e.g. 0/0).
    - samples: requests the value is based on, None when unknown.
    - error: the provider could not answer (unreachable, 5xx, bad query): inconclusive.
    - no_series: the query matched no series at all (likely misconfigured): inconclusive.
    """

    value: float | None = None
    samples: int | None = None
    error: str | None = None
    no_series: bool = False

    @staticmethod
    def failed(error: str) -> Measurement:
        return Measurement(error=error)

    @property
    def usable_value(self) -> float | None:
        """The value when it is a finite number and the provider reported no problem."""
        if self.error is not None or self.no_series or self.value is None:
            return None
        return self.value if math.isfinite(self.value) else None


@runtime_checkable
class MetricsProvider(Protocol):
    """A metrics source. measure() never raises for data problems: it returns error."""

    async def measure(self, query: MetricQuery) -> Measurement: ...

    async def close(self) -> None: ...
