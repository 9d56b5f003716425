"""Kubernetes objects (as the API server sends them) -> router snapshot."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from modelfleet.router.kube import (
    build_snapshot,
    endpoints_from_slices,
    model_names_from_pools,
    policy_from_object,
)
from modelfleet.routing.models import PoolModels


def _policy(name: str, ns: str = "team", status: dict[str, Any] | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "modelfleet.io/v1alpha1",
        "kind": "RoutingPolicy",
        "metadata": {
            "name": name,
            "namespace": ns,
            "uid": "u",
            "resourceVersion": "12",
            "generation": 3,
            "managedFields": [{"manager": "kubectl"}],
        },
        "spec": {"routes": [{"name": "all", "pool": "big", "fallbacks": ["small"]}]},
    }
    if status is not None:
        obj["status"] = status
    return obj


def _slice(
    name: str,
    service: str | None,
    endpoints: list[tuple[str, bool | None]],
    ports: list[dict[str, Any]] | None = None,
    ns: str = "team",
) -> dict[str, Any]:
    labels = {"kubernetes.io/service-name": service} if service else {}
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "addressType": "IPv4",
        "ports": ports
        if ports is not None
        else [{"name": "http", "port": 8000, "protocol": "TCP"}],
        "endpoints": [
            {"addresses": [a], "conditions": {} if r is None else {"ready": r}}
            for a, r in endpoints
        ],
    }


def test_policy_without_status_routes() -> None:
    p = policy_from_object(_policy("main", status={"conditions": [], "somethingNew": 1}))
    assert p.metadata.name == "main" and p.metadata.namespace == "team"
    assert p.status is None


def test_policy_with_compiled_routes() -> None:
    status = {
        "observedGeneration": 3,
        "routes": [
            {
                "name": "all",
                "pools": [{"pool": "big", "weight": 90}, {"pool": "big2", "weight": 10}],
                "fallbacks": ["small"],
            }
        ],
    }
    p = policy_from_object(_policy("main", status=status))
    assert p.status is not None and p.status.routes[0].pools[1].weight == 10


def test_invalid_policy_raises_and_is_skipped_in_snapshot() -> None:
    bad = _policy("bad")
    bad["spec"]["routes"][0]["pool"] = "UPPER"
    with pytest.raises(ValidationError):
        policy_from_object(bad)
    snap = build_snapshot({("team", "bad"): bad, ("team", "main"): _policy("main")}, {})
    assert [p.name for p in snap.policies] == ["main"]


@pytest.mark.parametrize(
    ("slices", "expected"),
    [
        (
            [_slice("s1", "big", [("10.0.0.1", True), ("10.0.0.2", False), ("10.0.0.3", None)])],
            {("team", "big"): ("http://10.0.0.1:8000",)},
        ),
        # two slices of one service merge; sorted; duplicates collapse
        (
            [
                _slice("s1", "big", [("10.0.0.9", True)]),
                _slice("s2", "big", [("10.0.0.1", True), ("10.0.0.9", True)]),
            ],
            {("team", "big"): ("http://10.0.0.1:8000", "http://10.0.0.9:8000")},
        ),
        # the port must be named http
        (
            [_slice("s1", "big", [("10.0.0.1", True)], ports=[{"name": "metrics", "port": 9090}])],
            {("team", "big"): ()},
        ),
        (
            [
                _slice(
                    "s1",
                    "big",
                    [("10.0.0.1", True)],
                    ports=[{"name": "metrics", "port": 9090}, {"name": "http", "port": 8081}],
                )
            ],
            {("team", "big"): ("http://10.0.0.1:8081",)},
        ),
        # slices not owned by a service are ignored
        ([_slice("s1", None, [("10.0.0.1", True)])], {}),
        # IPv6 gets brackets; namespaces stay apart
        (
            [_slice("s1", "big", [("fd00::1", True)], ns="other")],
            {("other", "big"): ("http://[fd00::1]:8000",)},
        ),
    ],
)
def test_endpoints_from_slices(
    slices: list[dict[str, Any]], expected: dict[tuple[str, str], tuple[str, ...]]
) -> None:
    assert endpoints_from_slices(slices) == expected


def test_build_snapshot_orders_policies() -> None:
    snap = build_snapshot(
        {("b", "x"): _policy("x", "b"), ("a", "y"): _policy("y", "a")},
        {("a", "s"): _slice("s", "big", [("127.0.0.5", True)], ns="a")},
    )
    assert [p.key for p in snap.policies] == ["a/y", "b/x"]
    assert snap.endpoints == {("a", "big"): ("http://127.0.0.5:8000",)}


async def test_source_waits_for_both_lists_and_coalesces() -> None:
    """The event plumbing of KubeSource, without threads or a cluster."""
    import asyncio

    from modelfleet.router.config import Snapshot
    from modelfleet.router.kube import KubeSource

    got: list[Snapshot] = []
    src = KubeSource(got.append, api_client=object())
    src._loop = asyncio.get_running_loop()
    src._event("policy", "RESET", [_policy("main")])
    await asyncio.sleep(0)
    assert got == []  # endpoints not listed yet: no half-built snapshot
    src._event("slice", "RESET", [_slice("s1", "big", [("10.0.0.1", True)])])
    src._event("slice", "MODIFIED", _slice("s1", "big", [("10.0.0.1", True), ("10.0.0.2", True)]))
    await asyncio.sleep(0)
    assert len(got) == 1  # a burst becomes one rebuild
    assert got[0].endpoints[("team", "big")] == ("http://10.0.0.1:8000", "http://10.0.0.2:8000")
    src._event("slice", "DELETED", _slice("s1", "big", []))
    src._event("policy", "ADDED", _policy("second"))
    await asyncio.sleep(0)
    assert [p.name for p in got[-1].policies] == ["main", "second"]
    assert got[-1].endpoints == {}


def _pool(
    name: str, spec: dict[str, Any], ts: str | None = "2026-01-02T03:04:05Z"
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "team"}
    if ts is not None:
        meta["creationTimestamp"] = ts
    return {
        "apiVersion": "modelfleet.io/v1alpha1",
        "kind": "ModelPool",
        "metadata": meta,
        "spec": spec,
    }


def test_model_names_from_pools() -> None:
    pools = [
        _pool("sd3", {"modelNames": ["sd3.5-medium", "sd3"], "replicas": "not checked here"}),
        _pool("bare", {}),
        _pool("empty", {"modelNames": []}),
        _pool("nodate", {"modelNames": ["x"]}, ts=None),
    ]
    assert model_names_from_pools(pools) == {
        ("team", "sd3"): PoolModels(("sd3.5-medium", "sd3"), 1767323045),
        ("team", "nodate"): PoolModels(("x",), 0),
    }
    snap = build_snapshot({}, {}, {("team", "sd3"): pools[0]})
    assert snap.model_names[("team", "sd3")].names == ("sd3.5-medium", "sd3")
    assert build_snapshot({}, {}).model_names == {}


async def test_source_serves_before_pools_are_listed_then_adds_their_names() -> None:
    """A router whose RBAC lacks modelpools never lists them: it must still serve."""
    import asyncio

    from modelfleet.router.config import Snapshot
    from modelfleet.router.kube import KubeSource

    got: list[Snapshot] = []
    src = KubeSource(got.append, api_client=object())
    src._loop = asyncio.get_running_loop()
    src._event("policy", "RESET", [_policy("main")])
    src._event("slice", "RESET", [_slice("s1", "big", [("10.0.0.1", True)])])
    await asyncio.sleep(0)
    assert len(got) == 1 and got[0].model_names == {}
    src._event("pool", "RESET", [_pool("big", {"modelNames": ["sd3"]})])
    await asyncio.sleep(0)
    assert got[-1].model_names[("team", "big")].names == ("sd3",)
    src._event("pool", "MODIFIED", _pool("big", {"modelNames": ["sd3", "sd3.5"]}))
    await asyncio.sleep(0)
    assert got[-1].model_names[("team", "big")].names == ("sd3", "sd3.5")
    src._event("pool", "DELETED", _pool("big", {}))
    await asyncio.sleep(0)
    assert got[-1].model_names == {}
