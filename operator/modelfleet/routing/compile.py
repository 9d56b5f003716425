"""Pure compilation of a RoutingPolicy into the route table the router applies."""

from __future__ import annotations

from dataclasses import dataclass

from modelfleet.api.routingpolicy import CompiledRoute, PoolWeight, RoutingPolicySpec

MISSING_POOL = "MissingPool"
FALLBACK_CYCLE = "FallbackCycle"
COMPILED = "Compiled"


@dataclass(frozen=True)
class CanaryWeight:
    """An active canary's split of one route."""

    route: str
    stable: str
    candidate: str
    weight: int  # candidate percent


@dataclass(frozen=True)
class Problem:
    reason: str
    message: str


def compile_routes(
    spec: RoutingPolicySpec, pools: set[str], canaries: list[CanaryWeight]
) -> tuple[list[CompiledRoute], list[Problem]]:
    """Fold canary weights into the routes and list every reference that cannot work.

    Routes with problems are still compiled: the router answers their requests
    with a clear 503 naming the pool while the other routes keep working."""
    by_route = {c.route: c for c in canaries}
    routes: list[CompiledRoute] = []
    problems: list[Problem] = []
    for i, route in enumerate(spec.routes):
        chain = [route.pool, *route.fallbacks]
        seen: set[str] = set()
        for pool in chain:
            if pool in seen:
                problems.append(
                    Problem(
                        FALLBACK_CYCLE,
                        f"spec.routes[{i}] ({route.name}): pool {pool!r} appears twice in pool + "
                        "fallbacks; a request would be retried on it in a loop",
                    )
                )
            seen.add(pool)
        referenced = [*chain, *([route.shadow.pool] if route.shadow else [])]
        if route.verify is not None and route.verify.on_fail.pool is not None:
            referenced.append(route.verify.on_fail.pool)  # re-renders go there
        for pool in dict.fromkeys(referenced):
            if pool not in pools:
                problems.append(
                    Problem(
                        MISSING_POOL,
                        f"spec.routes[{i}] ({route.name}) references ModelPool {pool!r}, "
                        "which does not exist in this namespace",
                    )
                )
        canary = by_route.get(route.name)
        if canary is not None and canary.stable == route.pool and 0 < canary.weight < 100:
            weights = [
                PoolWeight(pool=canary.stable, weight=100 - canary.weight),
                PoolWeight(pool=canary.candidate, weight=canary.weight),
            ]
        elif canary is not None and canary.stable == route.pool and canary.weight >= 100:
            weights = [PoolWeight(pool=canary.candidate, weight=100)]
        else:
            weights = [PoolWeight(pool=route.pool, weight=100)]
        routes.append(
            CompiledRoute(name=route.name, pools=weights, fallbacks=list(route.fallbacks))
        )
    return routes, problems
