"""`model` selects the route: a table of policies, names and requests."""

from __future__ import annotations

import re

import pytest

from modelfleet.routing.intent import Intent
from modelfleet.routing.models import (
    ModelNotFound,
    PoolModels,
    available,
    model_object,
    models_list,
    route_for,
)
from modelfleet.routing.table import PolicyTable, RouteEntry, WeightedPool


def _route(
    name: str,
    pools: dict[str, int],
    tiers: tuple[str, ...] = (),
    prompt: str | None = None,
    fallbacks: tuple[str, ...] = (),
) -> RouteEntry:
    return RouteEntry(
        name=name,
        tiers=frozenset(tiers),
        tags=frozenset(),
        patterns=(re.compile(prompt),) if prompt else (),
        headers=(),
        pools=tuple(WeightedPool(p, w) for p, w in pools.items()),
        fallbacks=fallbacks,
    )


POLICY = PolicyTable(
    "team",
    "main",
    (
        _route("logos", {"sd3-typo": 100}, prompt="logo"),
        _route("preview", {"sd3-turbo": 100}, tiers=("preview",)),
        # A live canary: stable at 90, candidate at 10; a 0% pool serves nothing yet.
        _route("all", {"sd3": 90, "sd3-next": 10, "sd4": 0}, fallbacks=("flux",)),
    ),
)
NAMES = {
    ("team", "sd3-typo"): PoolModels(("sd3.5-medium",), 300),
    ("team", "sd3-turbo"): PoolModels(("sd3.5-turbo",), 100),
    ("team", "sd3"): PoolModels(("sd3.5-medium", "sd3"), 200),
    ("team", "sd3-next"): PoolModels(("sd3.5-medium",), 400),
    ("team", "sd4"): PoolModels(("sd4",), 50),
    ("team", "flux"): PoolModels(("flux",), 10),  # fallback only: not selectable
    ("other", "sd3-turbo"): PoolModels(("elsewhere",), 1),  # another namespace
}


@pytest.mark.parametrize(
    ("model", "tier", "prompt", "route"),
    [
        (None, "production", "a fox", "all"),  # intent routing as before
        (None, "preview", "a fox", "preview"),
        (None, "production", "a logo", "logos"),
        ("sd3.5-turbo", "production", "a fox", "preview"),  # the name wins over the tier
        ("sd3", "preview", "a fox", "all"),
        ("sd3.5-medium", "production", "a fox", "all"),  # two routes serve it: match refines
        ("sd3.5-medium", "production", "a logo", "logos"),
        ("sd3.5-medium", "preview", "a fox", "all"),  # the catch-all among those serving
        ("sd3.5-turbo", "production", "a logo", "preview"),  # the only one serving it
    ],
)
def test_route_for(model: str | None, tier: str, prompt: str, route: str) -> None:
    got = route_for(POLICY, Intent(tier=tier, prompt=prompt), model, NAMES)
    assert isinstance(got, RouteEntry) and got.name == route


@pytest.mark.parametrize("model", ["sd4", "flux", "elsewhere", "dall-e-3"])
def test_unknown_model_lists_what_is_served(model: str) -> None:
    got = route_for(POLICY, Intent(), model, NAMES)
    assert isinstance(got, ModelNotFound)
    assert got.available == ("sd3", "sd3.5-medium", "sd3.5-turbo")
    assert repr(model) in got.message and "sd3.5-turbo" in got.message


def test_no_serving_route_matches_first_serving_wins() -> None:
    policy = PolicyTable(
        "team",
        "p",
        (
            _route("pre", {"sd3-turbo": 100}, tiers=("preview",)),
            _route("logo", {"sd3": 100}, prompt="logo"),
        ),
    )
    got = route_for(policy, Intent(tier="production", prompt="a fox"), "sd3.5-medium", NAMES)
    assert isinstance(got, RouteEntry) and got.name == "logo"


def test_no_route_without_model_is_none() -> None:
    policy = PolicyTable("team", "p", (_route("pre", {"a": 100}, tiers=("preview",)),))
    assert route_for(policy, Intent(tier="production"), None, NAMES) is None
    assert available(policy, NAMES) == []


def test_policy_without_any_names_routes_by_intent() -> None:
    """A fleet that never named its models keeps serving SDK clients that send one."""
    policy = PolicyTable(
        "team", "p", (_route("pre", {"a": 100}, tiers=("preview",)), _route("all", {"b": 100}))
    )
    got = route_for(policy, Intent(tier="preview"), "gpt-image-1", {})
    assert isinstance(got, RouteEntry) and got.name == "pre"
    assert route_for(policy, Intent(), "gpt-image-1", NAMES) is not None  # a, b: no names


def test_models_list_shape_and_dates() -> None:
    doc = models_list(POLICY, NAMES)
    assert doc["object"] == "list"
    assert doc["data"] == [
        {"id": "sd3", "object": "model", "created": 200, "owned_by": "modelfleet"},
        # the oldest pool serving the name dates it
        {"id": "sd3.5-medium", "object": "model", "created": 200, "owned_by": "modelfleet"},
        {"id": "sd3.5-turbo", "object": "model", "created": 100, "owned_by": "modelfleet"},
    ]
    assert model_object(POLICY, NAMES, "sd3.5-turbo") == doc["data"][2]
    assert model_object(POLICY, NAMES, "sd4") is None


def test_candidate_taking_over_brings_its_names() -> None:
    after = PolicyTable("team", "main", (_route("all", {"sd3": 0, "sd4": 100}),))
    assert available(after, NAMES) == ["sd4"]
    got = route_for(after, Intent(), "sd3", NAMES)
    assert isinstance(got, ModelNotFound) and got.available == ("sd4",)
