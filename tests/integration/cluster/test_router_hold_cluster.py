"""The router's ModelPool watch on the real API server decides which pools scale from
zero: a request for a pool with spec.autoscaling.minReplicas 0 and no endpoint is held
(GET /v1/demand says so) until the policy's queue timeout, then 503 pool_starting with
Retry-After; once the pool is no longer autoscaled the router stops holding for it. The
pool is at 0 replicas and this router's demand reaches no operator, so no worker comes
whether or not another test's operator runs (the served case is the process test's and
the scale-to-zero e2e's)."""

from __future__ import annotations

import concurrent.futures
import json
import time
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


def _pool(min_replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": f"{G}/{V}",
        "kind": "ModelPool",
        "metadata": {"name": "cold"},
        "spec": {
            "model": {"family": "sd15", "source": "file:///models/none"},
            "modelNames": ["cold"],  # /v1/models tells when the router read the pool
            "autoscaling": {"minReplicas": min_replicas, "maxReplicas": 2},
            # Explicit: an operator running for another test must not start a worker.
            "replicas": 0,
        },
    }


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def _post(url: str) -> tuple[int, Any, Any, float]:
    body = json.dumps({"prompt": "a lighthouse"}).encode()
    req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    t0 = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.headers, json.loads(r.read()), time.monotonic() - t0
    except urllib.error.HTTPError as e:
        return e.code, e.headers, json.loads(e.read()), time.monotonic() - t0


def test_pools_autoscaled_to_zero_are_held_for(cluster: LocalCluster, namespace: str) -> None:
    custom = k8s.CustomObjectsApi(cluster.api)
    custom.create_namespaced_custom_object(G, V, namespace, "modelpools", _pool(0))
    pol = single_route_policy("images", "cold")
    pol["spec"]["admission"] = {"queueTimeoutMs": 2000}
    custom.create_namespaced_custom_object(G, V, namespace, "routingpolicies", pol)
    gen = "/v1/images/generations"
    with RouterProcess.kube(namespace, cluster.kubeconfig) as r:
        models = r.url + "/v1/models"
        wait_for(lambda: [m["id"] for m in _get(models)["data"]] == ["cold"], timeout=20,
                 interval=0.1, what="the router to read the ModelPool")  # fmt: skip
        with concurrent.futures.ThreadPoolExecutor(1) as ex:
            fut = ex.submit(_post, r.url + gen)
            demand = wait_for(
                lambda: _get(r.url + "/v1/demand")["pools"], until=lambda p: p, timeout=10,
                interval=0.05, what="the request held for pool cold",
            )  # fmt: skip
            assert demand == [
                {"namespace": namespace, "pool": "cold", "in_flight": 0, "queued": 0, "held": 1}
            ]
            status, headers, doc, seconds = fut.result(30)
        assert (status, doc["error"]["code"]) == (503, "pool_starting"), doc
        assert int(headers["Retry-After"]) >= 1 and seconds >= 2.0
        # Not autoscaled any more: a pool at zero stays there, so nothing is held for it.
        custom.patch_namespaced_custom_object(
            G, V, namespace, "modelpools", "cold", {"spec": {"autoscaling": None}}
        )

        def not_held() -> Any:
            got = _post(r.url + gen)
            return got if got[0] == 503 and got[2]["error"]["code"] == "no_endpoints" else None

        status, _, doc, seconds = wait_for(not_held, timeout=20, interval=0.2,
                                           what="503 no_endpoints at once")  # fmt: skip
        assert seconds < 1.5
