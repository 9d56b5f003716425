"""Autoscaling on the local cluster: the real operator reads the real router's
/v1/demand while clients load a ModelPool of real text-drawing workers (local pod
runner) through two routers, each carrying half the clients (the operator sums their
demand). min 1 max 4: under load the operator writes 4 replicas through the scale
subresource and 4 become Ready; after the load stops it goes back to 1. Windows are
shortened in the test's spec so the cycle takes seconds. Also: a router Service URL
resolves to its EndpointSlices' ready replicas (real API server), and a scale-up beyond
the fake nodes' GPUs is reported."""

from __future__ import annotations

import asyncio
import re
import signal
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client as k8s

from conftest import LocalCluster
from modelfleet_dev.routerproc import RouterProcess, free_port
from modelfleet_dev.story import Load, pool_manifest, single_route_policy
from polling import wait_for
from worker_fixtures import tiny_model_dir

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]
G, V, PLURAL = "modelfleet.io", "v1alpha1", "modelpools"
TEXT_IMAGE = "modelfleet.dev/textrender"  # the pod runner runs the text-drawing worker
POOL = "auto"
H100 = "NVIDIA-H100-80GB-HBM3"
AUTOSCALING = {
    "minReplicas": 1,
    "maxReplicas": 4,
    "target": 1,  # one request in flight per replica
    "stableWindow": "6s",
    "panicWindow": "2s",
    "scaleDownStabilization": "3s",
    "maxScaleDownStep": 4,
}


class TextLoad(Load):
    def body(self, client: int) -> bytes:
        return b'{"prompt": "a sign saying \\"OPEN\\"", "size": "128x64"}'


def _pool() -> dict[str, Any]:
    doc = pool_manifest(POOL, str(tiny_model_dir()))
    doc["spec"]["image"] = TEXT_IMAGE
    doc["spec"]["limits"]["maxResolution"] = 512
    doc["spec"]["batching"] = {"maxBatchSize": 1, "maxLatencyMs": 0}
    doc["spec"]["autoscaling"] = AUTOSCALING
    del doc["spec"]["replicas"]  # the autoscaler's to write
    return doc


@pytest.fixture
def world(
    cluster: LocalCluster, namespace: str, operator: Any
) -> Iterator[tuple[k8s.CustomObjectsApi, list[RouterProcess], str]]:
    custom = k8s.CustomObjectsApi(cluster.api)
    custom.create_namespaced_custom_object(G, V, namespace, PLURAL, _pool())
    custom.create_namespaced_custom_object(
        G, V, namespace, "routingpolicies", single_route_policy(POOL, POOL)
    )
    routers = [
        RouterProcess.kube(namespace, cluster.kubeconfig, port=free_port()) for _ in range(2)
    ]
    # The session operator steps aside for one that reads these routers' demand.
    operator.main.kill(signal.SIGTERM)
    metrics_port = free_port()
    op = operator.spawn(
        extra_args=[
            *(f"--router-url={r.url}" for r in routers),
            f"--metrics-port={metrics_port}",
            "--metrics-host=127.0.0.1",
        ]
    )
    try:
        wait_for(op.has_led, timeout=60, interval=0.2, what="autoscaling operator leads")
        with routers[0], routers[1]:
            yield custom, routers, f"http://127.0.0.1:{metrics_port}/metrics"
    finally:
        op.kill(signal.SIGTERM)
        operator.main = None
        operator.ensure_running()


def _pool_now(custom: k8s.CustomObjectsApi, ns: str) -> dict[str, Any]:
    out: dict[str, Any] = custom.get_namespaced_custom_object(G, V, ns, PLURAL, POOL)
    return out


def _at(custom: k8s.CustomObjectsApi, ns: str, replicas: int) -> dict[str, Any] | None:
    pool = _pool_now(custom, ns)
    status = pool.get("status") or {}
    if pool["spec"]["replicas"] == replicas and status.get("readyReplicas") == replicas:
        return pool
    return None


