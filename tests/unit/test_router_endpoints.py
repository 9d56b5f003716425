"""Router Service URLs become one URL per ready router replica (the autoscaler sums
their demand); other URLs stay as given; a failed lookup falls back to the URL."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes.client.rest import ApiException

from modelfleet.controllers.routers import (
    RouterEndpoints,
    ServiceTarget,
    endpoint_urls,
    service_target,
)


@pytest.mark.parametrize(
    ("url", "target"),
    [
        ("http://mf-router.mf.svc:8080", ServiceTarget("http", "mf-router", "mf", 8080)),
        ("http://r.ns.svc.cluster.local", ServiceTarget("http", "r", "ns", 80)),
        ("https://r.ns.svc", ServiceTarget("https", "r", "ns", 443)),
        ("http://127.0.0.1:8080", None),
        ("http://router.example.com:8080", None),
        ("http://r.ns:8080", None),
    ],
)
def test_service_target(url: str, target: ServiceTarget | None) -> None:
    assert service_target(url) == target


SERVICE = {"spec": {"ports": [{"name": "http", "port": 8080, "targetPort": "http"}]}}


def slice_(port: int, *eps: tuple[str, bool | None], name: str = "http") -> dict[str, Any]:
    endpoints = []
    for ip, ready in eps:
        ep: dict[str, Any] = {"addresses": [ip]}
        if ready is not None:
            ep["conditions"] = {"ready": ready}
        endpoints.append(ep)
    return {"ports": [{"name": name, "port": port}], "endpoints": endpoints}


def test_endpoint_urls_ready_replicas_on_the_target_port() -> None:
    t = ServiceTarget("http", "r", "ns", 8080)
    slices = [
        slice_(9000, ("10.0.0.1", True), ("10.0.0.2", False), ("10.0.0.3", None)),
        slice_(9000, ("fd00::7", True)),
        slice_(9999, ("10.0.0.9", True), name="metrics"),
    ]
    assert endpoint_urls(t, SERVICE, slices) == [
        "http://10.0.0.1:9000",
        "http://10.0.0.3:9000",
        "http://[fd00::7]:9000",
    ]
    other_port = ServiceTarget("http", "r", "ns", 1234)
    assert endpoint_urls(other_port, SERVICE, slices) == []


async def test_resolve_expands_services_keeps_the_rest_and_caches() -> None:
    calls: list[ServiceTarget] = []
    now = [0.0]

    def lookup(t: ServiceTarget) -> list[str]:
        calls.append(t)
        return ["http://10.0.0.1:9000", "http://10.0.0.2:9000"]

    r = RouterEndpoints(
        ["http://r.ns.svc:8080", "http://127.0.0.1:18080"], lookup=lookup, clock=lambda: now[0]
    )
    want = ["http://10.0.0.1:9000", "http://10.0.0.2:9000", "http://127.0.0.1:18080"]
    assert await r.resolve() == want
    assert await r.resolve() == want and len(calls) == 1  # within refresh_s
    now[0] = 11
    await r.resolve()
    assert len(calls) == 2


async def test_resolve_falls_back_to_the_service_url() -> None:
    def failing(_: ServiceTarget) -> list[str]:
        raise ApiException(status=403, reason="Forbidden")

    url = "http://r.ns.svc:8080"
    assert await RouterEndpoints([url], lookup=failing).resolve() == [url]
    assert await RouterEndpoints([url], lookup=lambda _: []).resolve() == [url]
