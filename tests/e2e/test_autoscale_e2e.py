"""Scale to zero end to end (issue 16): a ModelPool with `minReplicas: 0` on the local
cluster. The real operator reads the real router's GET /v1/demand (start_fleet points
it at this router) and writes replicas through the pool's scale subresource; the
router (`--kube`) holds a request for the pool while it has no worker. The workers are
real text-drawing ones run by the local pod runner. Windows are shortened in the spec
so a whole idle -> zero -> cold start cycle takes seconds."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from conftest import LocalCluster
from modelfleet_dev.story import pool_manifest, single_route_policy
from polling import wait_for
from worker_fixtures import tiny_model_dir
from world import Fleet, start_fleet

pytestmark = [pytest.mark.e2e, pytest.mark.cluster, pytest.mark.timeout(300)]
NS = "e2e-autoscale"
POOL = "zero"
TEXT_IMAGE = "modelfleet.dev/textrender"  # the pod runner runs the text-drawing worker
BODY = b'{"prompt": "a sign saying \\"OPEN\\"", "size": "128x64"}'
AUTOSCALING = {
    "minReplicas": 0,
    "maxReplicas": 2,
    "target": 1,
    "stableWindow": "4s",
    "panicWindow": "2s",
    "scaleDownStabilization": "0s",
    "scaleToZeroDelay": "5s",
}
# The hold is bounded by the policy's queue timeout: room for a cold start on a busy host.
HOLD_MS = 60000


def _pool() -> dict[str, Any]:
    doc = pool_manifest(POOL, str(tiny_model_dir()))
    doc["spec"]["image"] = TEXT_IMAGE
    doc["spec"]["limits"]["maxResolution"] = 512
    doc["spec"]["autoscaling"] = AUTOSCALING
    del doc["spec"]["replicas"]  # the autoscaler's to write (starts at 1)
    return doc


def _policy() -> dict[str, Any]:
    doc = single_route_policy(POOL, POOL)
    doc["spec"]["admission"] = {"queueTimeoutMs": HOLD_MS}
    return doc


@pytest.fixture(scope="module")
def fleet(cluster: LocalCluster, operator: Any) -> Iterator[Fleet]:
    # No pool yet: the test creates it, so its whole life (and its autoscaler's first
    # sample) lies inside the test.
    with start_fleet(cluster, operator, NS, [], _policy()) as f:
        yield f


@dataclass(frozen=True)
class Reply:
    status: int
    seconds: float
    headers: dict[str, str]
    body: dict[str, Any]


def _send(fleet: Fleet) -> Reply:
    """One request through the router, with a client timeout past the hold bound."""
    req = urllib.request.Request(
        fleet.router.url + "/v1/images/generations",
        data=BODY,
        headers={"Content-Type": "application/json", "X-ModelFleet-Policy": POOL},
    )
    t0 = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=HOLD_MS / 1000 + 30) as resp:
            raw, code, h = resp.read(), resp.status, resp.headers
    except urllib.error.HTTPError as err:
        raw, code, h = err.read(), err.code, err.headers
    seconds = time.monotonic() - t0
    try:
        body = json.loads(raw)
    except ValueError:
        body = {"raw": raw[:200].decode(errors="replace")}
    return Reply(code, seconds, {k.lower(): v for k, v in h.items()}, body)


def _served_from_pool(reply: Reply, what: str) -> None:
    assert reply.status == 200, f"{what}: {reply.status} {reply.body}"
    assert reply.headers.get("x-modelfleet-pool") == POOL, (what, reply.headers)
    assert reply.headers.get("x-modelfleet-fallback") == "false", (what, reply.headers)
    assert reply.body["data"] and reply.body["data"][0]["b64_json"], what


def _holds(fleet: Fleet, outcome: str) -> float:
    return fleet.router_counter(
        "modelfleet_router_holds_total", namespace=NS, pool=POOL, outcome=outcome
    )


def _cold_starts(fleet: Fleet) -> float:
    return fleet.router_counter(
        "modelfleet_router_cold_start_seconds_count", namespace=NS, pool=POOL
    )


def _ready_reason(pool: dict[str, Any]) -> str:
    for cond in (pool.get("status") or {}).get("conditions") or []:
        if cond["type"] == "Ready" and cond["status"] == "True":
            return str(cond.get("reason", ""))
    return ""


def _at_zero(fleet: Fleet) -> dict[str, Any] | None:
    pool = fleet.pool(POOL)
    status = pool.get("status") or {}
    zero = pool["spec"]["replicas"] == 0 and not status.get("readyReplicas")
    return pool if zero and _ready_reason(pool) == "ScaledToZero" else None


def _pods(fleet: Fleet) -> list[Any]:
    sel = f"modelfleet.io/pool={POOL}"
    return list(fleet.core.list_namespaced_pod(NS, label_selector=sel).items)


def _scaled_reasons(fleet: Fleet) -> list[str]:
    """The autoscaler's reasons, oldest first, from the pool's Scaled Events."""
    events = [e for e in fleet.events("ModelPool", POOL) if e.reason == "Scaled"]
    events.sort(key=lambda e: e.metadata.creation_timestamp)
    return [str(e.message).split(":")[0] for e in events]


def test_min0_pool_scales_to_zero_after_idling_and_the_next_request_is_served_with_no_error(
    fleet: Fleet,
) -> None:
    t_start = time.monotonic()
    fleet.apply(_pool())
    # The first request may find the first worker still starting: held, then served.
    _served_from_pool(_send(fleet), "first request")

    # Idle: nothing in flight, queued or held -> 0 after scaleToZeroDelay.
    t_idle = time.monotonic()
    pool = wait_for(lambda: _at_zero(fleet), timeout=90, interval=0.3, what="pool at zero")
    idle_to_zero = time.monotonic() - t_idle
    assert pool["status"]["desiredReplicas"] == 0, pool["status"]
    assert pool["status"]["scaleReason"].startswith("ScaleToZero"), pool["status"]
    # Through the scale subresource, as kubectl scale and an HPA would write it.
    scale = fleet.custom.get_namespaced_custom_object_scale(
        "modelfleet.io", "v1alpha1", NS, "modelpools", POOL
    )
    assert scale["spec"].get("replicas", 0) == 0, scale  # autoscaling/v1 omits a 0
    # Really no worker left, and the router knows it (else the request is not a cold start).
    wait_for(lambda: not _pods(fleet), timeout=60, interval=0.3, what="no worker pods")
    wait_for(
        lambda: fleet.router_counter("modelfleet_router_endpoints", namespace=NS, pool=POOL),
        until=lambda n: n == 0,
        timeout=30,
        what="router has no endpoint for the pool",
    )
    served0, expired0, cold0 = (
        _holds(fleet, "served"),
        _holds(fleet, "expired"),
        _cold_starts(fleet),
    )

    # The request after idling: held through the cold start, served with no error.
    reply = _send(fleet)
    _served_from_pool(reply, "request to the pool at zero")
    assert _holds(fleet, "served") == served0 + 1, "the request was not held for the pool"
    assert _holds(fleet, "expired") == expired0
    assert _cold_starts(fleet) == cold0 + 1, "cold start not measured"
    pool = fleet.pool(POOL)
    assert pool["spec"]["replicas"] >= 1, pool["spec"]
    # The autoscaler went to zero for idling and came back for the held request.
    reasons = wait_for(
        lambda: _scaled_reasons(fleet),
        until=lambda r: "RequestsHeldAtZero" in r,
        timeout=10,
        what="Scaled Event RequestsHeldAtZero",
    )
    assert "ScaleToZero" in reasons, reasons
    last_up = max(i for i, r in enumerate(reasons) if r == "RequestsHeldAtZero")
    assert reasons.index("ScaleToZero") < last_up, reasons
    print(
        f"idle -> zero {idle_to_zero:.1f} s; request at zero served after {reply.seconds:.1f} s "
        f"(held through the cold start); whole cycle {time.monotonic() - t_start:.1f} s"
    )
