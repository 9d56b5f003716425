"""Admission control per policy: at most max_in_flight forwarded, at most max_queue waiting
in priority order (the tier's priority, then the client key's), everything beyond refused
at once so clients hear 429 in microseconds instead of piling up behind a saturated fleet.
A full queue makes room for a newcomer by shedding the newest waiter of the lowest
priority below it. Before queueing, a tier with a latency budget is judged on the
expected time to answer (routing.tiers): over it, the request is degraded to the tier
the policy names or refused at once with 429 latency_budget_exceeded."""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from modelfleet.routing.intent import ParsedRequest
from modelfleet.routing.table import PolicyTable, RouteEntry, choose_pool
from modelfleet.routing.tiers import (
    DEGRADED_HEADER,
    Priority,
    expected_seconds,
    plan_budget,
    with_tier,
)

# Times per request older than this say nothing about now; a route with none left is
# judged unknown (admitted), so a route refused for being slow is probed again.
HOLD_WINDOW_S = 60.0
_ROUTE_SAMPLES = 32
_ALL_SAMPLES = 128
_ALL = ""  # the policy-wide key of the hold-time samples


class Rejected(Exception):
    """Queue full: refuse now."""


class QueueTimeout(Exception):
    """Waited queue_timeout_ms (or the tier's latency budget, when shorter: `budget`) for
    a slot without getting one."""

    def __init__(self, budget: bool = False) -> None:
        super().__init__()
        self.budget = budget


@dataclass
class Limits:
    max_in_flight: int
    max_queue: int
    queue_timeout_s: float


