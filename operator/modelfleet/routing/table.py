"""The route table the router applies: RoutingPolicy spec (matching, admission, shadow) joined
with status.routes (weights and fallbacks the operator compiled, canary weights included)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from modelfleet.api.routingpolicy import AdmissionSpec, RoutingPolicy, ShadowSpec, VerifySpec
from modelfleet.routing.intent import Intent
from modelfleet.routing.tiers import PolicyTiers, policy_tiers

DEFAULT_NAMESPACE = "default"


@dataclass(frozen=True)
class WeightedPool:
    pool: str
    weight: int


@dataclass(frozen=True)
class RouteEntry:
    name: str
    tiers: frozenset[str]
    tags: frozenset[str]
    patterns: tuple[re.Pattern[str], ...]
    # Lower-cased header name -> required value.
    headers: tuple[tuple[str, str], ...]
    pools: tuple[WeightedPool, ...]
    fallbacks: tuple[str, ...]
    shadow: ShadowSpec | None = None
    # None: responses pass through unread (the hot path); set: the text gate reads them.
    verify: VerifySpec | None = None

    def matches(self, intent: Intent) -> bool:
        if self.tiers and intent.tier not in self.tiers:
            return False
        if not self.tags <= intent.tags:
            return False
        if self.patterns and not any(p.search(intent.prompt) for p in self.patterns):
            return False
        return all(intent.headers.get(k) == v for k, v in self.headers)


@dataclass(frozen=True)
class PolicyTable:
    namespace: str
    name: str
    routes: tuple[RouteEntry, ...]
    admission: AdmissionSpec = field(default_factory=AdmissionSpec)
    anonymous: bool = False  # spec.access.anonymous: served without a client key
    tiers: PolicyTiers = field(default_factory=PolicyTiers)  # spec.tiers, spec.defaultTier

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def compile_policy(policy: RoutingPolicy) -> PolicyTable:
    """Join spec and status. A route missing from status.routes (not compiled yet, or no
    operator: static config) gets its spec pool at weight 100 and its spec fallbacks."""
    compiled = {r.name: r for r in (policy.status.routes if policy.status else [])}
    routes: list[RouteEntry] = []
    for r in policy.spec.routes:
        c = compiled.get(r.name)
        if c is not None:
            pools = tuple(WeightedPool(p.pool, p.weight) for p in c.pools)
            fallbacks = tuple(c.fallbacks)
        else:
            pools = (WeightedPool(r.pool, 100),)
            fallbacks = tuple(r.fallbacks)
        m = r.match
        routes.append(
            RouteEntry(
                name=r.name,
                tiers=frozenset(m.tiers),
                tags=frozenset(m.tags),
                patterns=tuple(re.compile(p, re.IGNORECASE) for p in m.prompt_patterns),
                headers=tuple((k.lower(), v) for k, v in sorted(m.headers.items())),
                pools=pools,
                fallbacks=fallbacks,
                shadow=r.shadow,
                verify=r.verify,
            )
        )
    return PolicyTable(
        namespace=policy.metadata.namespace or DEFAULT_NAMESPACE,
        name=policy.metadata.name,
        routes=tuple(routes),
        admission=policy.spec.admission,
        anonymous=policy.spec.access.anonymous,
        tiers=policy_tiers(policy.spec),
    )


def match_route(routes: Sequence[RouteEntry], intent: Intent) -> RouteEntry | None:
    """First route whose match holds. The spec says the catch-all belongs last; a catch-all
    written earlier still only applies after every specific route had its chance."""
    catch_all: RouteEntry | None = None
    for r in routes:
        if not (r.tiers or r.tags or r.patterns or r.headers):
            if catch_all is None:
                catch_all = r
            continue
        if r.matches(intent):
            return r
    return catch_all


def select_policy(policies: Sequence[PolicyTable], wanted: str | None) -> PolicyTable | None:
    """By name ("name" or "namespace/name") when asked, else the first one."""
    if not wanted:
        return policies[0] if policies else None
    for p in policies:
        if wanted in (p.name, p.key):
            return p
    return None


def choose_pool(pools: Sequence[WeightedPool], rnd: Callable[[], float]) -> str | None:
    """Weighted choice; `rnd` returns a float in [0, 1). Weights need not sum to 100."""
    total = sum(p.weight for p in pools if p.weight > 0)
    if total <= 0:
        return None
    x = rnd() * total
    acc = 0
    last = None
    for p in pools:
        if p.weight <= 0:
            continue
        acc += p.weight
        last = p.pool
        if x < acc:
            return p.pool
    return last  # rnd() returned ~1.0 through float rounding


def pool_ladder(route: RouteEntry, chosen: str | None) -> tuple[str, ...]:
    """Pools to try in order: the chosen one, the route's other weighted pools (a failing
    canary candidate falls back on stable before any fallback pool), then fallbacks."""
    order: list[str] = []
    if chosen is not None:
        order.append(chosen)
    for p in sorted(route.pools, key=lambda w: -w.weight):
        if p.weight > 0 and p.pool not in order:
            order.append(p.pool)
    for f in route.fallbacks:
        if f not in order:
            order.append(f)
    return tuple(order)


def choose_endpoint(
    endpoints: Sequence[str],
    outstanding: Mapping[str, int],
    exclude: frozenset[str] | set[str],
    ejected: frozenset[str] | set[str],
    rnd: Callable[[], float],
) -> str | None:
    """Least outstanding requests, random tie-break. Endpoints that refused a connection
    recently (`ejected`) are used only when nothing else is left: a dead endpoint answers
    fastest and would otherwise attract the most traffic."""
    candidates = [e for e in endpoints if e not in exclude]
    if not candidates:
        return None
    healthy = [e for e in candidates if e not in ejected]
    if healthy:
        candidates = healthy
    best = min(outstanding.get(e, 0) for e in candidates)
    tied = [e for e in candidates if outstanding.get(e, 0) == best]
    return tied[min(int(rnd() * len(tied)), len(tied) - 1)]
