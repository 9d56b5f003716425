"""The router's ModelPool watch on the real API server: `spec.modelNames` reach GET
/v1/models and `model` routing, and a changed or deleted pool updates them without a
restart. No operator needed: the router only reads the objects."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest
from kubernetes import client as k8s

from conftest import LocalCluster
from modelfleet_dev.routerproc import RouterProcess
from modelfleet_dev.story import single_route_policy
from polling import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]
G, V = "modelfleet.io", "v1alpha1"


def _pool(name: str, names: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": f"{G}/{V}",
        "kind": "ModelPool",
        "metadata": {"name": name},
        "spec": {
            "model": {"family": "sd15", "source": "file:///models/none"},
            "replicas": 0,  # nothing to run: only the names matter here
            "modelNames": names,
        },
    }


def _get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _post(url: str, body: dict[str, Any]) -> tuple[int, Any, Any]:
    req = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, e.headers, json.loads(e.read())


def test_model_names_follow_the_pools(cluster: LocalCluster, namespace: str) -> None:
    custom = k8s.CustomObjectsApi(cluster.api)
    custom.create_namespaced_custom_object(G, V, namespace, "modelpools", _pool("sd3", ["sd3"]))
    custom.create_namespaced_custom_object(
        G, V, namespace, "routingpolicies", single_route_policy("images", "sd3")
    )
    with RouterProcess.kube(namespace, cluster.kubeconfig) as r:

        def ids() -> list[str]:
            return [m["id"] for m in _get(r.url + "/v1/models")[1]["data"]]

        wait_for(lambda: ids() == ["sd3"], timeout=20, interval=0.1)
        # The name routes to the pool (which has no endpoints: 503 naming it, not 404).
        status, h, doc = _post(r.url + "/v1/images/generations", {"prompt": "x", "model": "sd3"})
        assert (status, doc["error"]["code"], h["X-ModelFleet-Route"]) == (
            503,
            "no_endpoints",
            "all",
        )
        custom.patch_namespaced_custom_object(
            G, V, namespace, "modelpools", "sd3", {"spec": {"modelNames": ["sd3.5-medium"]}}
        )
        wait_for(lambda: ids() == ["sd3.5-medium"], timeout=20, interval=0.1)
        status, _, doc = _post(r.url + "/v1/images/generations", {"prompt": "x", "model": "sd3"})
        assert (status, doc["error"]["code"]) == (404, "model_not_found")
        assert "sd3.5-medium" in doc["error"]["message"]
        custom.delete_namespaced_custom_object(G, V, namespace, "modelpools", "sd3")
        wait_for(lambda: ids() == [], timeout=20, interval=0.1)
