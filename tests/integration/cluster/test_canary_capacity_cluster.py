"""Canary capacity on the local cluster (real API server, scheduler, kwok GPU nodes, the
real operator): a `capacity: shift` canary whose candidate cannot be placed (fake nodes of
its own GPU product with too few GPUs) pauses with reason CapacityStarved instead of
failing; a node added resumes it to Succeeded; all along the two pools never hold more
than the stable's replicas + 1 pods (sampled every 0.1 s). Analysis reads a Prometheus
stand-in (the HTTP API's instant-query format) that reports a healthy candidate."""

from __future__ import annotations

import copy
import json
import secrets
import threading
import time
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

from api_cases import example
from conftest import LocalCluster
from modelfleet.api.common import parse_time
from modelfleet_dev.bootstrap import node_manifest
from modelfleet_dev.story import single_route_policy
from polling import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]
G, V = "modelfleet.io", "v1alpha1"
STABLE_REPLICAS = 3


class PrometheusStandIn(BaseHTTPRequestHandler):
    """GET /api/v1/query: the request-count query (the minRequests gate) gives 50, any
    other query 0, as an instant vector (Prometheus' HTTP API wire format)."""

    def do_GET(self) -> None:
        url = urllib.parse.urlparse(self.path)
        query = urllib.parse.parse_qs(url.query).get("query", [""])[0]
        if url.path != "/api/v1/query" or not query:
            body = {"status": "error", "errorType": "bad_data", "error": "no query"}
            self._send(400, body)
            return
        value = "50" if "increase(modelfleet_router_upstream_requests_total" in query else "0"
        result = [{"metric": {}, "value": [time.time(), value]}]
        self._send(200, {"status": "success", "data": {"resultType": "vector", "result": result}})

    def _send(self, code: int, body: dict[str, Any]) -> None:
        raw = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def prometheus() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), PrometheusStandIn)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join(5)


@pytest.fixture
def product(cluster: LocalCluster) -> Iterator[tuple[str, list[str]]]:
    """A GPU product of this test alone and the names of its nodes (removed afterwards),
    so neighbours' pools neither take its GPUs nor give it theirs."""
    name, nodes = f"NVIDIA-J-{secrets.token_hex(3).upper()}", []
    yield name, nodes
    core = k8s.CoreV1Api(cluster.api)
    for node in nodes:
        try:
            core.delete_node(node)
        except ApiException as exc:
            if exc.status != 404:
                raise


def add_node(cluster: LocalCluster, product: str, nodes: list[str], gpus: int) -> None:
    name = f"{product.lower()}-{len(nodes)}"
    cidr = f"10.251.{240 + len(nodes)}.0/24"
    k8s.CoreV1Api(cluster.api).create_node(
        node_manifest(name, gpus=gpus, product=product, pod_cidr=cidr, zone="dev-a")
    )
    nodes.append(name)


def _pool(name: str, product: str, replicas: int) -> dict[str, Any]:
    doc = copy.deepcopy(example("modelpool-production.yaml"))
    doc["metadata"] = {"name": name}
    doc["spec"]["replicas"] = replicas
    doc["spec"]["gpu"] = {"count": 1, "product": product}
    return doc


def _canary(prometheus: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{G}/{V}",
        "kind": "Canary",
        "metadata": {"name": "shift"},
        "spec": {
            "routingPolicy": "shift",
            "route": "all",
            "stablePool": "stable",
            "candidatePool": "cand",
            "capacity": "shift",
            "steps": [34, 100],
            "interval": "2s",
            "progressDeadline": "10s",  # shorter than the starvation: it must not fail
            "analysis": {
                "provider": {"type": "prometheus", "address": prometheus},
                "metrics": [{"name": "ok", "query": "vector(0)", "max": 1}],
            },
        },
    }


class PodSampler:
    """Counts the namespace's pods (terminating ones too: they still hold GPUs)."""

    def __init__(self, core: k8s.CoreV1Api, namespace: str) -> None:
        self.core, self.ns, self.most, self.samples = core, namespace, 0, 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(0.1):
            try:
                pods = self.core.list_namespaced_pod(self.ns).items
            except Exception:
                continue
            self.samples += 1
            self.most = max(self.most, len(pods))


