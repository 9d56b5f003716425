"""RoutingPolicy controller: reference checks in context and the compiled
route table with canary weights, against the real local cluster."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from kubernetes import client as k8s

from api_cases import example
from conftest import LocalCluster, wait_for

pytestmark = pytest.mark.cluster
G, V = "modelfleet.io", "v1alpha1"


def _ready(cluster: LocalCluster, ns: str) -> dict[str, Any]:
    rp = k8s.CustomObjectsApi(cluster.api).get_namespaced_custom_object(
        G, V, ns, "routingpolicies", "images"
    )
    return next(
        (c for c in (rp.get("status") or {}).get("conditions", []) if c["type"] == "Ready"), {}
    )


def _pool(name: str) -> dict[str, Any]:
    doc = copy.deepcopy(example("modelpool-preview.yaml"))
    doc["metadata"] = {"name": name}
    doc["spec"]["model"]["source"] = "file:///models/x"
    # One replica each (kwok makes the pods Ready): a Canary starts only once both
    # of its pools are ready.
    doc["spec"]["replicas"] = 1
    return doc


def test_missing_pools_then_compiled_with_canary_weights(
    cluster: LocalCluster, namespace: str, operator: Any
) -> None:
    custom = k8s.CustomObjectsApi(cluster.api)
    custom.create_namespaced_custom_object(
        G, V, namespace, "routingpolicies", example("routingpolicy.yaml")
    )
    cond = wait_for(
        lambda: (c := _ready(cluster, namespace)) and c.get("reason") == "MissingPool" and c,
        timeout=30,
        what="Ready=False MissingPool",
    )
    assert cond["status"] == "False"
    assert "ModelPool 'typography'" in cond["message"]
    assert "spec.routes[0]" in cond["message"]

    for name in ("typography", "preview", "production", "production-v2"):
        custom.create_namespaced_custom_object(G, V, namespace, "modelpools", _pool(name))
    wait_for(
        lambda: _ready(cluster, namespace).get("status") == "True", timeout=30, what="policy Ready"
    )

    # The real canary controller starts it at steps[0] = 10%; its 5m interval keeps it
    # there for the rest of this test.
    custom.create_namespaced_custom_object(G, V, namespace, "canaries", example("canary.yaml"))

    def weights() -> dict[str, int] | None:
        rp = custom.get_namespaced_custom_object(G, V, namespace, "routingpolicies", "images")
        for route in (rp.get("status") or {}).get("routes", []):
            if route["name"] == "default" and len(route["pools"]) == 2:
                return {p["pool"]: p["weight"] for p in route["pools"]}
        return None

    assert wait_for(weights, timeout=90, what="canary weights compiled") == {
        "production": 90,
        "production-v2": 10,
    }
    canary = custom.get_namespaced_custom_object(G, V, namespace, "canaries", "production-v2")
    assert (canary["status"]["phase"], canary["status"]["canaryWeight"]) == ("Progressing", 10)
    events = k8s.CoreV1Api(cluster.api).list_namespaced_event(namespace).items
    assert any(e.reason == "MissingPool" and e.type == "Warning" for e in events)
