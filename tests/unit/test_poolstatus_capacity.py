"""Pool status: GPUs requested vs schedulable per product, CapacityStarved, and the
autoscaler's status fields surviving the pool controller's writes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from modelfleet.api.modelpool import ModelPool, ModelPoolStatus
from modelfleet.builders import poolstatus
from modelfleet.builders.poolstatus import NodeSummary

NOW = datetime(2026, 12, 1, 17, 0, tzinfo=UTC)
H100 = "NVIDIA-H100-80GB-HBM3"


def pool(replicas: int, count: int = 1, product: str | None = H100) -> ModelPool:
    gpu: dict[str, Any] = {"count": count}
    if product:
        gpu["product"] = product
    return ModelPool.model_validate(
        {
            "metadata": {"name": "p", "namespace": "ns", "generation": 2},
            "spec": {"model": {"source": "file:///m"}, "replicas": replicas, "gpu": gpu},
        }
    )


NODES = [
    NodeSummary("a", H100, 2),
    NodeSummary("b", H100, 2, schedulable=False),  # cordoned: not offered
    NodeSummary("c", "NVIDIA-L4", 4),
]


def unschedulable_pod(name: str, message: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "status": {
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": message,
                }
            ]
        },
    }


GPU_SHORT = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."


def test_requested_vs_schedulable_per_product() -> None:
    [g] = poolstatus.gpu_capacity(pool(3, count=2), NODES, [])
    assert (g.product, g.requested, g.schedulable, g.pending_pods) == (H100, 6, 2, 0)
    [any_] = poolstatus.gpu_capacity(pool(1, product=None), NODES, [])
    assert (any_.product, any_.schedulable) == ("any", 6)
    assert poolstatus.gpu_capacity(pool(2, count=0), NODES, []) == []


def test_pending_pods_count_only_gpu_shortage() -> None:
    pods = [
        unschedulable_pod("x", GPU_SHORT),
        unschedulable_pod("y", "0/3 nodes are available: 3 node(s) had untolerated taint."),
    ]
    [g] = poolstatus.gpu_capacity(pool(1), NODES, pods)
    assert g.pending_pods == 1


def status(p: ModelPool, pods: list[dict[str, Any]], previous: ModelPoolStatus | None = None):
    return poolstatus.compute_status(p, previous, None, pods, None, NOW, nodes=NODES)


def test_capacity_starved_condition_comes_and_goes() -> None:
    fits = status(pool(2), [])
    assert not poolstatus.capacity_starved(fits)
    assert all(c.type != poolstatus.CAPACITY_STARVED for c in fits.conditions)

    short = status(pool(3), [], fits)  # 3 GPUs wanted, 2 schedulable H100s
    assert poolstatus.capacity_starved(short)
    cond = next(c for c in short.conditions if c.type == poolstatus.CAPACITY_STARVED)
    assert cond.reason == poolstatus.INSUFFICIENT_GPUS_REASON
    assert H100 in cond.message and "3 GPUs" in cond.message

    pending = status(pool(2), [unschedulable_pod("x", GPU_SHORT)], short)
    assert poolstatus.capacity_starved(pending)  # fits on paper, but other pools hold them

    back = status(pool(2), [], pending)
    assert not poolstatus.capacity_starved(back)
    cond = next(c for c in back.conditions if c.type == poolstatus.CAPACITY_STARVED)
    assert (cond.status, cond.reason) == ("False", poolstatus.CAPACITY_AVAILABLE)
    assert back.gpus[0].requested == 2


def test_autoscaler_fields_survive_the_pool_controllers_status() -> None:
    prev = ModelPoolStatus(
        desired_replicas=3,
        last_scale_time="2026-12-01T16:59:00.000Z",
        scale_reason="Panic",
        demand=7,
    )
    new = status(pool(2), [], prev)
    assert (new.desired_replicas, new.scale_reason, new.demand) == (3, "Panic", 7)
    assert new.last_scale_time == prev.last_scale_time
    failed = poolstatus.failed_status(2, prev, "ApplyFailed", "boom", NOW)
    assert failed.desired_replicas == 3


def test_autoscaler_reports_a_scale_up_the_nodes_cannot_hold() -> None:
    from modelfleet.controllers.autoscale import blocked_message

    assert blocked_message(pool(1), 2, NODES) is None  # 2 H100s schedulable
    why = blocked_message(pool(1), 3, NODES)
    assert why is not None and "3 GPUs" in why and H100 in why and "offer 2" in why
    assert blocked_message(pool(1, count=0), 50, NODES) is None


def test_the_pool_controllers_patch_leaves_the_autoscaler_fields_alone() -> None:
    prev = ModelPoolStatus(desired_replicas=3, scale_reason="Panic: x", demand=7)
    wire = status(pool(2), [], prev).wire()
    assert wire["desiredReplicas"] == 3
    patch = poolstatus.without_autoscaler(wire)
    assert not {"desiredReplicas", "scaleReason", "demand", "lastScaleTime"} & set(patch)
    assert patch["gpus"] and patch["conditions"]
