"""ModelPool controller: keeps each pool's Deployment, Service and PDB applied
and its status true.

Every trigger (the pool, an owned object, a pod, a node) funnels into one
idempotent `reconcile(namespace, name)`; a per-pool lock plus a dirty flag
coalesces bursts of events into at most one extra pass.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import Any

import kopf
from kubernetes.client.rest import ApiException
from pydantic import ValidationError

from modelfleet import GROUP, VERSION
from modelfleet.api.modelpool import ModelPool, ModelPoolStatus
from modelfleet.builders import modelpool as build
from modelfleet.builders import poolstatus
from modelfleet.controllers import kube
from modelfleet.controllers.requeue import Requeue, namespace_terminating

log = logging.getLogger("modelfleet.modelpool")
Key = tuple[str, str]


@dataclass
class PoolState:
    """What the controller remembers between events (all rebuilt from watches after a restart)."""

    pools: dict[Key, Any] = field(default_factory=dict)  # raw bodies, also used to post Events
    deployments: dict[Key, dict[str, Any]] = field(default_factory=dict)
    pods: dict[Key, dict[str, dict[str, Any]]] = field(default_factory=dict)
    nodes: dict[str, poolstatus.NodeSummary] = field(default_factory=dict)
    # Generation of each child right after our last apply: a different one means drift.
    applied: dict[Key, tuple[int | None, dict[str, Any]]] = field(default_factory=dict)
    # Pools with a child deleted or edited by someone else. Cleared when an apply
    # starts, not when it ends: a deletion seen during that apply must not be lost.
    stale: set[Key] = field(default_factory=set)
    locks: dict[Key, asyncio.Lock] = field(default_factory=dict)
    dirty: set[Key] = field(default_factory=set)
    # Reconciles in progress at once: each holds built manifests and waits on an API
    # thread, so a burst of a thousand pools queues here instead of in memory.
    slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(64))
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    settings: build.BuildSettings = field(default_factory=build.BuildSettings)


STATE = PoolState()


def _key(meta: dict[str, Any] | Any) -> Key:
    return (meta["namespace"], meta["name"])


def _pool_of(labels: dict[str, Any] | None) -> str | None:
    return (labels or {}).get(build.POOL_LABEL)


def _child_fingerprint(obj: dict[str, Any]) -> Any:
    meta = obj.get("metadata", {})
    # Services have no generation; their resourceVersion moves only on edits.
    return meta.get("generation") or meta.get("resourceVersion")


_META_KEPT = ("name", "namespace", "uid", "generation", "resourceVersion", "labels", "annotations")


def compact(body: Any, keep: tuple[str, ...] = ("status",)) -> dict[str, Any]:
    """The part of an object the controller reads: caching whole bodies (managedFields,
    pod specs) of thousands of pods and Deployments costs hundreds of MB."""
    meta = body.get("metadata") or {}
    out: dict[str, Any] = {"metadata": {k: meta[k] for k in _META_KEPT if k in meta}}
    for key in keep:
        if key in body:
            out[key] = body[key]
    return out


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


async def _apply_children(pool: ModelPool, body: Any) -> None:
    key = (pool.metadata.namespace or "", pool.metadata.name)
    fingerprints: dict[str, Any] = {}
    STATE.stale.discard(key)
    for manifest in build.children(pool, STATE.settings):
        applied = await kube.run(kube.apply, manifest)
        fingerprints[manifest["kind"]] = _child_fingerprint(applied)
        if manifest["kind"] == "Deployment":
            STATE.deployments[key] = compact(applied)
    first = key not in STATE.applied
    STATE.applied[key] = (pool.metadata.generation, fingerprints)
    if first and not (body.get("status") or {}).get("observedGeneration"):
        kopf.info(
            body, reason="Created", message="created Deployment, Service and PodDisruptionBudget"
        )
    elif (
        not first
        or (body.get("status") or {}).get("observedGeneration") != pool.metadata.generation
    ):
        kopf.info(body, reason="Updated", message=f"applied generation {pool.metadata.generation}")


def _needs_apply(key: Key, pool: ModelPool) -> bool:
    record = STATE.applied.get(key)
    if key in STATE.stale or record is None or record[0] != pool.metadata.generation:
        return True
    dep = STATE.deployments.get(key)
    return dep is None or _child_fingerprint(dep) != record[1].get("Deployment")


async def reconcile(key: Key) -> None:
    lock = STATE.locks.setdefault(key, asyncio.Lock())
    if lock.locked():
        STATE.dirty.add(key)
        return
    async with lock:
        while True:
            STATE.dirty.discard(key)
            try:
                async with STATE.slots:
                    await _reconcile_once(key)
            except Exception as exc:  # the operator never crash-loops on one pool
                _failed(key, exc)
            else:
                RETRY.succeeded(key)
            if key not in STATE.dirty:
                break


class ApplyFailed(Exception):
    """Applying children failed; already reported in status (Degraded/ApplyFailed)."""


def _failed(key: Key, exc: Exception) -> None:
    if namespace_terminating(exc):
        log.info("%s/%s: namespace is being deleted; not retrying", *key)
        return
    delay = RETRY.failed(key)
    if isinstance(exc, ApplyFailed | ApiException):
        log.warning("reconciling %s/%s failed: %s; retrying in %.1fs", *key, exc, delay)
    else:  # a bug, not the API server: keep the traceback
        log.exception("reconciling %s/%s failed; retrying in %.1fs", *key, delay)
    body = STATE.pools.get(key)
    if body is not None and not isinstance(exc, ApplyFailed):
        message = kube.api_message(exc) if isinstance(exc, ApiException) else str(exc)
        kopf.warn(body, reason="ReconcileFailed", message=f"{message[:450]} (retry in {delay:g}s)")


def stand_down() -> None:
    """Leadership lost: no pending retry or scheduled pass may act for a standby."""
    RETRY.cancel_all()
    for task in list(STATE.tasks):
        task.cancel()


async def _retry(key: Key) -> None:
    if key in STATE.pools:
        await reconcile(key)


RETRY = Requeue(_retry)


async def _reconcile_once(key: Key) -> None:
    body = STATE.pools.get(key)
    if body is None:
        return
    previous_raw = body.get("status") or {}
    try:
        previous = ModelPoolStatus.model_validate(previous_raw) if previous_raw else None
    except ValidationError:
        previous = None
    try:
        pool = ModelPool.model_validate(
            {k: body[k] for k in ("apiVersion", "kind", "metadata", "spec") if k in body}
        )
    except ValidationError as exc:
        message = "; ".join(
            f"spec.{'.'.join(str(p) for p in err['loc'][1:])}: {err['msg']}" for err in exc.errors()
        )
        status = poolstatus.invalid_status(
            body["metadata"].get("generation"), previous, message, _now()
        )
        await _write_status(key, body, previous, status)
        return

    placement = poolstatus.placement_problem(pool, list(STATE.nodes.values()))
    if _needs_apply(key, pool):
        try:
            await _apply_children(pool, body)
        except ApiException as exc:
            if namespace_terminating(exc):
                raise
            message = f"applying the pool's objects failed: {kube.api_message(exc)}"
            failed = poolstatus.failed_status(
                pool.metadata.generation, previous, poolstatus.APPLY_FAILED, message, _now()
            )
            await _write_status(key, body, previous, failed)
            raise ApplyFailed(message) from exc
    pods = list(STATE.pods.get(key, {}).values())
    status = poolstatus.compute_status(
        pool, previous, STATE.deployments.get(key), pods, placement, _now()
    )
    await _write_status(key, body, previous, status)


async def _write_status(
    key: Key, body: Any, previous: ModelPoolStatus | None, status: ModelPoolStatus
) -> None:
    new = status.model_dump(by_alias=True, exclude_none=True, mode="json")
    old = previous.model_dump(by_alias=True, exclude_none=True, mode="json") if previous else {}
    if new == old:
        return  # unchanged: no write, no event
    await kube.run(kube.patch_status, "modelpools", key[0], key[1], new)
    body["status"] = new
    was = {c.type: c for c in (previous.conditions if previous else [])}
    for cond in status.conditions:
        before = was.get(cond.type)
        changed = before is None or before.status != cond.status or before.reason != cond.reason
        if cond.type == "Degraded" and cond.status == "True" and changed:
            kopf.warn(body, reason=cond.reason, message=cond.message)
        if cond.type == "Ready" and changed and cond.status == "True":
            kopf.info(body, reason="Ready", message=cond.message)


def prime_nodes() -> None:
    """Fill the node cache before any pool is judged: otherwise the first pools
    reconciled after a start look unplaceable until the node watch catches up."""
    from kubernetes import client as k8s

    nodes = k8s.CoreV1Api(kube.api_client()).list_node()
    STATE.nodes = {
        n.metadata.name: poolstatus.summarize_node(kube.sanitize(n)) for n in nodes.items
    }


def _schedule(key: Key) -> None:
    """Reconcile in the background: the watch handler returns at once, so kopf does
    not hold thousands of raw event bodies while their pools wait for an API thread."""
    lock = STATE.locks.get(key)
    if lock is not None and lock.locked() and key in STATE.dirty:
        return  # a pass is already running and will go round once more
    task = asyncio.get_running_loop().create_task(reconcile(key))
    STATE.tasks.add(task)
    task.add_done_callback(STATE.tasks.discard)


# ---- watches --------------------------------------------------------------------
@kopf.on.event(GROUP, VERSION, "modelpools")  # type: ignore[arg-type]
async def pool_event(event: dict[str, Any], body: kopf.Body, **_: Any) -> None:
    key = _key(body["metadata"])
    if event["type"] == "DELETED":
        STATE.pools.pop(key, None)
        STATE.applied.pop(key, None)
        STATE.stale.discard(key)
        STATE.deployments.pop(key, None)
        STATE.pods.pop(key, None)
        RETRY.forget(key)
        return
    STATE.pools[key] = compact(body, ("apiVersion", "kind", "spec", "status"))
    _schedule(key)


_CHILD_FILTER = {"app.kubernetes.io/managed-by": build.MANAGED_BY}


@kopf.on.event("apps", "v1", "deployments", labels=_CHILD_FILTER)  # type: ignore[arg-type]
async def deployment_event(event: dict[str, Any], body: kopf.Body, **_: Any) -> None:
    await _child_event("Deployment", event, body)


@kopf.on.event("v1", "services", labels=_CHILD_FILTER)  # type: ignore[arg-type]
async def service_event(event: dict[str, Any], body: kopf.Body, **_: Any) -> None:
    await _child_event("Service", event, body)


@kopf.on.event("policy", "v1", "poddisruptionbudgets", labels=_CHILD_FILTER)  # type: ignore[arg-type]
async def pdb_event(event: dict[str, Any], body: kopf.Body, **_: Any) -> None:
    await _child_event("PodDisruptionBudget", event, body)


async def _child_event(kind: str, event: dict[str, Any], body: kopf.Body) -> None:
    pool = _pool_of(body["metadata"].get("labels"))
    if pool is None:
        return
    key = (body["metadata"]["namespace"], pool)
    record = STATE.applied.get(key)
    if event["type"] == "DELETED":
        if kind == "Deployment":
            STATE.deployments.pop(key, None)
        drifted = True  # gone: the next pass re-applies it
    else:
        if kind == "Deployment":
            STATE.deployments[key] = compact(body)
        # Edited by someone else: the next pass restores it.
        drifted = record is not None and _child_fingerprint(dict(body)) != record[1].get(kind)
    if key in STATE.pools:
        if drifted:
            STATE.stale.add(key)
        _schedule(key)


@kopf.on.event("v1", "pods", labels={build.POOL_LABEL: kopf.PRESENT})  # type: ignore[arg-type]
async def pod_event(event: dict[str, Any], body: kopf.Body, **_: Any) -> None:
    pool = _pool_of(body["metadata"].get("labels"))
    if pool is None:
        return
    key = (body["metadata"]["namespace"], pool)
    pods = STATE.pods.setdefault(key, {})
    if event["type"] == "DELETED":
        pods.pop(body["metadata"]["name"], None)
    else:
        pods[body["metadata"]["name"]] = poolstatus.pod_digest(dict(body))
    if key in STATE.pools:
        _schedule(key)


@kopf.on.event("v1", "nodes")  # type: ignore[arg-type]
async def node_event(event: dict[str, Any], body: kopf.Body, **_: Any) -> None:
    name = body["metadata"]["name"]
    before = STATE.nodes.get(name)
    if event["type"] == "DELETED":
        STATE.nodes.pop(name, None)
    else:
        STATE.nodes[name] = poolstatus.summarize_node(dict(body))
    if STATE.nodes.get(name) != before:
        # Capacity changed: pools that were (or might become) unplaceable re-check.
        for key in list(STATE.pools):
            _schedule(key)


async def resync_forever(interval: float = 60.0) -> None:
    """Safety net against a missed event; normally every pass is a no-op."""
    while True:
        await asyncio.sleep(interval)
        for key in list(STATE.pools):
            await reconcile(key)
