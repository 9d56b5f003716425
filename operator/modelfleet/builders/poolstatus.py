"""Pure decisions about a ModelPool's health: placement checks against the
nodes, a hosted pool's exhausted provider quota (from its adapters' /readyz), and
the status (phase + conditions) from the Deployment and its pods."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from modelfleet.api.common import format_time
from modelfleet.api.conditions import set_condition
from modelfleet.api.modelpool import GpuCapacity, ModelPool, ModelPoolStatus

# Condition reasons (stable strings users and tools can match on).
AVAILABLE = "MinimumReplicasAvailable"
SCALED_TO_ZERO = "ScaledToZero"
ROLLING_OUT = "RollingOut"
ROLLOUT_COMPLETE = "RolloutComplete"
WAITING_FOR_PODS = "WaitingForPods"
NO_MATCHING_GPU_NODES = "NoMatchingGPUNodes"
INSUFFICIENT_GPUS = "InsufficientGPUsPerNode"
UNSCHEDULABLE = "Unschedulable"
IMAGE_PULL_FAILED = "ImagePullFailed"
CRASH_LOOPING = "CrashLooping"
INVALID_SPEC = "InvalidSpec"
APPLY_FAILED = "ApplyFailed"
HEALTHY = "Healthy"
QUOTA_EXHAUSTED = "QuotaExhausted"
# Capacity (issue 16): a condition the canary reads to pause instead of failing.
CAPACITY_STARVED = "CapacityStarved"  # condition type
INSUFFICIENT_GPUS_REASON = "InsufficientGPUs"
CAPACITY_AVAILABLE = "CapacityAvailable"
SCALE_UP_BLOCKED = "ScaleUpBlocked"  # Warning Event when the condition turns True
ANY_PRODUCT = "any"
# Fields the autoscale controller owns in status: every other writer carries them over.
AUTOSCALER_FIELDS = ("desired_replicas", "last_scale_time", "scale_reason", "demand")
# The quota is the provider account's, shared by every adapter of a pool: a few
# not-ready pods tell as much as all of them.
QUOTA_PROBE_PODS = 3

_PULL_REASONS = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName"}


@dataclass(frozen=True)
class NodeSummary:
    """What the placement check needs to know about one node."""

    name: str
    gpu_product: str | None
    gpus: int
    schedulable: bool = True


def summarize_node(node: dict[str, Any]) -> NodeSummary:
    meta = node.get("metadata", {})
    alloc = (node.get("status") or {}).get("allocatable") or {}
    try:
        gpus = int(alloc.get("nvidia.com/gpu", "0"))
    except ValueError:
        gpus = 0
    return NodeSummary(
        name=meta.get("name", ""),
        gpu_product=(meta.get("labels") or {}).get("nvidia.com/gpu.product"),
        gpus=gpus,
        schedulable=not (node.get("spec") or {}).get("unschedulable", False),
    )


def placement_problem(pool: ModelPool, nodes: list[NodeSummary]) -> tuple[str, str] | None:
    """(reason, message) when no node could ever run one of the pool's pods."""
    gpu = pool.spec.gpu_or_default()
    if gpu.count == 0:
        return None
    candidates = [n for n in nodes if n.schedulable and n.gpus > 0]
    if gpu.product:
        products = sorted({n.gpu_product for n in candidates if n.gpu_product})
        candidates = [n for n in candidates if n.gpu_product == gpu.product]
        if not candidates:
            have = ", ".join(products) or "none"
            return (
                NO_MATCHING_GPU_NODES,
                f"no schedulable node has GPU product {gpu.product!r} (spec.gpu.product); "
                f"products in the cluster: {have}",
            )
    most = max((n.gpus for n in candidates), default=0)
    if gpu.count > most:
        return (
            INSUFFICIENT_GPUS,
            f"spec.gpu.count={gpu.count} but the largest matching node offers {most} "
            "nvidia.com/gpu; lower spec.gpu.count or add bigger nodes",
        )
    return None


def gpu_capacity(
    pool: ModelPool, nodes: list[NodeSummary], pods: list[dict[str, Any]]
) -> list[GpuCapacity]:
    """GPUs the pool's replicas ask for against the allocatable GPUs of its product on
    schedulable nodes; empty for pools without GPUs."""
    gpu = pool.spec.gpu_or_default()
    if gpu.count == 0:
        return []
    matching = [
        n for n in nodes if n.schedulable and (gpu.product is None or n.gpu_product == gpu.product)
    ]
    return [
        GpuCapacity(
            product=gpu.product or ANY_PRODUCT,
            requested=pool.spec.replicas * gpu.count,
            schedulable=sum(n.gpus for n in matching),
            pending_pods=sum(1 for p in pods if _waits_for_gpus(p)),
        )
    ]


def _waits_for_gpus(pod: dict[str, Any]) -> bool:
    """The scheduler could not place the pod and says GPUs are why."""
    return any(
        c.get("type") == "PodScheduled"
        and c.get("status") == "False"
        and c.get("reason") == "Unschedulable"
        and "nvidia.com/gpu" in (c.get("message") or "")
        for c in (pod.get("status") or {}).get("conditions") or []
    )


