"""Request tiers as a policy declares them (spec.tiers), and the latency-budget decision:
a request whose expected time to answer exceeds its tier's budget is refused at once or
routed again as the tier the policy names (degradeTo.slow). Pure; the router's admission
layer (router/admission.py) feeds it live queue depth and recent times per request."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from modelfleet.api.routingpolicy import (
    BUILTIN_DEFAULT_TIER,
    BUILTIN_TIERS,
    RoutingPolicySpec,
)
from modelfleet.routing.intent import Intent, ParsedRequest, RequestError

DEGRADED_HEADER = "X-ModelFleet-Degraded"
# Queue order: the tier's priority, then the client key's (ClientKey.priority).
Priority = tuple[int, int]


@dataclass(frozen=True)
class Tier:
    name: str
    priority: int = 0
    budget_s: float | None = None  # latencyBudgetMs in seconds; None: no budget
    on_slow: str | None = None  # degradeTo.slow
    on_budget: str | None = None  # degradeTo.budget (client spend, router/spend.py)


def _builtin() -> Mapping[str, Tier]:
    return {name: Tier(name, prio) for name, prio in BUILTIN_TIERS}


@dataclass(frozen=True)
class PolicyTiers:
    """A policy's tiers by name (in declared order) and the tier of requests naming none."""

    by_name: Mapping[str, Tier] = field(default_factory=_builtin)
    default: str = BUILTIN_DEFAULT_TIER

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.by_name)

    def priority(self, tier: str) -> int:
        """A tier's queue priority; an unknown name (a pinned request's unchecked tier)
        counts as the default tier."""
        t = self.by_name.get(tier) or self.by_name.get(self.default)
        return t.priority if t is not None else 0

    def degrade_target(self, tier: str, reason: str) -> str | None:
        """Where `tier` degrades to on `reason` ("slow" or "budget"); None: refuse."""
        t = self.by_name.get(tier)
        if t is None:
            return None
        return t.on_slow if reason == "slow" else t.on_budget if reason == "budget" else None


def policy_tiers(spec: RoutingPolicySpec) -> PolicyTiers:
    """spec.tiers compiled; empty: preview (0) and production (100, the default)."""
    if not spec.tiers:
        return PolicyTiers(default=spec.default_tier or BUILTIN_DEFAULT_TIER)
    by_name = {
        t.name: Tier(
            t.name,
            t.priority,
            None if t.latency_budget_ms is None else t.latency_budget_ms / 1000.0,
            t.degrade_to.slow if t.degrade_to else None,
            t.degrade_to.budget if t.degrade_to else None,
        )
        for t in spec.tiers
    }
    return PolicyTiers(by_name, spec.default_tier or spec.tiers[0].name)


def with_tier(intent: Intent, tier: str) -> Intent:
    """The same request as another tier: route it again with this (degrading)."""
    return intent if intent.tier == tier else replace(intent, tier=tier)


def resolve_tier(parsed: ParsedRequest, tiers: PolicyTiers, policy: str) -> ParsedRequest:
    """The request's tier checked against the policy's (400 naming the field and listing
    them), or the policy's default tier when the request names none."""
    if parsed.tier_param is None:
        return replace(parsed, intent=with_tier(parsed.intent, tiers.default))
    tier = parsed.intent.tier
    if tier not in tiers.by_name:
        raise RequestError(
            400,
            "invalid_request",
            f"tier {tier!r} is not a tier of RoutingPolicy {policy}; "
            f"tier must be one of {', '.join(tiers.names)}",
            parsed.tier_param,
        )
    return parsed


def expected_seconds(
    ahead: int,
    in_flight: int,
    max_in_flight: int,
    slot_s: float | None,
    service_s: float | None,
) -> float | None:
    """Expected time to answer: the wait for a slot plus the route's time per request.
    `ahead`: requests queued that go first (priority at least this one's); `slot_s`: the
    recent time a request holds a slot, over every route of the policy; `service_s`: the
    route's own recent time per request. A request needs `ahead + 1 - free` slots to be
    given back before its turn; with `max_in_flight` slots each busy for `slot_s`, one
    comes back every slot_s / max_in_flight on average, the first after half that (the
    requests in flight are halfway through, on average). A route without recent times
    adds nothing to the wait (a lower bound: it may be fast); None when nothing at all
    is known to judge by."""
    need = ahead + 1 - (max_in_flight - in_flight)
    if need <= 0:
        return service_s
    turnover = slot_s if slot_s is not None else service_s
    if turnover is None:
        return None
    return (need - 0.5) * turnover / max(1, max_in_flight) + (service_s or 0.0)


@dataclass(frozen=True)
class BudgetPlan:
    """What a request runs as. `path`: the tiers tried, the asked one first; `refused`:
    the last of them is expected to miss the budget too and names no tier to degrade to."""

    tier: str
    path: tuple[str, ...]
    expected_s: float | None = None
    budget_s: float | None = None
    refused: bool = False

    @property
    def degraded(self) -> bool:
        return len(self.path) > 1 and not self.refused

    def header(self) -> str:
        """X-ModelFleet-Degraded's value, e.g. "slow production->preview"."""
        return "slow " + "->".join(self.path)

    def reason(self) -> str:
        """Why the request was refused, for the 429's message."""
        via = ""
        if len(self.path) > 1:
            via = f" (degraded via {' -> '.join(self.path[1:])}, which is slow too)"
        exp = self.expected_s or 0.0
        budget = self.budget_s or 0.0
        return (
            f"tier {self.path[0]}: expected time to answer {exp * 1000:.0f} ms{via} exceeds "
            f"the tier's latency budget of {budget * 1000:.0f} ms (RoutingPolicy "
            "spec.tiers[].latencyBudgetMs); retry later or ask for a faster tier"
        )


def plan_budget(
    tiers: PolicyTiers,
    asked: str,
    expected_for: Callable[[str], float | None],
    routable: Callable[[str], bool] = lambda _tier: True,
) -> BudgetPlan:
    """Judge the asked tier's expected time (`expected_for(tier)`: the time to answer if
    routed as that tier, None when unknown) against its latency budget; over it, follow
    degradeTo.slow (to tiers some route takes: `routable`) while the time still exceeds
    the budget. The budget stays the asked tier's: the client's expectation, whatever
    route serves it. An unknown time never refuses (no recent requests: nothing says
    the route is slow)."""
    t = tiers.by_name.get(asked)
    if t is None or t.budget_s is None:
        return BudgetPlan(asked, (asked,))
    budget = t.budget_s
    path = [asked]
    current = asked
    while True:
        exp = expected_for(current)
        if exp is None or exp <= budget:
            return BudgetPlan(current, tuple(path), exp, budget)
        nxt = tiers.degrade_target(current, "slow")
        # Targets have strictly lower priority (validated), so this ends; the guard
        # stands for a table built by hand.
        if nxt is None or nxt in path or nxt not in tiers.by_name or not routable(nxt):
            return BudgetPlan(current, tuple(path), exp, budget, refused=True)
        path.append(nxt)
        current = nxt
