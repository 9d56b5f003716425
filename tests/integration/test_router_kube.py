"""`modelfleet router --kube` against the local API server: RoutingPolicies and
EndpointSlices are watched, and changes reach the data path quickly."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from kubernetes import client as k8s

from conftest import LocalCluster
from modelfleet.router.fakeworker import FakeWorker
from modelfleet.router.testing import RouterProcess

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]


def _slice(name: str, service: str, port: int, ready: bool) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/service-name": service,
                # Not the endpointslice controller's: it leaves this slice alone.
                "endpointslice.kubernetes.io/managed-by": "test.modelfleet.io",
            },
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": ready}}],
    }


@pytest.fixture
async def fakes() -> AsyncIterator[tuple[FakeWorker, FakeWorker]]:
    a, b = FakeWorker("a"), FakeWorker("b")
    await a.start()
    await b.start()
    yield a, b
    await a.stop()
    await b.stop()


async def _until(check: Any, timeout_s: float, what: str) -> float:
    """Poll `check` (async); return the seconds it took."""
    t0 = time.monotonic()
    while not await check():
        assert time.monotonic() - t0 < timeout_s, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)
    return time.monotonic() - t0


async def test_router_follows_the_api(
    cluster: LocalCluster, namespace: str, fakes: tuple[FakeWorker, FakeWorker]
) -> None:
    a, b = fakes
    co = k8s.CustomObjectsApi(cluster.api)
    disco = k8s.DiscoveryV1Api(cluster.api)
    policy = {
        "apiVersion": "modelfleet.io/v1alpha1",
        "kind": "RoutingPolicy",
        "metadata": {"name": "main"},
        "spec": {"routes": [{"name": "all", "pool": "pool-a"}]},
    }
    co.create_namespaced_custom_object(
        "modelfleet.io", "v1alpha1", namespace, "routingpolicies", policy
    )
    args = ["--kube", "--namespace", namespace, "--kubeconfig", str(cluster.kubeconfig)]
    with RouterProcess(None, args) as r:
        async with aiohttp.ClientSession() as http:

            async def pool() -> str | None:
                async with http.post(
                    r.url + "/v1/images/generations", json={"prompt": "x"}
                ) as resp:
                    await resp.read()
                    return resp.headers.get("X-ModelFleet-Pool") if resp.status == 200 else None

            async def served_by(name: str) -> bool:
                return await pool() == name

            async def unserved() -> bool:
                return await pool() is None

            assert await unserved()  # no endpoints yet: 503
            disco.create_namespaced_endpoint_slice(
                namespace, _slice("pool-a-1", "pool-a", a.port, True)
            )
            took = await _until(lambda: served_by("pool-a"), 10, "pool-a endpoints")
            assert took < 2.0, f"endpoint change took {took:.2f}s"

            # The operator's compiled weights (status.routes) move traffic to pool-b.
            disco.create_namespaced_endpoint_slice(
                namespace, _slice("pool-b-1", "pool-b", b.port, True)
            )
            status = {
                "status": {
                    "routes": [
                        {
                            "name": "all",
                            "pools": [
                                {"pool": "pool-a", "weight": 0},
                                {"pool": "pool-b", "weight": 100},
                            ],
                        }
                    ]
                }
            }
            co.patch_namespaced_custom_object_status(
                "modelfleet.io", "v1alpha1", namespace, "routingpolicies", "main", status
            )
            took = await _until(lambda: served_by("pool-b"), 10, "weights to pool-b")
            assert took < 2.0, f"policy change took {took:.2f}s"

            # An endpoint going unready is dropped (pool-a keeps weight 0, so: nothing serves).
            disco.patch_namespaced_endpoint_slice(
                "pool-b-1", namespace, _slice("pool-b-1", "pool-b", b.port, False)
            )
            await _until(unserved, 10, "pool-b endpoint to go unready")
