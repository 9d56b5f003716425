"""The ports the canary owns: what it asks of a metrics source and of the traffic router.

The canary defines these; `modelfleet.providers` implements MetricsProvider and the
RoutingPolicy controller implements TrafficRouter (Flagger's shape: the consumer owns
the interface, so the canary never imports its adapters). No I/O in this module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from modelfleet.api.canary import CanarySpec, MetricSpec
from modelfleet.canary.statistics import Histogram

# --- metrics ------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricQuery:
    """One number to fetch: `metric` for `pool` over the last `window_seconds`."""

    namespace: str
    pool: str
    metric: MetricSpec
    window_seconds: int
    stable_pool: str = ""
    candidate_pool: str = ""
    # The window ends this many seconds ago (0: now). Providers that cannot look back
    # answer Measurement.failed().
    offset_seconds: int = 0


@dataclass(frozen=True)
class Measurement:
    """What a provider saw. Providers report numbers only; the core judges them.

    - value: the metric value, None when there was no data (e.g. 0/0).
    - samples: requests the value is based on, None when unknown.
    - error: the provider could not answer (unreachable, 5xx, bad query): inconclusive.
    - no_series: the query matched no series at all (likely misconfigured): inconclusive.
    - strata: the binned samples behind the value, by stratum name (service time: by
      batch size, "1", "2", ..., "5-8"); one stratum named "" when not stratified. Rank
      tests (Mann-Whitney U) judge these; None when the provider has no distribution.
    - hits: for rates, how many of `samples` were the counted event (errors for
      error-rate, passed renders for text-pass-rate); the proportion test judges these.
    """

    value: float | None = None
    samples: int | None = None
    error: str | None = None
    no_series: bool = False
    strata: tuple[tuple[str, Histogram], ...] | None = None
    hits: float | None = None

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


# --- traffic ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrafficTarget:
    """The route one Canary shifts, and between which pools."""

    namespace: str
    canary: str
    routing_policy: str
    route: str
    stable_pool: str
    candidate_pool: str

    @staticmethod
    def of(namespace: str, canary: str, spec: CanarySpec) -> TrafficTarget:
        return TrafficTarget(
            namespace=namespace,
            canary=canary,
            routing_policy=spec.routing_policy,
            route=spec.route,
            stable_pool=spec.stable_pool,
            candidate_pool=spec.candidate_pool,
        )


class TrafficRouter(Protocol):
    """Moves a route's traffic; both calls are idempotent (they repeat on every tick)."""

    async def set_weight(self, target: TrafficTarget, weight: int) -> None:
        """Send `weight` percent of the route to the candidate, the rest to the stable
        pool; 0 gives the route back to its own pool (no override)."""
        ...

    async def promote(self, target: TrafficTarget) -> None:
        """Point the route at the candidate for good (the RoutingPolicy's spec)."""
        ...
