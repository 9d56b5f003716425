"""Per-key requests per minute and budgets: the router's calls around a request (the
decisions are modelfleet.routing.budget's, the stores router/spendstore.py's).

A store that fails: a key with a budget is refused with 503 budget_unavailable (spend is
not let through unaccounted); the rate limit falls back to this replica's own counts.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter

from modelfleet.router.config import Snapshot
from modelfleet.router.metrics import RouterMetrics
from modelfleet.router.responses import rejected
from modelfleet.router.spendstore import Account, MemorySpendStore, SpendStore
from modelfleet.routing.budget import (
    MAX_BUDGET_USD,
    Period,
    RateVerdict,
    budget_message,
    estimate_nano,
    per_image_cost_nano,
    period_of,
    rate_message,
    reserved_renders,
    reset_time,
    to_nano,
    to_usd,
)
from modelfleet.routing.clients import Budget, ClientKey, authorize
from modelfleet.routing.intent import ParsedRequest
from modelfleet.routing.ladder import Outcome
from modelfleet.routing.models import route_for
from modelfleet.routing.stats import (
    COST_HEADER,
    RERENDER_COST_HEADER,
    parse_cost,
    response_images,
)
from modelfleet.routing.table import PolicyTable, RouteEntry, choose_pool, pool_ladder
from modelfleet.routing.tiers import DEGRADED_HEADER
from modelfleet_common.expected_text import expected_text

POOL_HEADER = "X-ModelFleet-Pool"  # the pool that served, as router/server.py sets it
Labels = tuple[str, str, str]  # namespace, policy, route

log = logging.getLogger("modelfleet.router.spend")


# -- the router's calls --------------------------------------------------------------


@dataclass(frozen=True)
class Ticket:
    """One admitted request's reservation, from reserve() to settle() or release()."""

    scope: str
    key_id: str
    namespace: str
    period: Period
    rid: str
    estimate: int | None  # None: this replica's probe for the key


@dataclass(frozen=True)
class Refused:
    """Over budget: the figures for the 429's message."""

    period: Period
    account: Account


class StoreDown(Exception):
    """The spend store did not answer: the caller refuses with 503 budget_unavailable."""


