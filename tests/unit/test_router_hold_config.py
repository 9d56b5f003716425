"""Which pools the router holds requests for: ModelPools with spec.autoscaling.minReplicas 0
(as the API server sends them) and a static config's scaleFromZero."""

from __future__ import annotations

from typing import Any

import pytest

from modelfleet.router.config import ConfigError, parse_static_config
from modelfleet.router.kube import build_snapshot, scale_from_zero_pools
from modelfleet_dev.routerproc import policy


def _pool(name: str, spec: dict[str, Any], ns: str = "team") -> dict[str, Any]:
    return {
        "apiVersion": "modelfleet.io/v1alpha1",
        "kind": "ModelPool",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }


def test_only_pools_autoscaled_with_min_zero_scale_from_zero() -> None:
    pools = [
        _pool("zero", {"autoscaling": {"minReplicas": 0, "maxReplicas": 3}}),
        _pool("one", {"autoscaling": {"minReplicas": 1, "maxReplicas": 3}}),
        _pool("default-min", {"autoscaling": {"maxReplicas": 3}}),  # API default: 1
        _pool("fixed", {"replicas": 0}),  # scaled to 0 by hand: nobody brings it up
        _pool("zero", {"autoscaling": {"minReplicas": 0, "maxReplicas": 1}}, ns="other"),
        _pool("odd", {"autoscaling": None}),
        {"metadata": {"name": "nospec", "namespace": "team"}},
    ]
    assert scale_from_zero_pools(pools) == frozenset({("team", "zero"), ("other", "zero")})
    snap = build_snapshot({}, {}, {("team", p["metadata"]["name"]): p for p in pools[:3]})
    assert snap.scale_from_zero == frozenset({("team", "zero")})
    assert build_snapshot({}, {}).scale_from_zero == frozenset()


def test_static_config_scale_from_zero_applies_to_every_policy_namespace() -> None:
    a = policy([{"name": "all", "pool": "big"}])
    b = {**policy([{"name": "all", "pool": "big"}], name="b")}
    b["metadata"] = {"name": "b", "namespace": "team"}
    snap = parse_static_config({"policies": [a, b], "scaleFromZero": ["big"]})
    assert snap.scale_from_zero == frozenset({("default", "big"), ("team", "big")})
    assert parse_static_config({"policies": [a]}).scale_from_zero == frozenset()


def test_static_config_scale_from_zero_must_be_a_list_of_names() -> None:
    with pytest.raises(ConfigError, match="scaleFromZero"):
        parse_static_config({"policies": [policy([{"name": "all", "pool": "big"}])],
                             "scaleFromZero": "big"})  # fmt: skip