def capacity_problem(gpus: list[GpuCapacity]) -> str | None:
    """Why the pool is short of GPUs, or None."""
    for g in gpus:
        if g.pending_pods or g.requested > g.schedulable:
            return (
                f"{g.requested} GPUs of product {g.product} requested, {g.schedulable} "
                f"schedulable in the cluster; {g.pending_pods} pod(s) waiting for GPUs"
            )
    return None


def capacity_starved(status: ModelPoolStatus | None) -> bool:
    """Whether the pool cannot get the GPUs its replicas need (condition CapacityStarved)."""
    if status is None:
        return False
    return any(c.type == CAPACITY_STARVED and c.status == "True" for c in status.conditions)


_AUTOSCALER_WIRE = ("desiredReplicas", "lastScaleTime", "scaleReason", "demand")


def without_autoscaler(status: dict[str, Any]) -> dict[str, Any]:
    """A wire status minus the autoscaler's fields: the pool controller's merge patch then
    never writes back a value the autoscaler has replaced meanwhile."""
    return {k: v for k, v in status.items() if k not in _AUTOSCALER_WIRE}


def _carried(previous: ModelPoolStatus | None) -> dict[str, Any]:
    if previous is None:
        return {}
    return {f: getattr(previous, f) for f in AUTOSCALER_FIELDS}


def pod_digest(pod: dict[str, Any]) -> dict[str, Any]:
    """The part of a pod that `compute_status` reads: waiting containers and a failed
    scheduling. A thousand healthy pods then cost a few hundred bytes each."""
    status = pod.get("status") or {}
    waiting = [
        {
            "state": {"waiting": (cs.get("state") or {})["waiting"]},
            "restartCount": cs.get("restartCount", 0),
        }
        for cs in status.get("containerStatuses") or []
        if (cs.get("state") or {}).get("waiting")
    ]
    unscheduled = [
        c
        for c in status.get("conditions") or []
        if c.get("type") == "PodScheduled" and c.get("status") == "False"
    ]
    digest: dict[str, Any] = {}
    if waiting:
        digest["containerStatuses"] = waiting
    if unscheduled:
        digest["conditions"] = unscheduled
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )
    if status.get("podIP") and status.get("phase") == "Running" and not ready:
        digest["podIP"] = status["podIP"]  # a hosted pool's operator asks it why (/readyz)
    return {"metadata": {"name": (pod.get("metadata") or {}).get("name", "?")}, "status": digest}


def quota_probe_targets(pool: ModelPool, pods: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(pod, IP) of a hosted pool's running but not-ready pods whose /readyz may say
    the provider quota is exhausted; none for a diffusers pool."""
    if not pool.spec.hosted:
        return []
    found = [
        ((p.get("metadata") or {}).get("name", "?"), (p.get("status") or {}).get("podIP"))
        for p in pods
    ]
    return sorted((name, ip) for name, ip in found if ip)[:QUOTA_PROBE_PODS]


def quota_until(status: int, body: Any) -> float | None:
    """When an adapter's /readyz answer says the quota is exhausted: until when (unix
    seconds). Anything else (ready, another reason, junk) is None."""
    if status != 503 or not isinstance(body, dict) or body.get("status") != "quota_exhausted":
        return None
    until = body.get("until")
    if isinstance(until, bool) or not isinstance(until, int | float):
        return None
    return float(until)


def quota_problem(untils: dict[str, float], now: datetime) -> tuple[str, str] | None:
    """(QuotaExhausted, message) while some adapter reports the quota gone past now."""
    live = {pod: t for pod, t in untils.items() if t > now.timestamp()}
    if not live:
        return None
    until = datetime.fromtimestamp(max(live.values()), tz=now.tzinfo)
    pods = ", ".join(sorted(live))
    return (
        QUOTA_EXHAUSTED,
        f"provider quota exhausted until {format_time(until)} (reported by {pods}); the "
        "adapters stay not ready and routes fall back until it resets",
    )


def _pod_problem(pods: list[dict[str, Any]]) -> tuple[str, str] | None:
    for pod in pods:
        status = pod.get("status") or {}
        name = (pod.get("metadata") or {}).get("name", "?")
        for cs in status.get("containerStatuses") or []:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            reason = waiting.get("reason")
            if reason in _PULL_REASONS:
                return (
                    IMAGE_PULL_FAILED,
                    f"pod {name}: {reason}: {waiting.get('message', '')}".strip(),
                )
            if reason == "CrashLoopBackOff":
                return (
                    CRASH_LOOPING,
                    f"pod {name} is crash looping (restarts: {cs.get('restartCount', 0)}): "
                    f"{waiting.get('message', '')}".strip(),
                )
        for cond in status.get("conditions") or []:
            if (cond.get("type"), cond.get("status"), cond.get("reason")) == (
                "PodScheduled",
                "False",
                "Unschedulable",
            ):
                return UNSCHEDULABLE, f"pod {name} unschedulable: {cond.get('message', '')}"
    return None


def rollout_state(deployment: dict[str, Any] | None, replicas: int) -> tuple[int, int, int, bool]:
    """(replicas, ready, updated, complete) from a Deployment's status."""
    if deployment is None:
        return 0, 0, 0, False
    status = deployment.get("status") or {}
    meta = deployment.get("metadata") or {}
    ready = int(status.get("readyReplicas") or 0)
    updated = int(status.get("updatedReplicas") or 0)
    total = int(status.get("replicas") or 0)
    observed = status.get("observedGeneration") == meta.get("generation")
    complete = observed and updated == replicas and ready >= replicas and total == replicas
    return total, ready, updated, complete