def test_shift_canary_starved_then_resumed_to_succeeded_within_stable_plus_one(
    cluster: LocalCluster,
    namespace: str,
    operator: Any,
    prometheus: str,
    product: tuple[str, list[str]],
) -> None:
    gpu, nodes = product
    custom = k8s.CustomObjectsApi(cluster.api)
    core = k8s.CoreV1Api(cluster.api)
    add_node(cluster, gpu, nodes, gpus=STABLE_REPLICAS)  # room for the stable alone
    custom.create_namespaced_custom_object(
        G, V, namespace, "modelpools", _pool("stable", gpu, STABLE_REPLICAS)
    )
    custom.create_namespaced_custom_object(G, V, namespace, "modelpools", _pool("cand", gpu, 0))
    custom.create_namespaced_custom_object(
        G,
        V,
        namespace,
        "routingpolicies",
        single_route_policy("shift", "stable"),
    )

    def pool(name: str) -> dict[str, Any]:
        obj: dict[str, Any] = custom.get_namespaced_custom_object(
            G, V, namespace, "modelpools", name
        )
        return obj

    wait_for(
        lambda: (pool("stable").get("status") or {}).get("readyReplicas") == STABLE_REPLICAS,
        timeout=60,
        interval=0.2,
        what="stable pool ready",
    )
    sampler = PodSampler(core, namespace)
    sampler.thread.start()
    try:
        custom.create_namespaced_custom_object(G, V, namespace, "canaries", _canary(prometheus))

        def canary() -> dict[str, Any]:
            obj: dict[str, Any] = custom.get_namespaced_custom_object(
                G, V, namespace, "canaries", "shift"
            )
            return obj.get("status") or {}

        def reason(st: dict[str, Any]) -> str:
            return next(
                (c["reason"] for c in st.get("conditions", []) if c["type"] == "Progressing"), ""
            )

        starved = wait_for(
            lambda: (st := canary()) and reason(st) == "CapacityStarved" and st,
            timeout=60,
            interval=0.2,
            what="canary paused CapacityStarved",
        )
        assert starved["phase"] == "Paused" and "short of GPUs" in starved["message"]
        assert pool("cand")["spec"]["replicas"] == 1, "shift sized the candidate to one"
        # Starved past its progressDeadline: still paused, never Failed or RolledBack.
        overdue = wait_for(
            lambda: (
                (st := canary()).get("phase") != "Paused"
                or (time.time() - parse_time(st["startedAt"]).timestamp() > 12 and st)
            ),
            timeout=40,
            interval=0.5,
            what="starved past the progress deadline",
        )
        assert overdue["phase"] == "Paused", overdue
        assert not overdue.get("history"), "no analysis while starved"

        add_node(cluster, gpu, nodes, gpus=STABLE_REPLICAS)  # capacity appears
        done = wait_for(
            lambda: (st := canary()).get("phase") in ("Succeeded", "RolledBack", "Failed") and st,
            timeout=120,
            interval=0.3,
            what="canary finished",
        )
        assert done["phase"] == "Succeeded", done.get("message")
        wait_for(
            lambda: (
                pool("stable")["spec"]["replicas"] == 0
                and (pool("cand").get("status") or {}).get("readyReplicas") == STABLE_REPLICAS
            ),
            timeout=30,
            interval=0.2,
            what="candidate full, stable scaled to 0",
        )
    finally:
        sampler.stop.set()
        sampler.thread.join(5)

    assert sampler.samples > 20
    assert sampler.most <= STABLE_REPLICAS + 1, f"{sampler.most} pods at once"
    assert done["capacity"]["fullReplicas"] == STABLE_REPLICAS
    events = core.list_namespaced_event(
        namespace, field_selector="involvedObject.kind=Canary,involvedObject.name=shift"
    ).items
    reasons = {e.reason for e in events}
    assert {"CapacityStarved", "Resumed", "Succeeded"} <= reasons, reasons
    assert not {"RolledBack", "AnalysisFailed", "ProgressDeadlineExceeded"} & reasons
