"""The ladder walk: pools in order, endpoints within a pool (least outstanding, ejection of
endpoints that refused a connection), one upstream attempt each, and shadow copies.
Routing decisions (which pools, in which order) are made before this; the walk only
executes a ladder and books every attempt."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from modelfleet.router.config import Snapshot
from modelfleet.router.holds import HoldEnded, Holds
from modelfleet.router.metrics import RouterMetrics
from modelfleet.router.textgate import Served, Unserved
from modelfleet.router.upstream import AttemptResult, Payload, UpstreamClient
from modelfleet.routing.hold import ColdFailure, HoldLimits, PolicyBounds
from modelfleet.routing.ladder import Attempt, Tried
from modelfleet.routing.stats import AttemptStats
from modelfleet.routing.table import choose_endpoint

log = logging.getLogger("modelfleet.router")


@dataclass(frozen=True)
class Settings:
    request_timeout_s: float = 120.0  # whole client request, queueing included
    attempt_timeout_s: float = 60.0  # one upstream attempt
    connect_timeout_s: float = 2.0
    body_timeout_s: float = 10.0  # a slow client must send its body within this
    retries_per_pool: int = 1  # extra endpoints tried in a pool before falling back
    eject_s: float = 2.0  # how long an endpoint that refused a connection is avoided
    shadow_max_in_flight: int = 64  # beyond this, shadow copies are dropped
    max_connections: int = 4096
    max_upload_bytes: int = 25 * 1024 * 1024  # an edit's whole multipart body
    max_upload_bytes_in_flight: int = 512 * 1024 * 1024  # all edits being read or served
    hold: HoldLimits = field(
        default_factory=HoldLimits
    )  # requests held for pools at zero (routing.hold)


class Ladder:
    """Executes ladders against the current endpoints. Its state (outstanding requests and
    ejections per endpoint) is shared by every request of the router."""

    def __init__(
        self,
        settings: Settings,
        metrics: RouterMetrics,
        stats: AttemptStats,
        rnd: Callable[[], float],
        clock: Callable[[], float] = time.monotonic,
        latest: Callable[[], Snapshot | None] = lambda: None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.stats = stats
        self._rnd = rnd
        self._clock = clock
        self.outstanding: dict[str, int] = {}
        # (namespace, pool) -> attempts at its workers now (GET /v1/demand; no shadows).
        self.pool_in_flight: dict[tuple[str, str], int] = {}
        self.holds = Holds(settings.hold, metrics, latest, clock)
        self._ejected_until: dict[str, float] = {}
        self._shadow_in_flight = 0
        self._shadow_tasks: set[asyncio.Task[None]] = set()
        self.upstream = UpstreamClient(
            connect_timeout_s=settings.connect_timeout_s,
            max_connections=settings.max_connections,
        )

    async def start(self) -> None:
        await self.upstream.start()

    async def close(self) -> None:
        for t in list(self._shadow_tasks):
            t.cancel()
        await self.upstream.close()

    def keep_only(self, live: Iterable[str]) -> None:
        """Forget ejections of endpoints no longer in the config."""
        alive = set(live)
        self._ejected_until = {u: t for u, t in self._ejected_until.items() if u in alive}

    async def serve(
        self,
        snap: Snapshot,
        ns: str,
        route_name: str,
        ladder: tuple[str, ...],
        payload: Payload,
        deadline: float,
        pinned: bool = False,
        hold: PolicyBounds | None = None,
    ) -> Served | Unserved:
        """Walk the ladder until a worker answers ok or with a 4xx. With `hold` (the
        policy's limits), a pool at zero replicas (Snapshot.scale_from_zero) with no
        endpoint is waited for (routing.hold.decide_hold) before the walk moves on."""
        s = self.settings
        tried: list[Tried] = []
        prev: str | None = None
        cold: HoldEnded | None = None
        for pool in ladder:
            endpoints = snap.endpoints.get((ns, pool), ())
            if not endpoints and hold is not None:
                got = await self.holds.hold(snap, ns, pool, hold, deadline)
                if isinstance(got, Snapshot):
                    snap, endpoints = got, got.endpoints.get((ns, pool), ())
                elif got is not None:
                    cold = cold or got
            if prev is not None and endpoints:
                self.metrics.fallbacks.labels(ns, route_name, prev, pool).inc()
            prev = pool
            if not endpoints:
                tried.append(Tried(pool, None, None))
                continue
            now = self._clock()
            ejected = {e for e in endpoints if self._ejected_until.get(e, 0.0) > now}
            used: set[str] = set()
            for i in range(1 + s.retries_per_pool):
                t0 = self._clock()
                remaining = deadline - t0
                if remaining <= 0:
                    return Unserved(tried, ladder, True, _failure(cold))
                ep = choose_endpoint(endpoints, self.outstanding, used, ejected, self._rnd)
                if ep is None:
                    break
                if i > 0:
                    self.metrics.retries.labels(ns, pool).inc()
                used.add(ep)
                res = await self._attempt(
                    ns, pool, ep, payload, min(s.attempt_timeout_s, remaining), pinned
                )
                tried.append(Tried(pool, ep, res.outcome, res.retry_after_s, res.busy_code))
                if res.outcome is Attempt.OK or res.outcome is Attempt.CLIENT_ERROR:
                    return Served(pool, res, self._clock() - t0)
        return Unserved(tried, ladder, False, _failure(cold))

    def _held(self, ep: str) -> None:
        self.outstanding[ep] = self.outstanding.get(ep, 0) + 1

    def _released(self, ep: str) -> None:
        n = self.outstanding[ep] - 1
        if n:
            self.outstanding[ep] = n
        else:
            del self.outstanding[ep]

    async def _attempt(
        self, ns: str, pool: str, ep: str, payload: Payload, timeout_s: float, pinned: bool
    ) -> AttemptResult:
        self._held(ep)
        key = (ns, pool)
        self.pool_in_flight[key] = self.pool_in_flight.get(key, 0) + 1
        t0 = self._clock()
        try:
            res = await self.upstream.send(ep, payload, timeout_s)
        finally:
            self._released(ep)
            n = self.pool_in_flight[key] - 1
            if n:
                self.pool_in_flight[key] = n
            else:
                del self.pool_in_flight[key]
        t1 = self._clock()
        if res.outcome is Attempt.CONNECT_ERROR:
            self._ejected_until[ep] = t1 + self.settings.eject_s
        elif res.outcome is Attempt.OK and ep in self._ejected_until:
            del self._ejected_until[ep]
        if res.outcome is not Attempt.OK and res.outcome is not Attempt.CLIENT_ERROR:
            log.info("attempt %s %s: %s %s", pool, ep, res.outcome, res.error)
        if pinned:  # the replay's renders must not count as the canary's traffic
            return res
        self.metrics.attempted(ns, pool, res.outcome.value, t1 - t0, res.service_s, res.batch_size)
        self.metrics.cost(ns, pool, res.cost_usd, res.images)
        self.stats.record(
            ns, pool, res.outcome, t1 - t0, t1, res.service_s, res.batch_size, res.text
        )
        self.stats.record_cost(ns, pool, res.outcome, t1, res.cost_usd, res.images)
        return res

    # -- shadow ----------------------------------------------------------------------

    def shadow(self, snap: Snapshot, ns: str, pool: str, payload: Payload) -> None:
        """Fire and forget: the primary never waits on it, and a bounded number run at once."""
        counter = self.metrics.shadow_requests
        endpoints = snap.endpoints.get((ns, pool), ())
        if not endpoints:
            counter.labels(ns, pool, "no_endpoints").inc()
            return
        if self._shadow_in_flight >= self.settings.shadow_max_in_flight:
            counter.labels(ns, pool, "dropped").inc()
            return
        ep = choose_endpoint(endpoints, self.outstanding, set(), set(), self._rnd)
        if ep is None:
            counter.labels(ns, pool, "no_endpoints").inc()
            return
        self._shadow_in_flight += 1
        task = asyncio.get_running_loop().create_task(self._shadow_run(ns, pool, ep, payload))
        self._shadow_tasks.add(task)
        task.add_done_callback(self._shadow_tasks.discard)

    async def _shadow_run(self, ns: str, pool: str, ep: str, payload: Payload) -> None:
        self._held(ep)
        try:
            res = await self.upstream.send(ep, payload, self.settings.attempt_timeout_s)
            self.metrics.shadow_requests.labels(ns, pool, res.outcome.value).inc()
        finally:
            self._shadow_in_flight -= 1
            self._released(ep)


def _failure(cold: HoldEnded | None) -> ColdFailure | None:
    return None if cold is None else cold.failure
