"""Requests held for pools at zero replicas (docs/router.md#scale-from-zero): each waits on
a future that the snapshot bringing its pool's first ready endpoint resolves (no polling),
bounded by routing.hold.decide_hold. Counts feed GET /v1/demand and the metrics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from modelfleet.router.config import Snapshot
from modelfleet.router.metrics import RouterMetrics
from modelfleet.routing.hold import (
    ColdFailure,
    ColdStart,
    Hold,
    HoldLimits,
    Key,
    PolicyBounds,
    cold_failure,
    cold_retry_after,
    decide_hold,
)


@dataclass(frozen=True)
class HoldEnded:
    """A pool at zero that did not serve: the hold expired, or it was not held (limit)."""

    pool: str
    failure: ColdFailure


class Holds:
    def __init__(
        self,
        limits: HoldLimits,
        metrics: RouterMetrics,
        latest: Callable[[], Snapshot | None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = limits
        self._metrics = metrics
        self._latest = latest
        self._clock = clock
        self.held: dict[Key, int] = {}
        self._waiters: dict[Key, set[asyncio.Future[Snapshot]]] = {}
        self._cold: dict[Key, ColdStart] = {}

    async def hold(
        self, snap: Snapshot, ns: str, pool: str, policy: PolicyBounds, deadline: float
    ) -> Snapshot | HoldEnded | None:
        """A snapshot in which the pool has endpoints (serve on it); HoldEnded (the pool
        scales from zero but no worker came, or it could not be held); None: not a pool
        that is held for."""
        key = (ns, pool)
        now = self._clock()
        d = decide_hold(
            scales_from_zero=key in snap.scale_from_zero,
            held_now=self.held.get(key, 0),
            now=now,
            policy=policy,
            deadline=deadline,
            limits=self.limits,
        )
        if not isinstance(d, Hold):
            if d.reason == "not_autoscaled_to_zero" or d.reason == "disabled":
                return None
            self._count(ns, pool, d.reason)
            return self._ended(key, d.reason, 0.0)
        latest = self._latest()
        if latest is not None and latest.endpoints.get(key):
            return latest  # the request's snapshot was older than the router's
        self._cold[key] = self._cold.get(key, ColdStart()).held(now)
        fut: asyncio.Future[Snapshot] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(key, set()).add(fut)
        self._set_held(key, +1)
        try:
            got = await asyncio.wait_for(fut, d.until - now)
        except TimeoutError:
            self._count(ns, pool, "expired")
            return self._ended(key, "expired", self._clock() - now)
        except asyncio.CancelledError:
            self._count(ns, pool, "cancelled")
            raise
        finally:
            self._set_held(key, -1)
            waiters = self._waiters.get(key)
            if waiters is not None:
                waiters.discard(fut)
                if not waiters:
                    del self._waiters[key]
        self._count(ns, pool, "served")
        self._metrics.hold_seconds.labels(ns, pool).observe(self._clock() - now)
        return got

    def wake(self, snap: Snapshot) -> None:
        """A new snapshot: stop the cold-start clocks of pools that now have endpoints and
        hand it to the requests held for them."""
        now = self._clock()
        for key in list(self._cold):
            if not snap.endpoints.get(key):
                continue
            state, took = self._cold[key].endpoints_seen(now)
            self._cold[key] = state
            if took is not None:
                self._metrics.cold_start_seconds.labels(*key).observe(took)
        for key in [k for k in self._waiters if snap.endpoints.get(k)]:
            for fut in self._waiters.pop(key):
                if not fut.done():
                    fut.set_result(snap)
        # Pools no longer scaled from zero (or gone) keep no clock.
        for key in [k for k in self._cold if k not in snap.scale_from_zero]:
            del self._cold[key]

    def _ended(self, key: Key, reason: str, held_s: float) -> HoldEnded:
        retry = cold_retry_after(self._cold.get(key, ColdStart()), self._clock())
        return HoldEnded(key[1], cold_failure(key[1], reason, held_s, retry))

    def _set_held(self, key: Key, delta: int) -> None:
        n = self.held.get(key, 0) + delta
        if n:
            self.held[key] = n
        else:
            self.held.pop(key, None)
        self._metrics.held.labels(*key).set(n)

    def _count(self, ns: str, pool: str, outcome: str) -> None:
        self._metrics.held_requests.labels(ns, pool, outcome).inc()
