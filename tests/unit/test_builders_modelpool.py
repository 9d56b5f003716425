"""Table tests for the pure ModelPool builders and status decisions."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from modelfleet.api.modelpool import ModelPool
from modelfleet.builders import modelpool as build
from modelfleet.builders import poolstatus as ps

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def pool(**spec: Any) -> ModelPool:
    base: dict[str, Any] = {"model": {"source": "file:///models/tiny", "family": "sd15"}}
    base.update(spec)
    return ModelPool.model_validate(
        {
            "kind": "ModelPool",
            "metadata": {"name": "p", "namespace": "ns", "uid": "u1", "generation": 3},
            "spec": base,
        }
    )


@pytest.mark.parametrize(
    ("source", "uri", "pvc", "fetch"),
    [
        ("file:///m/tiny", "file:///m/tiny", False, False),
        ("pvc://models/sdxl", "file:///models/sdxl", True, False),
        ("hf://org/repo", "hf://org/repo", False, True),
        ("s3://bucket/prefix", "s3://bucket/prefix", False, True),
    ],
)
def test_model_location(source: str, uri: str, pvc: bool, fetch: bool) -> None:
    got_uri, volume, needs_fetch = build.model_location(source)
    assert (got_uri, volume is not None, needs_fetch) == (uri, pvc, fetch)


@pytest.mark.parametrize(
    ("gpu", "tolerated", "selector"),
    [
        ({"count": 0}, False, None),
        ({"count": 2}, True, None),
        ({"count": 1, "product": "NVIDIA-A100"}, True, "NVIDIA-A100"),
    ],
)
def test_deployment_gpu_placement(
    gpu: dict[str, Any], tolerated: bool, selector: str | None
) -> None:
    dep = build.deployment(pool(gpu=gpu), build.BuildSettings())
    spec = dep["spec"]["template"]["spec"]
    limits = spec["containers"][0]["resources"]["limits"]
    assert limits.get("nvidia.com/gpu") == (str(gpu["count"]) if gpu["count"] else None)
    assert bool(spec.get("tolerations")) is tolerated
    assert (spec.get("nodeSelector") or {}).get("nvidia.com/gpu.product") == selector


def test_deployment_is_restricted_and_owned() -> None:
    dep = build.deployment(pool(), build.BuildSettings())
    meta = dep["metadata"]
    assert meta["ownerReferences"][0] == {
        "apiVersion": "modelfleet.io/v1alpha1",
        "kind": "ModelPool",
        "name": "p",
        "uid": "u1",
        "controller": True,
        "blockOwnerDeletion": True,
    }
    spec = dep["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = spec["containers"][0]["securityContext"]
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
    assert spec["automountServiceAccountToken"] is False
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}


def test_worker_env_carries_pool_settings_and_overrides() -> None:
    p = pool(
        batching={"maxBatchSize": 8, "maxLatencyMs": 40, "memoryAware": False},
        limits={"maxResolution": 768, "maxSteps": 12},
        worker={
            "env": [
                {"name": "MODELFLEET_WORKER_MAX_STEPS", "value": "9"},
                {"name": "X", "value": "1"},
            ],
            "args": ["--compile"],
        },
    )
    env = {e["name"]: e.get("value") for e in build.worker_env(p)}
    assert env["MODELFLEET_WORKER_MAX_BATCH_SIZE"] == "8"
    assert env["MODELFLEET_WORKER_MAX_LATENCY_MS"] == "40"
    assert env["MODELFLEET_WORKER_MEMORY_AWARE"] == "false"
    assert env["MODELFLEET_WORKER_MAX_RESOLUTION"] == "768"
    assert env["MODELFLEET_WORKER_MAX_STEPS"] == "9"  # spec.worker.env wins
    assert env["X"] == "1"
    assert build.deployment(p, build.BuildSettings())["spec"]["template"]["spec"]["containers"][0][
        "args"
    ] == ["--compile"]


@pytest.mark.parametrize(
    ("settings_local", "annotated", "expected"),
    [(False, False, False), (True, False, True), (False, True, True)],
)
def test_local_run_opt_in(settings_local: bool, annotated: bool, expected: bool) -> None:
    p = pool()
    if annotated:
        p.metadata.annotations[build.LOCAL_RUN_ANNOTATION] = "true"
    dep = build.deployment(p, build.BuildSettings(local_run=settings_local))
    annotations = dep["spec"]["template"]["metadata"]["annotations"]
    assert (annotations.get(build.LOCAL_RUN_ANNOTATION) == "true") is expected


H100 = ps.NodeSummary("n1", "NVIDIA-H100", 8)
CPU = ps.NodeSummary("c1", None, 0)


@pytest.mark.parametrize(
    ("gpu", "nodes", "reason"),
    [
        ({"count": 0}, [], None),
        ({"count": 1}, [H100], None),
        ({"count": 8}, [H100], None),
        ({"count": 9}, [H100], ps.INSUFFICIENT_GPUS),
        ({"count": 1}, [CPU], ps.INSUFFICIENT_GPUS),
        ({"count": 1, "product": "NVIDIA-B200"}, [H100, CPU], ps.NO_MATCHING_GPU_NODES),
        ({"count": 1, "product": "NVIDIA-H100"}, [H100], None),
        ({"count": 1}, [ps.NodeSummary("n2", "X", 8, schedulable=False)], ps.INSUFFICIENT_GPUS),
    ],
)
def test_placement_problem(
    gpu: dict[str, Any], nodes: list[ps.NodeSummary], reason: str | None
) -> None:
    got = ps.placement_problem(pool(gpu=gpu), nodes)
    assert (got[0] if got else None) == reason
    if got:
        assert "spec.gpu" in got[1]


def deployment_status(
    replicas: int, ready: int, updated: int, observed: bool = True
) -> dict[str, Any]:
    return {
        "metadata": {"generation": 2},
        "status": {
            "replicas": replicas,
            "readyReplicas": ready,
            "updatedReplicas": updated,
            "observedGeneration": 2 if observed else 1,
        },
    }


def waiting_pod(reason: str) -> dict[str, Any]:
    return {
        "metadata": {"name": "p-1"},
        "status": {
            "containerStatuses": [{"state": {"waiting": {"reason": reason, "message": "m"}}}]
        },
    }


UNSCHEDULABLE_POD = {
    "metadata": {"name": "p-2"},
    "status": {
        "conditions": [
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/5 nodes are available",
            }
        ]
    },
}


@pytest.mark.parametrize(
    ("replicas", "dep", "pods", "placement", "phase", "ready_reason"),
    [
        (2, None, [], None, "Pending", ps.WAITING_FOR_PODS),
        (2, deployment_status(2, 2, 2), [], None, "Ready", ps.AVAILABLE),
        (2, deployment_status(2, 1, 2), [], None, "Progressing", ps.WAITING_FOR_PODS),
        (
            2,
            deployment_status(2, 2, 2, observed=False),
            [],
            None,
            "Progressing",
            ps.WAITING_FOR_PODS,
        ),
        (2, deployment_status(3, 2, 1), [], None, "Progressing", ps.WAITING_FOR_PODS),
        (0, deployment_status(0, 0, 0), [], None, "Ready", ps.SCALED_TO_ZERO),
        (
            2,
            deployment_status(2, 0, 2),
            [waiting_pod("ImagePullBackOff")],
            None,
            "Degraded",
            ps.IMAGE_PULL_FAILED,
        ),
        (
            2,
            deployment_status(2, 0, 2),
            [waiting_pod("CrashLoopBackOff")],
            None,
            "Degraded",
            ps.CRASH_LOOPING,
        ),
        (2, deployment_status(2, 0, 2), [UNSCHEDULABLE_POD], None, "Degraded", ps.UNSCHEDULABLE),
        (2, None, [], (ps.NO_MATCHING_GPU_NODES, "no node"), "Degraded", ps.NO_MATCHING_GPU_NODES),
    ],
)
def test_compute_status(
    replicas: int,
    dep: dict[str, Any] | None,
    pods: list[dict[str, Any]],
    placement: tuple[str, str] | None,
    phase: str,
    ready_reason: str,
) -> None:
    status = ps.compute_status(pool(replicas=replicas), None, dep, pods, placement, NOW)
    assert status.phase == phase
    ready = next(c for c in status.conditions if c.type == "Ready")
    assert ready.reason == ready_reason
    assert status.observed_generation == 3


RUNNING_POD = {
    "metadata": {"name": "p-3", "labels": {"a": "b"}, "managedFields": [{}]},
    "spec": {"containers": [{"name": "worker"}]},
    "status": {
        "phase": "Running",
        "conditions": [{"type": "PodScheduled", "status": "True"}, {"type": "Ready"}],
        "containerStatuses": [{"name": "worker", "state": {"running": {}}, "ready": True}],
    },
}


@pytest.mark.parametrize(
    "pod", [waiting_pod("ImagePullBackOff"), waiting_pod("CrashLoopBackOff"), UNSCHEDULABLE_POD]
)
def test_pod_digest_keeps_every_problem(pod: dict[str, Any]) -> None:
    assert ps._pod_problem([ps.pod_digest(pod)]) == ps._pod_problem([pod])
    assert ps._pod_problem([pod]) is not None


def test_pod_digest_of_a_healthy_pod_is_just_its_name() -> None:
    assert ps.pod_digest(RUNNING_POD) == {"metadata": {"name": "p-3"}, "status": {}}


def test_unchanged_status_keeps_transition_time() -> None:
    p = pool(replicas=2)
    first = ps.compute_status(p, None, deployment_status(2, 2, 2), [], None, NOW)
    later = NOW + dt.timedelta(minutes=5)
    second = ps.compute_status(p, first, deployment_status(2, 2, 2), [], None, later)
    assert second == first
    degraded = ps.compute_status(p, first, None, [], (ps.NO_MATCHING_GPU_NODES, "x"), later)
    ready = next(c for c in degraded.conditions if c.type == "Ready")
    assert ready.last_transition_time == "2026-01-01T00:05:00Z"


def test_apply_failure_then_recovery() -> None:
    p = pool(replicas=2)
    healthy = ps.compute_status(p, None, deployment_status(2, 2, 2), [], None, NOW)
    failed = ps.failed_status(3, healthy, ps.APPLY_FAILED, "quota exceeded", NOW)
    conds = {c.type: c for c in failed.conditions}
    assert failed.phase == "Degraded"
    assert (conds["Degraded"].status, conds["Degraded"].reason) == ("True", ps.APPLY_FAILED)
    assert (conds["Ready"].status, conds["Ready"].message) == ("False", "quota exceeded")
    assert failed.ready_replicas == 2, "last seen counts are kept, not zeroed"
    recovered = ps.compute_status(p, failed, deployment_status(2, 2, 2), [], None, NOW)
    conds = {c.type: c for c in recovered.conditions}
    assert recovered.phase == "Ready"
    assert conds["Degraded"].status == "False"


# ---- RoutingPolicy compilation (pure) ------------------------------------------------
from modelfleet.api.routingpolicy import RoutingPolicySpec  # noqa: E402
from modelfleet.routing.compile import CanaryWeight, compile_routes  # noqa: E402

SPEC = RoutingPolicySpec.model_validate(
    {
        "routes": [
            {"name": "typo", "match": {"tags": ["typography"]}, "pool": "a", "fallbacks": ["b"]},
            {"name": "default", "pool": "b", "fallbacks": ["a"]},
        ]
    }
)


@pytest.mark.parametrize(
    ("pools", "canaries", "default_weights", "reasons"),
    [
        ({"a", "b"}, [], {"b": 100}, []),
        ({"a"}, [], {"b": 100}, ["MissingPool", "MissingPool"]),
        ({"a", "b", "c"}, [CanaryWeight("default", "b", "c", 30)], {"b": 70, "c": 30}, []),
        ({"a", "b", "c"}, [CanaryWeight("default", "b", "c", 100)], {"c": 100}, []),
        ({"a", "b", "c"}, [CanaryWeight("default", "x", "c", 30)], {"b": 100}, []),
        ({"a", "b", "c"}, [CanaryWeight("default", "b", "c", 0)], {"b": 100}, []),
    ],
)
def test_compile_routes(
    pools: set[str],
    canaries: list[CanaryWeight],
    default_weights: dict[str, int],
    reasons: list[str],
) -> None:
    routes, problems = compile_routes(SPEC, pools, canaries)
    default = next(r for r in routes if r.name == "default")
    assert {p.pool: p.weight for p in default.pools} == default_weights
    assert [p.reason for p in problems] == reasons


def test_compile_routes_detects_fallback_cycle() -> None:
    spec = RoutingPolicySpec.model_validate(
        {"routes": [{"name": "r", "pool": "a", "fallbacks": ["b", "a"]}]}
    )
    _, problems = compile_routes(spec, {"a", "b"}, [])
    assert [p.reason for p in problems] == ["FallbackCycle"]
    assert "spec.routes[0]" in problems[0].message