class AdmissionGate:
    """Slots are handed from a finishing request straight to the next waiter, so a slot
    freed never races with a newcomer and the priority order holds."""

    def __init__(self, limits: Limits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.in_flight = 0
        self._clock = clock
        # Priority -> waiters, oldest first.
        self._queues: dict[Priority, deque[asyncio.Future[None]]] = {}
        # Route name (_ALL: every route) -> (when, seconds a slot was held) of recent ones.
        self._holds: dict[str, deque[tuple[float, float]]] = {_ALL: deque(maxlen=_ALL_SAMPLES)}
        # (tier, reason) -> requests shed; (tier, to, reason) -> requests degraded.
        self.shed: Counter[tuple[str, str]] = Counter()
        self.degraded: Counter[tuple[str, str, str]] = Counter()

    @property
    def queued(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def ahead(self, priority: Priority) -> int:
        """Waiters served before a newcomer of this priority (equal ones came first)."""
        return sum(len(q) for p, q in self._queues.items() if p >= priority)

    def update(self, limits: Limits) -> None:
        """Apply new limits in place; requests already in flight keep their slots."""
        self.limits = limits
        self._hand_over()

    async def acquire(
        self, priority: Priority = (0, 0), tier: str = "", budget_s: float | None = None
    ) -> None:
        """A slot, now or after waiting in priority order, at most queue_timeout_s or
        `budget_s` (the tier's latency budget: past it the answer is late anyway).
        `tier` only labels what is shed (self.shed)."""
        timeout = self.limits.queue_timeout_s
        by_budget = budget_s is not None and budget_s < timeout
        if by_budget and budget_s is not None:
            timeout = budget_s
        reason = "latency_budget" if by_budget else "queue_timeout"
        if self.in_flight < self.limits.max_in_flight and self.queued == 0:
            self.in_flight += 1
            return
        if self.queued >= self.limits.max_queue and not self._evict_for(priority):
            self.shed[(tier, "queue_full")] += 1
            raise Rejected()
        if timeout <= 0:
            self.shed[(tier, reason)] += 1
            raise QueueTimeout(by_budget)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.add_done_callback(lambda f: self._count_evicted(f, tier))
        queue = self._queues.setdefault(priority, deque())
        queue.append(fut)
        try:
            await asyncio.wait_for(asyncio.shield(fut), timeout)
        except (TimeoutError, asyncio.CancelledError) as exc:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                # The slot arrived just as we gave up: pass it on rather than leak it.
                self.release()
            else:
                if not fut.done():
                    fut.cancel()
                if fut in queue:
                    queue.remove(fut)
                self._drop_empty(priority)
            if isinstance(exc, TimeoutError):
                self.shed[(tier, reason)] += 1
                raise QueueTimeout(by_budget) from None
            raise

    def release(self, route: str | None = None, held_s: float | None = None) -> None:
        """Give the slot back; `held_s`, how long `route`'s request held it, feeds the
        expected-wait estimate (expected_s)."""
        self.in_flight -= 1
        if held_s is not None:
            now = self._clock()
            self._holds[_ALL].append((now, held_s))
            if route:
                q = self._holds.get(route)
                if q is None:
                    q = self._holds[route] = deque(maxlen=_ROUTE_SAMPLES)
                q.append((now, held_s))
        self._hand_over()

    def hold_s(self, route: str = _ALL) -> float | None:
        """Mean time a slot was held by `route`'s requests (default: any route's) in the
        last HOLD_WINDOW_S; None without any."""
        q = self._holds.get(route)
        if not q:
            return None
        since = self._clock() - HOLD_WINDOW_S
        recent = [s for t, s in q if t >= since]
        return sum(recent) / len(recent) if recent else None

    def expected_s(self, priority: Priority, route: str) -> float | None:
        """Expected time to answer a newcomer of this priority on `route`, now."""
        return expected_seconds(
            self.ahead(priority),
            self.in_flight,
            self.limits.max_in_flight,
            self.hold_s(),
            self.hold_s(route),
        )

    def _hand_over(self) -> None:
        while self.in_flight < self.limits.max_in_flight:
            fut = self._next_waiter()
            if fut is None:
                return
            self.in_flight += 1
            fut.set_result(None)

    def _next_waiter(self) -> asyncio.Future[None] | None:
        for prio in sorted(self._queues, reverse=True):
            q = self._queues[prio]
            while q:
                fut = q.popleft()
                if not fut.done():
                    self._drop_empty(prio)
                    return fut
            self._drop_empty(prio)
        return None

    def _evict_for(self, priority: Priority) -> bool:
        """A full queue still takes a newcomer by refusing the newest waiter of the lowest
        priority, when that is below the newcomer's."""
        for prio in sorted(self._queues):
            if prio >= priority:
                return False
            q = self._queues[prio]
            while q:
                fut = q.pop()
                if not fut.done():
                    fut.set_exception(Rejected())
                    self._drop_empty(prio)
                    return True
            self._drop_empty(prio)
        return False

    def _drop_empty(self, priority: Priority) -> None:
        q = self._queues.get(priority)
        if q is not None and not q:
            del self._queues[priority]

    def _count_evicted(self, fut: asyncio.Future[None], tier: str) -> None:
        if not fut.cancelled() and isinstance(fut.exception(), Rejected):
            self.shed[(tier, "evicted")] += 1


@dataclass(frozen=True)
class Admitted:
    """A request holding a slot: the route (and request) it runs as, the pool the
    route's weights picked, and the headers its answer carries."""

    route: RouteEntry
    parsed: ParsedRequest
    chosen: str | None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Refused:
    code: str
    message: str
    headers: dict[str, str]
    retry_after_s: float = 1.0


async def admit(
    gate: AdmissionGate,
    policy: PolicyTable,
    parsed: ParsedRequest,
    route: RouteEntry,
    reroute: Callable[[ParsedRequest], RouteEntry | None],
    key_priority: int,
    rnd: Callable[[], float],
    queued: dict[tuple[str, str], int],
) -> Admitted | Refused:
    """Latency budget (maybe degrade: route again as another tier), then a slot in
    priority order. `queued` counts waiters per (namespace, pool) for /v1/demand."""
    tiers, asked = policy.tiers, parsed.intent.tier
    priority = (tiers.priority(asked), key_priority)  # kept when degraded
    routes: dict[str, RouteEntry | None] = {asked: route}

    def route_as(tier: str) -> RouteEntry | None:
        if tier not in routes:
            routes[tier] = reroute(replace_tier(parsed, tier))
        return routes[tier]

    def expected_for(tier: str) -> float | None:
        r = route_as(tier)
        return None if r is None else gate.expected_s(priority, r.name)

    plan = plan_budget(tiers, asked, expected_for, lambda t: route_as(t) is not None)
    if plan.refused:
        gate.shed[(asked, "latency_budget")] += 1
        exp, budget = plan.expected_s or 0.0, plan.budget_s or 0.0
        return Refused(
            "latency_budget_exceeded",
            plan.reason(),
            {"X-ModelFleet-Route": route.name},
            max(1.0, exp - budget),
        )
    headers: dict[str, str] = {}
    degraded_route = routes.get(plan.tier)
    if plan.degraded and degraded_route is not None:
        route = degraded_route
        parsed = replace_tier(parsed, plan.tier)
        gate.degraded[(asked, plan.tier, "slow")] += 1
        headers[DEGRADED_HEADER] = plan.header()
    headers["X-ModelFleet-Route"] = route.name
    # Picked before admission so a queued request counts as demand for its pool.
    chosen = choose_pool(route.pools, rnd)
    qkey = (policy.namespace, chosen or "")  # none (every weight 0): counted, not reported
    queued[qkey] = queued.get(qkey, 0) + 1
    limits = gate.limits
    try:
        await gate.acquire(priority, asked, plan.budget_s)
    except Rejected:
        return Refused(
            "overloaded",
            f"RoutingPolicy {policy.key} is at capacity "
            f"({limits.max_in_flight} in flight, {limits.max_queue} queued)",
            headers,
        )
    except QueueTimeout as exc:
        if exc.budget:
            return Refused(
                "latency_budget_exceeded",
                f"tier {asked}: no slot in RoutingPolicy {policy.key} within the tier's "
                f"latency budget of {(plan.budget_s or 0) * 1000:.0f} ms (RoutingPolicy "
                "spec.tiers[].latencyBudgetMs); retry later or ask for a faster tier",
                headers,
            )
        return Refused(
            "queue_timeout",
            f"no slot in RoutingPolicy {policy.key} within {limits.queue_timeout_s * 1000:.0f} ms",
            headers,
        )
    finally:
        n = queued[qkey] - 1
        if n:
            queued[qkey] = n
        else:
            del queued[qkey]
    return Admitted(route, parsed, chosen, headers)


def replace_tier(parsed: ParsedRequest, tier: str) -> ParsedRequest:
    """The request as another tier (degrading): its intent routes as `tier`."""
    return replace(parsed, intent=with_tier(parsed.intent, tier))


class TierCollector(Collector):
    """modelfleet_router_shed_total and modelfleet_router_degraded_total, read from the
    gates at scrape time (a gate lives as long as its policy)."""

    def __init__(self, gates: Callable[[], Iterable[tuple[str, str, AdmissionGate]]]) -> None:
        self._gates = gates

    def collect(self) -> Iterator[CounterMetricFamily]:
        shed = CounterMetricFamily(
            "modelfleet_router_shed",
            "Requests refused by admission, by tier and reason: queue_full, evicted "
            "(a higher priority took its place), queue_timeout, latency_budget.",
            labels=["namespace", "policy", "tier", "reason"],
        )
        degraded = CounterMetricFamily(
            "modelfleet_router_degraded",
            "Requests routed as another tier than asked, by reason (slow: latency budget).",
            labels=["namespace", "policy", "tier", "to", "reason"],
        )
        for ns, name, gate in self._gates():
            for (tier, reason), n in sorted(gate.shed.items()):
                shed.add_metric([ns, name, tier, reason], n)
            for (tier, to, reason), n in sorted(gate.degraded.items()):
                degraded.add_metric([ns, name, tier, to, reason], n)
        yield shed
        yield degraded