class CostMemory:
    """The dearest recent cost per image of each (namespace, pool), learnt from answers:
    the max over the current and the previous `span_s` (so a price cut is seen within
    two spans, a price rise at once)."""

    def __init__(self, span_s: float = 600.0, clock: Callable[[], float] = time.monotonic):
        self.span_s = span_s
        self._clock = clock
        self._seen: dict[tuple[str, str], tuple[int, int, int]] = {}  # span, prev max, max

    def learn(self, ns: str, pool: str, per: int) -> None:
        """One answer's cost per image (routing.budget.per_image_cost_nano)."""
        span = int(self._clock() // self.span_s)
        s, prev, cur = self._seen.get((ns, pool), (span, 0, 0))
        if s != span:
            prev, cur = (cur if s == span - 1 else 0), 0
        self._seen[(ns, pool)] = (span, prev, max(cur, per))

    def per_image(self, ns: str, pools: Iterable[str]) -> dict[str, int]:
        span = int(self._clock() // self.span_s)
        out: dict[str, int] = {}
        for p in pools:
            got = self._seen.get((ns, p))
            if got is None:
                continue
            s, prev, cur = got
            # The span before this one's max counts too; an older one's, until a newer.
            out[p] = max(prev, cur) if s == span else cur
        return out


class Spend:
    """Per-key rate limits and budgets over a SpendStore; metrics per key id."""

    def __init__(
        self,
        metrics: RouterMetrics | CollectorRegistry,
        clock: Callable[[], float] = time.monotonic,
        *,
        store: SpendStore | None = None,
        wall: Callable[[], float] = time.time,
        probe_wait_s: float = 30.0,
    ) -> None:
        """metrics: the router's (refusals count in its requests_total too) or a bare
        registry; store: memory until use() names another."""
        self.store: SpendStore = store or MemorySpendStore()
        self._router_metrics = metrics if isinstance(metrics, RouterMetrics) else None
        registry = metrics.registry if isinstance(metrics, RouterMetrics) else metrics
        self._clock = clock
        self._wall = wall
        self.probe_wait_s = probe_wait_s
        self.costs = CostMemory(clock=clock)
        self._local = MemorySpendStore()  # the rate limit's fallback when the store fails
        # Scopes with this replica's probe in flight (routing.budget): set when it ends.
        self._probes: dict[str, asyncio.Event] = {}
        self._last_log = 0.0
        # (namespace, pool) -> when the store was last asked for its cost, the cost last
        # published to it (only changes are written).
        self._asked: dict[tuple[str, str], float] = {}
        self._published: dict[tuple[str, str], int] = {}
        # scope -> namespace, key id, rpm, budget; and this replica's totals for the key.
        self.keys: dict[str, tuple[str, str, int | None, Budget | None]] = {}
        self.totals: dict[str, _Totals] = {}
        label = ["namespace", "key"]
        # Requests per key by outcome are router.access's modelfleet_router_client_requests.
        self.limited = Counter(
            "modelfleet_router_client_limited",
            "Requests of a client key id (never the key) refused by its limits: "
            "rate_limited (requests per minute), budget_exceeded.",
            [*label, "reason"],
            registry=registry,
        )
        self.images = Counter(
            "modelfleet_router_client_images",
            "Images in the answers to each client key id.",
            label,
            registry=registry,
        )
        self.spent = Counter(
            "modelfleet_router_client_cost_usd",
            "USD charged to each client key id (the workers' X-ModelFleet-Cost-USD).",
            label,
            registry=registry,
        )
        self.degraded = Counter(
            "modelfleet_router_budget_degraded",
            "Requests of a client key over budget routed as the tier its policy names "
            "(spec.tiers[].degradeTo.budget) instead of refused; tier: the one asked, to: "
            "the one it ran as.",
            [*label, "tier", "to"],
            registry=registry,
        )
        self.errors = Counter(
            "modelfleet_router_spend_store_errors_total",
            "Spend store operations that failed: a budgeted request refused with 503 "
            "(reserve), a charge not recorded (settle), a rate limit counted by this "
            "replica alone (hit), a /v1/stats budget row without figures (account), a "
            "pool's cost per image not shared (cost).",
            ["op"],
            registry=registry,
        )
        for op in ("reserve", "settle", "hit", "account", "cost"):
            self.errors.labels(op)

    def _failed(self, op: str, exc: BaseException) -> None:
        self.errors.labels(op).inc()
        now = time.monotonic()
        if now - self._last_log >= 10.0:
            self._last_log = now
            log.warning("spend store %s failed: %r", op, exc)

    def _seen(self, key: ClientKey) -> tuple[str, _Totals]:
        scope = f"{key.namespace}/{key.id}"
        self.keys[scope] = (key.namespace, key.id, key.requests_per_minute, key.budget)
        t = self.totals.get(scope)
        if t is None:
            t = self.totals[scope] = _Totals()
        return scope, t

    async def rate(self, key: ClientKey) -> RateVerdict:
        """Counts the request against the key's requests per minute (admitted if none)."""
        scope, totals = self._seen(key)
        rpm = key.requests_per_minute
        if rpm is None:
            return RateVerdict(True)
        try:
            verdict = await self.store.hit(scope, rpm, self._wall())
        except Exception as exc:  # a dead store: this replica's own counts
            self._failed("hit", exc)
            verdict = await self._local.hit(scope, rpm, self._wall())
        if not verdict.admitted:
            totals.rejected += 1
            self.limited.labels(key.namespace, key.id, "rate_limited").inc()
        return verdict

    async def reserve(self, key: ClientKey, images: int, ladder: Iterable[str]) -> Ticket | Refused:
        """The key's budget reservation (key.budget must be set). Raises StoreDown when
        the store does not answer, or this replica's probe for the key took too long."""
        assert key.budget is not None
        scope, totals = self._seen(key)
        budget = key.budget
        pools = tuple(ladder)
        per = self.costs.per_image(key.namespace, pools)
        if len(per) < len(pools):
            per = await self._shared_costs(key.namespace, pools, per)
        estimate = estimate_nano(images, per, pools)
        if estimate is None and scope in self._probes:
            # This replica's probe for the key is in flight: its answer gives the estimate.
            try:
                async with asyncio.timeout(self.probe_wait_s):
                    while estimate is None and scope in self._probes:
                        await self._probes[scope].wait()
                        per = self.costs.per_image(key.namespace, pools)
                        estimate = estimate_nano(images, per, pools)
            except TimeoutError:
                raise StoreDown(
                    f"no cost estimate yet for client key {key.id!r}: its first request "
                    f"has not finished within {self.probe_wait_s:g} s"
                ) from None
        now = self._wall()
        p = period_of(now, budget.period)
        rid = uuid.uuid4().hex
        limit = to_nano(min(budget.amount_usd, MAX_BUDGET_USD))
        if estimate is None:
            self._probes[scope] = asyncio.Event()
        try:
            ok, acct = await self.store.reserve(scope, p, rid, estimate, limit, now)
        except Exception as exc:
            self._end_probe(scope, estimate)
            self._failed("reserve", exc)
            raise StoreDown(f"the spend store did not answer: {type(exc).__name__}") from None
        if not ok:
            self._end_probe(scope, estimate)
            totals.rejected += 1
            self.limited.labels(key.namespace, key.id, "budget_exceeded").inc()
            return Refused(p, acct)
        return Ticket(scope, key.id, key.namespace, p, rid, estimate)

    async def _shared_costs(
        self, ns: str, pools: tuple[str, ...], per: dict[str, int]
    ) -> dict[str, int]:
        """The costs other replicas published for the pools this one has not seen
        answer, asked at most every 5 s per pool."""
        now = self._clock()
        ask = [p for p in pools if p not in per and self._asked.get((ns, p), -1e9) + 5 <= now]
        if not ask:
            return per
        for p in ask:
            self._asked[(ns, p)] = now
        try:
            got = await self.store.costs(ns, ask)
        except Exception as exc:
            self._failed("cost", exc)
            return per
        for p, v in got.items():
            self.costs.learn(ns, p, v)
        return self.costs.per_image(ns, pools)

    def _end_probe(self, scope: str, estimate: int | None) -> None:
        if estimate is None:
            ev = self._probes.pop(scope, None)
            if ev is not None:
                ev.set()

    async def learn(self, ns: str, pool: str, cost_usd: float | None, images: int) -> None:
        """One ok answer of `pool` (a served one, or a text gate's re-render): its cost
        per image for the estimates here, and for the other replicas when it changed."""
        per = per_image_cost_nano(cost_usd, images)
        self.costs.learn(ns, pool, per)
        if self._published.get((ns, pool)) != per:
            self._published[(ns, pool)] = per
            try:
                await self.store.publish_cost(ns, pool, per)
            except Exception as exc:
                self._failed("cost", exc)

    async def settle(
        self, t: Ticket | None, key: ClientKey, pool: str | None, cost_usd: float | None,
        images: int, rerender_usd: float | None = None,
    ) -> None:  # fmt: skip
        """After the answer (pool: the one that served; None: none did): charge its cost
        and its text gate's re-renders' (rerender_usd), or release the reservation. t
        None: a key without a budget (metrics only). The pool's cost per image is learnt
        from its own answer only: the re-renders are in the reservation already."""
        if pool is not None:
            await self.learn(key.namespace, pool, cost_usd, images)
        cost = to_nano(cost_usd or 0.0) + to_nano(rerender_usd or 0.0)
        if t is not None:
            self._end_probe(t.scope, t.estimate)
            try:
                if pool is None and not cost:
                    await self.store.release(t.scope, t.period, t.rid)
                else:
                    await self.store.settle(t.scope, t.period, t.rid, cost, images)
            except Exception as exc:
                self._failed("settle", exc)
        _scope, totals = self._seen(key)
        totals.requests += 1
        totals.images += images
        totals.cost_nano += cost
        if images:
            self.images.labels(key.namespace, key.id).inc(images)
        if cost:
            self.spent.labels(key.namespace, key.id).inc(to_usd(cost))

    async def clients(self) -> list[dict[str, object]]:
        """The /v1/stats `clients` section: every key id this replica has seen, its
        counts here, and its budget period's figures from the store (every replica's),
        read all at once."""
        now = self._wall()
        rows = sorted(self.keys.items())
        figures = await asyncio.gather(
            *(self._account(scope, k[3], now) for scope, k in rows if k[3] is not None)
        )
        found = iter(figures)
        out: list[dict[str, object]] = []
        for scope, (ns, key_id, rpm, budget) in rows:
            t = self.totals[scope]
            row: dict[str, object] = {
                "namespace": ns,
                "key": key_id,
                "requests": t.requests,
                "rejected": t.rejected,
                "images": t.images,
                "cost_usd": to_usd(t.cost_nano),
            }
            if rpm is not None:
                row["requests_per_minute"] = rpm
            if budget is not None:
                row["budget"] = next(found)
            out.append(row)
        return out

    async def _account(self, scope: str, budget: Budget, now: float) -> dict[str, object]:
        p = period_of(now, budget.period)
        b: dict[str, object] = {
            "usd": budget.amount_usd,
            "period": budget.period,
            "label": p.label,
            "resets": reset_time(p),
        }
        try:
            acct = await self.store.account(scope, p)
        except Exception as exc:
            self._failed("account", exc)
            return b
        spent = to_usd(acct.spent)
        return b | {
            "spent_usd": spent,
            "reserved_usd": to_usd(acct.reserved),
            "remaining_usd": max(0.0, budget.amount_usd - spent),
            "requests": acct.requests + acct.failed,
            "images": acct.images,
        }

    async def close(self) -> None:
        await self.store.close()

    # -- the router's calls (router/server.py) -----------------------------------------

    def use(self, store: SpendStore) -> None:
        """The store the flags name (router/cli.py), before the router serves."""
        self.store = store

    def _refused(self, where: Labels, start: float, resp: web.Response) -> web.Response:
        if self._router_metrics is not None:
            ns, policy, route = where
            self._router_metrics.finished(
                ns, policy, route, "", Outcome.REJECTED.value, self._clock() - start
            )
        return resp

    async def limit(
        self, key: ClientKey | None, where: Labels, start: float
    ) -> web.Response | None:
        """Requests per minute: 429 rate_limit_exceeded with Retry-After, or None.
        where: (namespace, policy, route) for the router's requests_total."""
        if key is None:
            return None
        v = await self.rate(key)
        if v.admitted:
            return None
        msg = rate_message(key.id, key.requests_per_minute or 0, v.retry_after_s)
        return self._refused(
            where, start, rejected("rate_limit_exceeded", msg, {}, v.retry_after_s)
        )

    async def hold(
        self,
        key: ClientKey | None,
        parsed: ParsedRequest,
        route: RouteEntry,
        policy: PolicyTable,
        snap: Snapshot,
        start: float,
    ) -> Hold | web.Response:
        """Before forwarding: the key's budget reservation for the route's ladder. Refused
        where the policy's tier says degradeTo.budget: the same request routed as that
        tier (and on, while each names one) if its route fits and the key may use it.
        Else the refusal: 429 budget_exceeded until the period resets, 503
        budget_unavailable when the store does not answer."""
        if key is None:
            return _NO_HOLD
        if key.budget is None:
            return Hold(self, key, None)
        where = (policy.namespace, policy.name, route.name)
        path, current = [parsed.intent.tier], route
        while True:
            try:
                got = await self.reserve(key, *_reserved(parsed, current))
            except StoreDown as exc:
                resp = rejected("budget_unavailable", str(exc), {}, 1.0, status=503)
                return self._refused(where, start, resp)
            if isinstance(got, Ticket):
                if len(path) == 1:
                    return Hold(self, key, got)
                self.degraded.labels(key.namespace, key.id, path[0], path[-1]).inc()
                return Hold(self, key, got, (current, "budget " + "->".join(path)))
            nxt = policy.tiers.degrade_target(path[-1], "budget")
            if nxt is None or nxt in path:
                break
            intent = replace(parsed.intent, tier=nxt)
            r = route_for(policy, intent, parsed.model, snap.model_names)
            if not isinstance(r, RouteEntry) or authorize(key, nxt, parsed.model, r.name):
                break
            path.append(nxt)
            current = r
        b = key.budget
        msg = budget_message(key.id, to_usd(got.account.spent), b.amount_usd, got.period)
        if len(path) > 1:
            msg += f" (degraded via {' -> '.join(path[1:])}, which does not fit either)"
        wait = max(1.0, got.period.end - self._wall())
        return self._refused(where, start, rejected("budget_exceeded", msg, {}, wait))


class Hold:
    """One request's spend from admission to its answer: settled() charges the answer's
    cost (the worker's X-ModelFleet-Cost-USD, relayed, and the text gate's
    X-ModelFleet-Rerender-Cost-USD) or releases the reservation."""

    def __init__(
        self,
        spend: Spend | None,
        key: ClientKey | None,
        ticket: Ticket | None,
        degraded: tuple[RouteEntry, str] | None = None,
    ) -> None:
        self.spend, self.key, self.ticket = spend, key, ticket
        self.degraded = degraded  # the route it runs as instead, and the header's value

    def routed(
        self, route: RouteEntry, chosen: str | None, headers: dict[str, str]
    ) -> tuple[RouteEntry, str | None, dict[str, str]]:
        """The route, pool and headers the request goes on with (degraded or not)."""
        if self.degraded is None:
            return route, chosen, headers
        new, header = self.degraded
        out = {**headers, "X-ModelFleet-Route": new.name, DEGRADED_HEADER: header}
        return new, choose_pool(new.pools, random.random), out

    async def settled(self, answer: Awaitable[web.Response]) -> web.Response:
        if self.spend is None or self.key is None:
            return await answer
        try:
            resp = await answer
        except BaseException:
            await asyncio.shield(self.spend.settle(self.ticket, self.key, None, None, 0))
            raise
        ok = resp.status == 200
        body = resp.body if ok and isinstance(resp.body, bytes) else b""
        pool = resp.headers.get(POOL_HEADER) if ok else None
        cost = parse_cost(resp.headers.get(COST_HEADER))
        rerenders = parse_cost(resp.headers.get(RERENDER_COST_HEADER))
        images = response_images(body)
        await self.spend.settle(self.ticket, self.key, pool, cost, images, rerenders)
        return resp


_NO_HOLD = Hold(None, None, None)


def _images(parsed: ParsedRequest) -> int:
    n = parsed.forward.get("n")
    return n if isinstance(n, int) and n >= 1 else 1


def _reserved(parsed: ParsedRequest, route: RouteEntry) -> tuple[int, tuple[str, ...]]:
    """What a reservation covers: the request's images on the route's ladder and, behind
    a text gate (a route with verify, a request with expected text), every re-render it
    may ask for, on its re-render pool too, so one request stays the overspend bound."""
    ladder = pool_ladder(route, None)
    v = route.verify
    if v is None or not expected_text(parsed.intent.prompt, parsed.forward.get("text")):
        return _images(parsed), ladder
    extra = v.on_fail.pool
    pools = ladder if extra is None or extra in ladder else (*ladder, extra)
    return reserved_renders(_images(parsed), v.max_rerenders), pools


@dataclass
class _Totals:
    requests: int = 0
    rejected: int = 0
    images: int = 0
    cost_nano: int = 0
