"""In-memory fakes of the ports the controller shells take (kube.Objects, kube.Events,
TrafficRouter, MetricsProvider), for unit tests of the shells without a cluster."""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from kubernetes.client.rest import ApiException

from modelfleet.api.canary import ProviderSpec
from modelfleet.canary.ports import Measurement, MetricQuery, TrafficTarget

ObjKey = tuple[str, str, str]  # plural, namespace, name


@dataclass
class FakeObjects:
    """Custom objects with resourceVersions and optimistic concurrency on patch.

    `conflicts[(plural, ns, name)] = n`: the next n patches of that object fail with 409
    after someone else changed it (its resourceVersion moves, as on a real server)."""

    objects: dict[ObjKey, dict[str, Any]] = field(default_factory=dict)
    conflicts: dict[ObjKey, int] = field(default_factory=dict)
    failures: dict[ObjKey, Exception] = field(default_factory=dict)
    calls: list[tuple[str, ObjKey]] = field(default_factory=list)
    status_patches: list[tuple[ObjKey, dict[str, Any]]] = field(default_factory=list)
    patches: list[tuple[ObjKey, dict[str, Any]]] = field(default_factory=list)
    version: int = 0

    def put(self, plural: str, body: dict[str, Any]) -> dict[str, Any]:
        meta = body.setdefault("metadata", {})
        key = (plural, meta["namespace"], meta["name"])
        self.version += 1
        meta["resourceVersion"] = str(self.version)
        meta.setdefault("generation", 1)
        self.objects[key] = copy.deepcopy(body)
        return body

    def body(self, plural: str, namespace: str, name: str) -> dict[str, Any]:
        return self.objects[(plural, namespace, name)]

    async def get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        self.calls.append(("get", (plural, namespace, name)))
        obj = self.objects.get((plural, namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    async def patch(
        self, plural: str, namespace: str, name: str, patch: dict[str, Any]
    ) -> dict[str, Any]:
        key = (plural, namespace, name)
        self.calls.append(("patch", key))
        self.patches.append((key, copy.deepcopy(patch)))
        if key in self.failures:
            raise self.failures[key]
        obj = self.objects[key]
        if self.conflicts.get(key, 0) > 0:
            self.conflicts[key] -= 1
            self.version += 1  # someone else wrote meanwhile
            obj["metadata"]["resourceVersion"] = str(self.version)
            raise ApiException(status=409, reason="Conflict")
        wanted = (patch.get("metadata") or {}).get("resourceVersion")
        if wanted is not None and wanted != obj["metadata"]["resourceVersion"]:
            raise ApiException(status=409, reason="Conflict")
        for part in ("spec",):
            if part in patch:
                obj[part] = {**obj.get(part, {}), **copy.deepcopy(patch[part])}
        obj["metadata"]["generation"] += 1
        self.version += 1
        obj["metadata"]["resourceVersion"] = str(self.version)
        return copy.deepcopy(obj)

    async def patch_status(
        self, plural: str, namespace: str, name: str, status: dict[str, Any]
    ) -> None:
        key = (plural, namespace, name)
        self.calls.append(("patch_status", key))
        self.status_patches.append((key, copy.deepcopy(status)))
        if key in self.objects:
            self.objects[key]["status"] = copy.deepcopy(status)

    async def list(self, plural: str, namespace: str | None = None) -> list[dict[str, Any]]:
        self.calls.append(("list", (plural, namespace or "", "")))
        return [
            copy.deepcopy(o)
            for (p, ns, _), o in self.objects.items()
            if p == plural and namespace in (None, ns)
        ]


@dataclass
class FakeEvents:
    posted: list[tuple[str, str, str, str]] = field(default_factory=list)  # name, type, reason, msg

    def post(self, body: Any, type: str, reason: str, message: str) -> None:
        self.posted.append((body["metadata"]["name"], type, reason, message))

    def reasons(self) -> list[str]:
        return [reason for _, _, reason, _ in self.posted]


@dataclass
class FakeTraffic:
    """Records what the canary asked of its traffic router."""

    calls: list[tuple[str, TrafficTarget, int | None]] = field(default_factory=list)

    async def set_weight(self, target: TrafficTarget, weight: int) -> None:
        self.calls.append(("set_weight", target, weight))

    async def promote(self, target: TrafficTarget) -> None:
        self.calls.append(("promote", target, None))

    def weights(self) -> list[int | None]:
        return [w for verb, _, w in self.calls if verb == "set_weight"]


@dataclass
class FakeProvider:
    """Answers every query with the measurement given for its pool."""

    by_pool: dict[str, Measurement] = field(default_factory=dict)
    queries: list[MetricQuery] = field(default_factory=list)
    closed: bool = False

    async def measure(self, query: MetricQuery) -> Measurement:
        self.queries.append(query)
        return self.by_pool.get(query.pool, Measurement.failed("no data configured"))

    async def close(self) -> None:
        self.closed = True


@dataclass
class ProviderFactory:
    provider: FakeProvider = field(default_factory=FakeProvider)
    built: list[tuple[ProviderSpec, tuple[str, ...]]] = field(default_factory=list)

    def __call__(self, spec: ProviderSpec, router_urls: Sequence[str]) -> FakeProvider:
        self.built.append((spec, tuple(router_urls)))
        return self.provider


@dataclass
class Clock:
    now: dt.datetime = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


def pool(namespace: str, name: str, ready: bool = True, replicas: int = 1) -> dict[str, Any]:
    status: dict[str, Any] = (
        {"phase": "Ready", "readyReplicas": replicas}
        if ready
        else {"phase": "Pending", "readyReplicas": 0}
    )
    return {
        "apiVersion": "modelfleet.io/v1alpha1",
        "kind": "ModelPool",
        "metadata": {"namespace": namespace, "name": name},
        "spec": {"replicas": replicas},
        "status": status,
    }


def policy(namespace: str, name: str, routes: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "modelfleet.io/v1alpha1",
        "kind": "RoutingPolicy",
        "metadata": {"namespace": namespace, "name": name},
        "spec": {"routes": routes},
    }


def canary(namespace: str, name: str, **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "routingPolicy": "images",
        "route": "default",
        "stablePool": "stable",
        "candidatePool": "cand",
        "steps": [10, 50, 100],
        "interval": "10s",
        "scaleDownDelay": "0s",
        "analysis": {
            "minRequests": 10,
            "metrics": [{"name": "errors", "builtin": "error-rate", "max": 0.05}],
        },
    }
    base.update(spec)
    return {
        "apiVersion": "modelfleet.io/v1alpha1",
        "kind": "Canary",
        "metadata": {"namespace": namespace, "name": name},
        "spec": base,
    }
