"""Route table: compilation from spec + status, matching, policy selection, weighted pool
choice, endpoint choice and the pool ladder."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from modelfleet.api.routingpolicy import RoutingPolicy
from modelfleet.routing.intent import Intent
from modelfleet.routing.table import (
    WeightedPool,
    choose_endpoint,
    choose_pool,
    compile_policy,
    match_route,
    pool_ladder,
    select_policy,
)


def _policy(routes: list[dict[str, Any]], status: dict[str, Any] | None = None) -> RoutingPolicy:
    doc: dict[str, Any] = {
        "apiVersion": "modelfleet.io/v1alpha1",
        "kind": "RoutingPolicy",
        "metadata": {"name": "main", "namespace": "team"},
        "spec": {"routes": routes},
    }
    if status:
        doc["status"] = status
    return RoutingPolicy.model_validate(doc)


ROUTES = [
    {"name": "text", "match": {"promptPatterns": ["\\bsign\\b", "typograph"]}, "pool": "typo"},
    {"name": "fast", "match": {"tiers": ["preview"]}, "pool": "small", "fallbacks": ["big"]},
    {"name": "photo", "match": {"tags": ["photoreal", "hq"]}, "pool": "photo"},
    {"name": "beta", "match": {"headers": {"X-Beta": "1"}}, "pool": "beta"},
    {"name": "all", "pool": "big", "fallbacks": ["small", "typo"]},
]
TABLE = compile_policy(_policy(ROUTES))


@pytest.mark.parametrize(
    ("tier", "tags", "prompt", "headers", "route"),
    [
        ("production", [], "a cat", {}, "all"),
        ("preview", [], "a cat", {}, "fast"),
        ("preview", [], "a SIGN saying hi", {}, "text"),  # case-insensitive, first wins
        ("production", [], "Typography poster", {}, "text"),
        ("production", [], "designing", {}, "all"),  # \b keeps "sign" out of "designing"
        ("production", ["photoreal"], "x", {}, "all"),  # all tags needed
        ("production", ["hq", "photoreal", "extra"], "x", {}, "photo"),
        ("production", [], "x", {"x-beta": "1"}, "beta"),
        ("production", [], "x", {"x-beta": "2"}, "all"),
    ],
)
def test_match(
    tier: str, tags: list[str], prompt: str, headers: dict[str, str], route: str
) -> None:
    intent = Intent(tier=tier, tags=frozenset(tags), prompt=prompt, headers=headers)
    r = match_route(TABLE.routes, intent)
    assert r is not None and r.name == route


def test_no_match_without_catch_all() -> None:
    t = compile_policy(_policy(ROUTES[:2]))
    assert match_route(t.routes, Intent(prompt="a cat")) is None


def test_catch_all_written_first_still_applies_last() -> None:
    t = compile_policy(_policy([ROUTES[4], ROUTES[1]]))
    r = match_route(t.routes, Intent(tier="preview", prompt="x"))
    assert r is not None and r.name == "fast"


def test_compile_without_status_uses_spec_pool_at_100() -> None:
    r = TABLE.routes[1]
    assert r.pools == (WeightedPool("small", 100),)
    assert r.fallbacks == ("big",)
    assert TABLE.namespace == "team" and TABLE.key == "team/main"
    assert TABLE.admission.max_in_flight == 64


def test_compile_with_status_uses_compiled_weights() -> None:
    status = {
        "routes": [
            {
                "name": "all",
                "pools": [{"pool": "big", "weight": 70}, {"pool": "big-v2", "weight": 30}],
                "fallbacks": ["small"],
            }
        ]
    }
    t = compile_policy(_policy(ROUTES, status))
    by_name = {r.name: r for r in t.routes}
    assert by_name["all"].pools == (WeightedPool("big", 70), WeightedPool("big-v2", 30))
    assert by_name["all"].fallbacks == ("small",)
    assert by_name["fast"].pools == (WeightedPool("small", 100),)  # not compiled: spec


def test_select_policy() -> None:
    other = compile_policy(
        RoutingPolicy.model_validate(
            {"metadata": {"name": "other"}, "spec": {"routes": [{"name": "a", "pool": "p"}]}}
        )
    )
    ps = (TABLE, other)
    assert select_policy(ps, None) is TABLE
    assert select_policy(ps, "other") is other
    assert select_policy(ps, "default/other") is other
    assert select_policy(ps, "missing") is None
    assert select_policy((), None) is None


@pytest.mark.parametrize(
    ("weights", "x", "expected"),
    [
        ([("a", 100)], 0.0, "a"),
        ([("a", 30), ("b", 70)], 0.0, "a"),
        ([("a", 30), ("b", 70)], 0.2999, "a"),
        ([("a", 30), ("b", 70)], 0.3, "b"),
        ([("a", 30), ("b", 70)], 0.99999999, "b"),
        ([("a", 0), ("b", 100)], 0.0, "b"),
        ([("a", 10), ("b", 0)], 0.999, "a"),
        ([("a", 0)], 0.5, None),
        ([], 0.5, None),
    ],
)
def test_choose_pool_table(weights: list[tuple[str, int]], x: float, expected: str | None) -> None:
    pools = [WeightedPool(p, w) for p, w in weights]
    assert choose_pool(pools, lambda: x) == expected


@pytest.mark.parametrize("split", [(30, 70), (10, 90), (1, 99), (50, 50), (33, 67)])
def test_choose_pool_statistics(split: tuple[int, int]) -> None:
    rng = random.Random(1234)
    pools = [WeightedPool("stable", split[0]), WeightedPool("canary", split[1])]
    n = 20000
    counts = Counter(choose_pool(pools, rng.random) for _ in range(n))
    p = split[0] / 100
    sigma = (n * p * (1 - p)) ** 0.5
    assert abs(counts["stable"] - n * p) < 4 * sigma


@pytest.mark.parametrize(
    ("chosen", "pools", "fallbacks", "ladder"),
    [
        ("big", [("big", 100)], ["small"], ("big", "small")),
        ("canary", [("stable", 90), ("canary", 10)], ["small"], ("canary", "stable", "small")),
        ("stable", [("stable", 90), ("canary", 10)], ["stable"], ("stable", "canary")),
        ("a", [("a", 100), ("b", 0)], [], ("a",)),
        (None, [], ["x", "y", "x"], ("x", "y")),
    ],
)
def test_pool_ladder(
    chosen: str | None,
    pools: list[tuple[str, int]],
    fallbacks: list[str],
    ladder: tuple[str, ...],
) -> None:
    r = TABLE.routes[0]
    from dataclasses import replace

    r = replace(r, pools=tuple(WeightedPool(p, w) for p, w in pools), fallbacks=tuple(fallbacks))
    assert pool_ladder(r, chosen) == ladder


@pytest.mark.parametrize(
    ("outstanding", "exclude", "ejected", "x", "expected"),
    [
        ({}, set(), set(), 0.0, "a"),
        ({}, set(), set(), 0.99, "c"),
        ({"a": 2, "b": 1, "c": 1}, set(), set(), 0.0, "b"),
        ({"a": 2, "b": 1, "c": 1}, set(), set(), 0.7, "c"),
        ({"a": 2, "b": 1, "c": 1}, {"b", "c"}, set(), 0.0, "a"),
        ({}, {"a", "b", "c"}, set(), 0.0, None),
        ({"b": 5, "c": 5}, set(), {"a"}, 0.0, "b"),  # ejected idle endpoint avoided
        ({}, {"b", "c"}, {"a"}, 0.0, "a"),  # ...unless it is all that is left
    ],
)
def test_choose_endpoint(
    outstanding: dict[str, int],
    exclude: set[str],
    ejected: set[str],
    x: float,
    expected: str | None,
) -> None:
    assert choose_endpoint(["a", "b", "c"], outstanding, exclude, ejected, lambda: x) == expected


def test_choose_endpoint_spreads_ties() -> None:
    rng = random.Random(7)
    counts = Counter(
        choose_endpoint(["a", "b", "c", "d"], {}, set(), set(), rng.random) for _ in range(8000)
    )
    assert all(1700 < counts[e] < 2300 for e in "abcd")