def test_min1_max4_scales_to_4_under_load_and_back(
    world: tuple[k8s.CustomObjectsApi, list[RouterProcess], str], namespace: str
) -> None:
    custom, routers, metrics_url = world
    wait_for(lambda: _at(custom, namespace, 1), timeout=120, interval=0.5, what="1 ready")
    seen: set[int] = set()

    def sample(want: int) -> dict[str, Any] | None:
        pool = _pool_now(custom, namespace)
        seen.add(pool["spec"]["replicas"])
        return _at(custom, namespace, want)

    with (
        TextLoad(routers[0].url, POOL, clients=5) as a,
        TextLoad(routers[1].url, POOL, clients=5) as b,
    ):
        t0 = time.monotonic()
        up = wait_for(lambda: sample(4), timeout=120, interval=0.3, what="4 replicas ready")
        up_s = time.monotonic() - t0
        failed = a.failed + b.failed
    assert not failed, f"requests failed while scaling up: {failed[:10]}"
    assert a.ok > 0 and b.ok > 0
    assert max(seen) == 4, seen  # never above maxReplicas
    status = up["status"]
    assert status["desiredReplicas"] == 4
    assert status["scaleReason"].split(":")[0] in ("Panic", "StableWindow"), status
    assert status["lastScaleTime"]
    # Written through the scale subresource (what kubectl scale and an HPA use).
    scale = custom.get_namespaced_custom_object_scale(G, V, namespace, PLURAL, POOL)
    assert scale["spec"]["replicas"] == 4
    managers = [
        m for m in up["metadata"].get("managedFields") or [] if m.get("subresource") == "scale"
    ]
    assert managers, "no field manager wrote spec.replicas through /scale"

    t1 = time.monotonic()
    wait_for(lambda: sample(1), timeout=90, interval=0.3, what="back to 1 replica")
    down_s = time.monotonic() - t1
    assert min(seen) == 1
    # kubectl get mp's Desired column follows: no stale 4 written back by the pool controller.
    wait_for(
        lambda: (_pool_now(custom, namespace).get("status") or {}).get("desiredReplicas") == 1,
        timeout=10,
        interval=0.2,
        what="status.desiredReplicas 1",
    )
    events = k8s.CoreV1Api(router_api(custom)).list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={POOL},reason=Scaled"
    )
    assert events.items, "no Scaled Event"
    with urllib.request.urlopen(metrics_url, timeout=5) as resp:
        text = resp.read().decode()
    want = {"namespace": namespace, "pool": POOL}

    def metric(name: str, **extra: str) -> float:
        total = 0.0
        for line in text.splitlines():
            head, _, value = line.rpartition(" ")
            if not head.startswith(name + "{"):
                continue
            labels = dict(re.findall(r'(\w+)="([^"]*)"', head))
            if {**want, **extra}.items() <= labels.items():
                total += float(value)
        return total

    assert metric("modelfleet_autoscaler_desired_replicas") == 1
    assert metric("modelfleet_autoscaler_scale_changes_total", direction="up") >= 1
    assert metric("modelfleet_autoscaler_scale_changes_total", direction="down") >= 1
    print(f"load step -> 4 ready: {up_s:.1f} s; load stop -> 1: {down_s:.1f} s")


def router_api(custom: k8s.CustomObjectsApi) -> k8s.ApiClient:
    return custom.api_client


def _condition(pool: dict[str, Any], type_: str) -> dict[str, Any]:
    for cond in (pool.get("status") or {}).get("conditions") or []:
        if cond["type"] == type_:
            return dict(cond)
    return {}


