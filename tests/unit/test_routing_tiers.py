"""Tiers from the policy (spec.tiers): compiling, a request's tier checked against them,
the expected time to answer, and the latency-budget plan (admit, degrade, refuse)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from api_cases import TIERS, example
from modelfleet.api.routingpolicy import RoutingPolicy, RoutingPolicySpec
from modelfleet.routing.intent import Intent, RequestError, parse_request
from modelfleet.routing.table import compile_policy, match_route
from modelfleet.routing.tiers import (
    PolicyTiers,
    Tier,
    expected_seconds,
    plan_budget,
    policy_tiers,
    resolve_tier,
    with_tier,
)


def _spec(**spec: Any) -> RoutingPolicySpec:
    return RoutingPolicySpec.model_validate({"routes": [{"name": "all", "pool": "p"}], **spec})


def test_empty_tiers_are_the_builtin_pair() -> None:
    t = policy_tiers(_spec())
    assert t.names == ("preview", "production") and t.default == "production"
    assert t.priority("production") > t.priority("preview")
    assert policy_tiers(_spec(defaultTier="preview")).default == "preview"


def test_declared_tiers_compile_with_budgets_and_degrade_targets() -> None:
    t = compile_policy(RoutingPolicy.model_validate(example(TIERS))).tiers
    assert t.names == ("production", "preview") and t.default == "production"
    spec = _spec(
        tiers=[
            {"name": "gold", "priority": 50, "latencyBudgetMs": 2200, "degradeTo": {"slow": "tin"}},
            {"name": "tin", "latencyBudgetMs": 800},
        ]
    )
    t = policy_tiers(spec)
    assert t.default == "gold"  # the first declared
    assert t.by_name["gold"] == Tier("gold", 50, 2.2, "tin", None)
    assert t.by_name["tin"] == Tier("tin", 0, 0.8)
    assert t.degrade_target("gold", "slow") == "tin" and t.degrade_target("gold", "budget") is None
    assert t.priority("nonesuch") == 50  # an unchecked name counts as the default tier


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"tiers": [{"name": "a"}, {"name": "a"}]},
            "spec.tiers[1].name 'a' is not unique",
        ),
        (
            {
                "tiers": [{"name": "a"}],
                "routes": [{"name": "r", "pool": "p", "match": {"tiers": ["preview"]}}],
            },
            "spec.routes[0].match.tiers[0] 'preview' is not a declared tier (a)",
        ),
        (
            {"defaultTier": "gold"},
            "spec.defaultTier 'gold' is not a declared tier (preview, production)",
        ),
        (
            {"tiers": [{"name": "a", "priority": 5, "degradeTo": {"slow": "b"}}]},
            "spec.tiers[0].degradeTo.slow 'b' is not a declared tier (a)",
        ),
        (
            {
                "tiers": [
                    {"name": "a", "priority": 5, "degradeTo": {"budget": "b"}},
                    {"name": "b", "priority": 5},
                ]
            },
            "spec.tiers[0].degradeTo.budget 'b' has priority 5, not below 5 of 'a'",
        ),
    ],
)
def test_invalid_tiers_name_the_field(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as err:
        _spec(**spec)
    assert message in err.value.errors()[0]["msg"]


_TIERS = PolicyTiers(
    {"production": Tier("production", 100), "preview": Tier("preview")}, "production"
)


@pytest.mark.parametrize(
    ("body", "headers", "tier", "param"),
    [
        (b'{"prompt": "x"}', {}, "production", None),  # the policy's default
        (b'{"prompt": "x", "tier": "preview"}', {}, "preview", "tier"),
        (b'{"prompt": "x"}', {"x-modelfleet-tier": "Preview"}, "preview", "X-ModelFleet-Tier"),
    ],
)
def test_resolve_tier(body: bytes, headers: dict[str, str], tier: str, param: str | None) -> None:
    p = resolve_tier(parse_request(body, headers), _TIERS, "ns/p")
    assert (p.intent.tier, p.tier_param) == (tier, param)


def test_default_tier_comes_from_the_policy() -> None:
    tiers = PolicyTiers({"fast": Tier("fast"), "slow": Tier("slow")}, "slow")
    assert resolve_tier(parse_request(b'{"prompt": "x"}', {}), tiers, "ns/p").intent.tier == "slow"


@pytest.mark.parametrize(
    ("body", "headers", "param"),
    [
        (b'{"prompt": "x", "tier": "gold"}', {}, "tier"),
        (b'{"prompt": "x"}', {"x-modelfleet-tier": "gold"}, "X-ModelFleet-Tier"),
    ],
)
def test_undeclared_tier_is_400_listing_the_tiers(
    body: bytes, headers: dict[str, str], param: str
) -> None:
    with pytest.raises(RequestError) as err:
        resolve_tier(parse_request(body, headers), _TIERS, "ns/p")
    e = err.value
    assert (e.status, e.code, e.param) == (400, "invalid_request", param)
    assert e.message == (
        "tier 'gold' is not a tier of RoutingPolicy ns/p; tier must be one of production, preview"
    )


def test_with_tier_routes_the_same_request_as_another_tier() -> None:
    spec = _spec(
        routes=[
            {"name": "fast", "pool": "small", "match": {"tiers": ["preview"]}},
            {"name": "default", "pool": "big"},
        ]
    )
    table = compile_policy(
        RoutingPolicy.model_validate({"metadata": {"name": "p"}, "spec": spec.wire()})
    )
    intent = Intent(tier="production", prompt="a fox", tags=frozenset({"t"}))
    assert (r := match_route(table.routes, intent)) is not None and r.name == "default"
    degraded = with_tier(intent, "preview")
    assert (degraded.tier, degraded.prompt, degraded.tags) == ("preview", "a fox", frozenset({"t"}))
    assert (r := match_route(table.routes, degraded)) is not None and r.name == "fast"
    assert with_tier(intent, "production") is intent


@pytest.mark.parametrize(
    ("ahead", "in_flight", "max_in_flight", "slot_s", "service_s", "expected"),
    [
        (0, 0, 4, 1.0, 0.5, 0.5),  # a free slot: the route's own time
        (2, 1, 4, 1.0, 0.5, 0.5),  # 3 free slots for 2 ahead and this one
        (0, 4, 4, 1.0, 0.5, 0.5 * 1.0 / 4 + 0.5),  # full: half a turnover to the first
        (3, 4, 4, 1.0, 0.5, 3.5 * 1.0 / 4 + 0.5),  # 3 ahead: the 4th slot to come back
        (9, 1, 1, 2.0, 2.0, 9.5 * 2.0 + 2.0),  # one slot: each ahead takes a whole request
        (0, 6, 4, 1.0, 0.5, 2.5 * 1.0 / 4 + 0.5),  # limits lowered below what is in flight
        (0, 4, 4, None, 0.5, 0.5 * 0.5 / 4 + 0.5),  # no policy-wide time: the route's
        (0, 4, 4, 1.0, None, 0.5 * 1.0 / 4),  # a route without times: the wait alone
        (0, 0, 4, 1.0, None, None),  # ...and with a free slot nothing is known
        (5, 4, 4, None, None, None),  # nothing recent: unknown
    ],
)
def test_expected_seconds(
    ahead: int,
    in_flight: int,
    max_in_flight: int,
    slot_s: float | None,
    service_s: float | None,
    expected: float | None,
) -> None:
    got = expected_seconds(ahead, in_flight, max_in_flight, slot_s, service_s)
    assert got == (None if expected is None else pytest.approx(expected))


_BUDGETS = PolicyTiers(
    {
        "production": Tier("production", 100, 2.2, on_slow="preview"),
        "standard": Tier("standard", 50, 1.0, on_slow="draft"),
        "preview": Tier("preview", 10, 0.8),
        "draft": Tier("draft", 0, None),
        "batch": Tier("batch", 0, None, on_slow="draft"),
    },
    "production",
)


@pytest.mark.parametrize(
    ("asked", "times", "tier", "path", "refused"),
    [
        ("production", {"production": 1.5}, "production", ("production",), False),
        ("production", {"production": 2.2}, "production", ("production",), False),  # at the budget
        (
            "production",
            {"production": 3.0, "preview": 1.0},
            "preview",
            ("production", "preview"),
            False,
        ),
        # held to the asked tier's budget (2.2 s), not preview's own 0.8 s:
        (
            "production",
            {"production": 3.0, "preview": 2.0},
            "preview",
            ("production", "preview"),
            False,
        ),
        (
            "production",
            {"production": 3.0, "preview": 2.5},
            "preview",
            ("production", "preview"),
            True,
        ),
        ("preview", {"preview": 0.9}, "preview", ("preview",), True),  # no degradeTo.slow
        ("preview", {"preview": 0.7}, "preview", ("preview",), False),
        ("production", {}, "production", ("production",), False),  # unknown: admitted
        ("draft", {"draft": 100.0}, "draft", ("draft",), False),  # no budget
        ("batch", {"batch": 100.0}, "batch", ("batch",), False),  # no budget: never degrades
        ("standard", {"standard": 2.0}, "draft", ("standard", "draft"), False),  # draft unknown
    ],
)
def test_plan_budget(
    asked: str, times: dict[str, float], tier: str, path: tuple[str, ...], refused: bool
) -> None:
    plan = plan_budget(_BUDGETS, asked, times.get)
    assert (plan.tier, plan.path, plan.refused) == (tier, path, refused)
    assert plan.degraded is (len(path) > 1 and not refused)


def test_plan_budget_does_not_degrade_to_an_unroutable_tier() -> None:
    plan = plan_budget(_BUDGETS, "production", {"production": 3.0}.get, lambda t: t != "preview")
    assert plan.refused and plan.path == ("production",)


def test_refusal_reason_and_header() -> None:
    plan = plan_budget(_BUDGETS, "production", {"production": 3.0, "preview": 2.5}.get)
    assert plan.reason() == (
        "tier production: expected time to answer 2500 ms (degraded via preview, which is slow "
        "too) exceeds the tier's latency budget of 2200 ms (RoutingPolicy "
        "spec.tiers[].latencyBudgetMs); retry later or ask for a faster tier"
    )
    ok = plan_budget(_BUDGETS, "production", {"production": 3.0, "preview": 1.0}.get)
    assert ok.header() == "slow production->preview"