def compute_status(
    pool: ModelPool,
    previous: ModelPoolStatus | None,
    deployment: dict[str, Any] | None,
    pods: list[dict[str, Any]],
    placement: tuple[str, str] | None,
    now: datetime,
    quota: tuple[str, str] | None = None,
    nodes: list[NodeSummary] | None = None,
) -> ModelPoolStatus:
    gen = pool.metadata.generation
    want = pool.spec.replicas
    total, ready, updated, complete = rollout_state(deployment, want)
    conditions = list(previous.conditions) if previous else []
    problem = placement or quota or _pod_problem(pods)

    if problem:
        conditions = set_condition(conditions, "Degraded", "True", problem[0], problem[1], now, gen)
    else:
        conditions = set_condition(
            conditions, "Degraded", "False", HEALTHY, "no problems found", now, gen
        )

    if complete:
        conditions = set_condition(
            conditions,
            "Progressing",
            "False",
            ROLLOUT_COMPLETE,
            "all replicas run the current spec",
            now,
            gen,
        )
    else:
        conditions = set_condition(
            conditions,
            "Progressing",
            "True",
            ROLLING_OUT,
            f"{updated}/{want} replicas updated, {ready}/{want} ready",
            now,
            gen,
        )

    if quota:  # the adapters cannot serve, whatever the Deployment still counts
        conditions = set_condition(conditions, "Ready", "False", quota[0], quota[1], now, gen)
    elif want == 0 and complete:
        conditions = set_condition(
            conditions, "Ready", "True", SCALED_TO_ZERO, "pool scaled to 0", now, gen
        )
    elif complete:
        conditions = set_condition(
            conditions, "Ready", "True", AVAILABLE, f"{ready}/{want} replicas ready", now, gen
        )
    elif problem:
        conditions = set_condition(conditions, "Ready", "False", problem[0], problem[1], now, gen)
    else:
        conditions = set_condition(
            conditions,
            "Ready",
            "False",
            WAITING_FOR_PODS,
            f"{ready}/{want} replicas ready",
            now,
            gen,
        )

    gpus = gpu_capacity(pool, nodes, pods) if nodes is not None else []
    short = capacity_problem(gpus)
    was_short = any(c.type == CAPACITY_STARVED for c in conditions)
    if short:
        conditions = set_condition(
            conditions, CAPACITY_STARVED, "True", INSUFFICIENT_GPUS_REASON, short, now, gen
        )
    elif was_short:
        conditions = set_condition(
            conditions,
            CAPACITY_STARVED,
            "False",
            CAPACITY_AVAILABLE,
            "the pool's GPUs are schedulable",
            now,
            gen,
        )

    if problem:
        phase = "Degraded"
    elif complete:
        phase = "Ready"
    elif deployment is None or (ready == 0 and updated == 0):
        phase = "Pending"
    else:
        phase = "Progressing"
    return ModelPoolStatus(
        phase=phase,  # type: ignore[arg-type]
        replicas=total,
        ready_replicas=ready,
        updated_replicas=updated,
        observed_generation=gen,
        service=pool.metadata.name,
        gpus=gpus,
        conditions=conditions,
        **_carried(previous),
    )


def validation_message(exc: ValidationError) -> str:
    """The fields and rules a spec broke, for an InvalidSpec condition: pydantic's
    messages only, never the offending input (it may be a pasted API key)."""
    return "; ".join(
        f"spec.{'.'.join(str(p) for p in err['loc'][1:])}: {err['msg']}"
        for err in exc.errors(include_input=False, include_url=False)
    )


def invalid_status(
    pool_generation: int | None, previous: ModelPoolStatus | None, message: str, now: datetime
) -> ModelPoolStatus:
    return failed_status(pool_generation, previous, INVALID_SPEC, message, now)


def failed_status(
    pool_generation: int | None,
    previous: ModelPoolStatus | None,
    reason: str,
    message: str,
    now: datetime,
) -> ModelPoolStatus:
    """Degraded and not Ready for `reason`; replica counts stay as last seen."""
    conditions = list(previous.conditions) if previous else []
    conditions = set_condition(
        conditions, "Degraded", "True", reason, message, now, pool_generation
    )
    conditions = set_condition(conditions, "Ready", "False", reason, message, now, pool_generation)
    return ModelPoolStatus(
        phase="Degraded",
        observed_generation=pool_generation,
        replicas=previous.replicas if previous else None,
        ready_replicas=previous.ready_replicas if previous else None,
        conditions=conditions,
        **_carried(previous),
    )