def test_scale_up_blocked_by_capacity_is_reported_and_clears(
    cluster: LocalCluster, namespace: str, operator: Any
) -> None:
    """A scale-up (here through /scale, as kubectl scale does) beyond the fake nodes'
    GPUs: status.gpus shows requested vs schedulable, CapacityStarved turns True with a
    Warning ScaleUpBlocked Event; scaling back within capacity clears it."""
    custom = k8s.CustomObjectsApi(cluster.api)
    schedulable = sum(
        int((n.status.allocatable or {}).get("nvidia.com/gpu", "0"))
        for n in k8s.CoreV1Api(cluster.api).list_node().items
        if (n.metadata.labels or {}).get("nvidia.com/gpu.product") == H100
        and not n.spec.unschedulable
    )
    per_pod = 8
    fits, too_many = schedulable // per_pod, schedulable // per_pod + 1
    assert fits >= 1
    doc = {
        "apiVersion": f"{G}/{V}",
        "kind": "ModelPool",
        "metadata": {"name": "big"},
        "spec": {
            "model": {"source": "s3://models/big"},
            "replicas": 1,
            "gpu": {"count": per_pod, "product": H100},
        },
    }
    custom.create_namespaced_custom_object(G, V, namespace, PLURAL, doc)

    def get() -> dict[str, Any]:
        out: dict[str, Any] = custom.get_namespaced_custom_object(G, V, namespace, PLURAL, "big")
        return out

    wait_for(lambda: (get().get("status") or {}).get("phase") == "Ready", timeout=60, what="Ready")
    custom.patch_namespaced_custom_object_scale(
        G, V, namespace, PLURAL, "big", {"spec": {"replicas": too_many}},
        _content_type="application/merge-patch+json",
    )  # fmt: skip

    def starved() -> dict[str, Any] | None:
        pool = get()
        cond = _condition(pool, "CapacityStarved")
        return pool if cond.get("status") == "True" else None

    pool = wait_for(starved, timeout=60, interval=0.3, what="CapacityStarved=True")
    cond = _condition(pool, "CapacityStarved")
    assert cond["reason"] == "InsufficientGPUs" and H100 in cond["message"]
    [gpus] = pool["status"]["gpus"]
    assert gpus["product"] == H100
    assert gpus["requested"] == too_many * per_pod and gpus["schedulable"] == schedulable
    events = k8s.CoreV1Api(cluster.api)
    wait_for(
        lambda: any(
            e.reason == "ScaleUpBlocked" and e.type == "Warning"
            for e in events.list_namespaced_event(
                namespace, field_selector="involvedObject.name=big"
            ).items
        ),
        timeout=20,
        what="Warning ScaleUpBlocked Event",
    )

    custom.patch_namespaced_custom_object_scale(
        G, V, namespace, PLURAL, "big", {"spec": {"replicas": fits}},
        _content_type="application/merge-patch+json",
    )  # fmt: skip

    def cleared() -> dict[str, Any] | None:
        pool = get()
        cond = _condition(pool, "CapacityStarved")
        ok = cond.get("status") == "False" and cond.get("reason") == "CapacityAvailable"
        return pool if ok and (pool.get("status") or {}).get("phase") == "Ready" else None

    pool = wait_for(cleared, timeout=60, interval=0.3, what="CapacityStarved=False, Ready")
    assert pool["status"]["gpus"][0]["requested"] == fits * per_pod


def test_router_service_url_resolves_to_its_ready_endpoints(
    cluster: LocalCluster, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the operator does with the chart's --router-url (the router Service): one URL
    per ready replica, read from the real API server's EndpointSlices."""
    from modelfleet.controllers import kube
    from modelfleet.controllers.routers import RouterEndpoints

    core, disc = k8s.CoreV1Api(cluster.api), k8s.DiscoveryV1Api(cluster.api)
    core.create_namespaced_service(
        namespace,
        {
            "metadata": {"name": "routers"},
            "spec": {"ports": [{"name": "http", "port": 8080, "targetPort": "http"}]},
        },
    )
    endpoints = [("192.0.2.10", True), ("192.0.2.11", True), ("192.0.2.12", False)]
    disc.create_namespaced_endpoint_slice(
        namespace,
        {
            "metadata": {"name": "routers-a", "labels": {"kubernetes.io/service-name": "routers"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 18080, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": [ip], "conditions": {"ready": ready}} for ip, ready in endpoints
            ],
        },
    )
    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))
    kube.api_client.cache_clear()
    try:
        urls = [f"http://routers.{namespace}.svc:8080", "http://127.0.0.1:9"]
        resolved = asyncio.run(RouterEndpoints(urls).resolve())
    finally:
        kube.api_client.cache_clear()
    assert resolved == ["http://127.0.0.1:9", "http://192.0.2.10:18080", "http://192.0.2.11:18080"]
