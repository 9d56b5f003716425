"""ModelPool controller: keeps each pool's Deployment, Service and PDB applied
and its status true (for a hosted pool with not-ready adapters, their /readyz says
whether the provider quota ran out).

Every trigger (the pool, an owned object, a pod, a node) funnels into one
idempotent `reconcile(namespace, name)`; a per-pool lock plus a dirty flag
coalesces bursts of events into at most one extra pass.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import Any

import aiohttp
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


READYZ_TIMEOUT_S = 2.0


async def read_quota(targets: list[tuple[str, str]], port: int) -> dict[str, float]:
    """Ask not-ready adapters why: {pod: until} for those whose /readyz says the provider
    quota is exhausted. Read-only; an unreachable pod or junk answer says nothing."""
    if not targets:
        return {}
    timeout = aiohttp.ClientTimeout(total=READYZ_TIMEOUT_S)

    async def one(session: aiohttp.ClientSession, ip: str) -> float | None:
        try:
            async with session.get(f"http://{ip}:{port}/readyz") as resp:
                body = await resp.json(content_type=None) if resp.status == 503 else None
                return poolstatus.quota_until(resp.status, body)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None

    async with aiohttp.ClientSession(timeout=timeout) as session:
        untils = await asyncio.gather(*(one(session, ip) for _, ip in targets))
    return {pod: t for (pod, _), t in zip(targets, untils, strict=True) if t is not None}


class ApplyFailed(Exception):
    """Applying children failed; already reported in status (Degraded/ApplyFailed)."""


_CHILD_FILTER = {"app.kubernetes.io/managed-by": build.MANAGED_BY}


class ModelPoolController:
    """The ModelPool controller for one leadership term: what it remembers between
    events (all rebuilt from the watches in the next term) and its handlers."""

    def __init__(self, settings: build.BuildSettings | None = None) -> None:
        self.settings = settings or build.BuildSettings()
        self.pools: dict[Key, Any] = {}  # compact bodies, also used to post Events
        self.deployments: dict[Key, dict[str, Any]] = {}
        # Deployment watch events seen per pool: an apply's answer may be older than an
        # event that arrived while it was in flight, and must not replace it.
        self.deployment_events: dict[Key, int] = {}
        self.pods: dict[Key, dict[str, dict[str, Any]]] = {}
        self.nodes: dict[str, poolstatus.NodeSummary] = {}
        # Generation of each child right after our last apply: a different one means drift.
        self.applied: dict[Key, tuple[int | None, dict[str, Any]]] = {}
        # Pools with a child deleted or edited by someone else. Cleared when an apply
        # starts, not when it ends: a deletion seen during that apply must not be lost.
        self.stale: set[Key] = set()
        self.locks: dict[Key, asyncio.Lock] = {}
        self.dirty: set[Key] = set()
        # Reconciles in progress at once: each holds built manifests and waits on an API
        # thread, so a burst of a thousand pools queues here instead of in memory.
        self.slots = asyncio.Semaphore(64)
        self.tasks: set[asyncio.Task[None]] = set()
        self.retry = Requeue(self._retry)

    def register(self, registry: kopf.OperatorRegistry) -> None:
        """Bind this term's handlers: every trigger funnels into reconcile()."""
        on, owned, r = kopf.on.event, _CHILD_FILTER, registry
        on(GROUP, VERSION, "modelpools", registry=r)(self.pool_event)
        on("apps", "v1", "deployments", labels=owned, registry=r)(self.deployment_event)
        on("v1", "services", labels=owned, registry=r)(self.service_event)
        on("policy", "v1", "poddisruptionbudgets", labels=owned, registry=r)(self.pdb_event)
        if self.settings.worker_network_policy:
            on("networking.k8s.io", "v1", "networkpolicies", labels=owned, registry=r)(
                self.network_policy_event
            )
        on("v1", "pods", labels={build.POOL_LABEL: kopf.PRESENT}, registry=r)(self.pod_event)
        on("v1", "nodes", registry=r)(self.node_event)

    async def _apply_children(self, pool: ModelPool, body: Any) -> None:
        key = (pool.metadata.namespace or "", pool.metadata.name)
        fingerprints: dict[str, Any] = {}
        self.stale.discard(key)
        for manifest in build.children(pool, self.settings):
            seen = self.deployment_events.get(key, 0)
            applied = await kube.run(kube.apply, manifest)
            fingerprints[manifest["kind"]] = _child_fingerprint(applied)
            if manifest["kind"] == "Deployment" and self.deployment_events.get(key, 0) == seen:
                # Else the watch already holds a state at least as new (a change this
                # apply made arrives as its own event): a stale readyReplicas would stick.
                self.deployments[key] = compact(applied)
        first = key not in self.applied
        self.applied[key] = (pool.metadata.generation, fingerprints)
        if first and not (body.get("status") or {}).get("observedGeneration"):
            kopf.info(
                body,
                reason="Created",
                message="created Deployment, Service and PodDisruptionBudget",
            )
        elif (
            not first
            or (body.get("status") or {}).get("observedGeneration") != pool.metadata.generation
        ):
            kopf.info(
                body, reason="Updated", message=f"applied generation {pool.metadata.generation}"
            )

    def _needs_apply(self, key: Key, pool: ModelPool) -> bool:
        record = self.applied.get(key)
        if key in self.stale or record is None or record[0] != pool.metadata.generation:
            return True
        dep = self.deployments.get(key)
        return dep is None or _child_fingerprint(dep) != record[1].get("Deployment")

    async def reconcile(self, key: Key) -> None:
        lock = self.locks.setdefault(key, asyncio.Lock())
        if lock.locked():
            self.dirty.add(key)
            return
        async with lock:
            while True:
                self.dirty.discard(key)
                try:
                    async with self.slots:
                        await self._reconcile_once(key)
                except Exception as exc:  # the operator never crash-loops on one pool
                    self._failed(key, exc)
                else:
                    self.retry.succeeded(key)
                if key not in self.dirty:
                    break

    def _failed(self, key: Key, exc: Exception) -> None:
        if namespace_terminating(exc):
            log.info("%s/%s: namespace is being deleted; not retrying", *key)
            return
        delay = self.retry.failed(key)
        if isinstance(exc, ApplyFailed | ApiException):
            log.warning("reconciling %s/%s failed: %s; retrying in %.1fs", *key, exc, delay)
        else:  # a bug, not the API server: keep the traceback
            log.exception("reconciling %s/%s failed; retrying in %.1fs", *key, delay)
        body = self.pools.get(key)
        if body is not None and not isinstance(exc, ApplyFailed):
            message = kube.api_message(exc) if isinstance(exc, ApiException) else str(exc)
            kopf.warn(
                body, reason="ReconcileFailed", message=f"{message[:450]} (retry in {delay:g}s)"
            )

    def stand_down(self) -> None:
        """Leadership lost: no pending retry or scheduled pass may act for a standby."""
        self.retry.cancel_all()
        for task in list(self.tasks):
            task.cancel()

    async def _retry(self, key: Key) -> None:
        if key in self.pools:
            await self.reconcile(key)

    async def _reconcile_once(self, key: Key) -> None:
        body = self.pools.get(key)
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
            message = poolstatus.validation_message(exc)
            status = poolstatus.invalid_status(
                body["metadata"].get("generation"), previous, message, _now()
            )
            await self._write_status(key, body, previous, status)
            return

        placement = poolstatus.placement_problem(pool, list(self.nodes.values()))
        if self._needs_apply(key, pool):
            try:
                await self._apply_children(pool, body)
            except ApiException as exc:
                if namespace_terminating(exc):
                    raise
                message = f"applying the pool's objects failed: {kube.api_message(exc)}"
                failed = poolstatus.failed_status(
                    pool.metadata.generation, previous, poolstatus.APPLY_FAILED, message, _now()
                )
                await self._write_status(key, body, previous, failed)
                raise ApplyFailed(message) from exc
        pods = list(self.pods.get(key, {}).values())
        untils = await read_quota(poolstatus.quota_probe_targets(pool, pods), build.WORKER_PORT)
        now = _now()
        status = poolstatus.compute_status(
            pool,
            previous,
            self.deployments.get(key),
            pods,
            placement,
            now,
            quota=poolstatus.quota_problem(untils, now),
            nodes=list(self.nodes.values()),
        )
        await self._write_status(key, body, previous, status)

    async def _write_status(
        self, key: Key, body: Any, previous: ModelPoolStatus | None, status: ModelPoolStatus
    ) -> None:
        new = status.model_dump(by_alias=True, exclude_none=True, mode="json")
        old = previous.model_dump(by_alias=True, exclude_none=True, mode="json") if previous else {}
        if new == old:
            return  # unchanged: no write, no event
        # The autoscaler's fields are its own to write (a stale copy here would undo it).
        await kube.run(
            kube.patch_status, "modelpools", key[0], key[1], poolstatus.without_autoscaler(new)
        )
        body["status"] = new
        was = {c.type: c for c in (previous.conditions if previous else [])}
        for cond in status.conditions:
            before = was.get(cond.type)
            changed = before is None or before.status != cond.status or before.reason != cond.reason
            if cond.type == "Degraded" and cond.status == "True" and changed:
                kopf.warn(body, reason=cond.reason, message=cond.message)
            if cond.type == poolstatus.CAPACITY_STARVED and cond.status == "True" and changed:
                kopf.warn(body, reason=poolstatus.SCALE_UP_BLOCKED, message=cond.message)
            if cond.type == "Ready" and changed and cond.status == "True":
                kopf.info(body, reason="Ready", message=cond.message)

    def prime_nodes(self) -> None:
        """Fill the node cache before any pool is judged: otherwise the first pools
        reconciled after a start look unplaceable until the node watch catches up."""
        from kubernetes import client as k8s

        nodes = k8s.CoreV1Api(kube.api_client()).list_node()
        self.nodes = {
            n.metadata.name: poolstatus.summarize_node(kube.sanitize(n)) for n in nodes.items
        }

    def _schedule(self, key: Key) -> None:
        """Reconcile in the background: the watch handler returns at once, so kopf does
        not hold thousands of raw event bodies while their pools wait for an API thread."""
        lock = self.locks.get(key)
        if lock is not None and lock.locked() and key in self.dirty:
            return  # a pass is already running and will go round once more
        task = asyncio.get_running_loop().create_task(self.reconcile(key))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def pool_event(self, event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        key = _key(body["metadata"])
        if event["type"] == "DELETED":
            self.pools.pop(key, None)
            self.applied.pop(key, None)
            self.stale.discard(key)
            self.deployments.pop(key, None)
            self.deployment_events.pop(key, None)
            self.pods.pop(key, None)
            self.retry.forget(key)
            return
        self.pools[key] = compact(body, ("apiVersion", "kind", "spec", "status"))
        self._schedule(key)

    async def deployment_event(self, event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        await self._child_event("Deployment", event, body)

    async def service_event(self, event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        await self._child_event("Service", event, body)

    async def pdb_event(self, event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        await self._child_event("PodDisruptionBudget", event, body)

    async def network_policy_event(self, event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        await self._child_event("NetworkPolicy", event, body)

    async def _child_event(self, kind: str, event: kopf.RawEvent, body: kopf.Body) -> None:
        pool = _pool_of(body["metadata"].get("labels"))
        if pool is None:
            return
        key = (body["metadata"]["namespace"], pool)
        record = self.applied.get(key)
        if kind == "Deployment":
            self.deployment_events[key] = self.deployment_events.get(key, 0) + 1
        if event["type"] == "DELETED":
            if kind == "Deployment":
                self.deployments.pop(key, None)
            drifted = True  # gone: the next pass re-applies it
        else:
            if kind == "Deployment":
                self.deployments[key] = compact(body)
            # Edited by someone else: the next pass restores it.
            drifted = record is not None and _child_fingerprint(dict(body)) != record[1].get(kind)
        if key in self.pools:
            if drifted:
                self.stale.add(key)
            self._schedule(key)

    async def pod_event(self, event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        pool = _pool_of(body["metadata"].get("labels"))
        if pool is None:
            return
        key = (body["metadata"]["namespace"], pool)
        pods = self.pods.setdefault(key, {})
        if event["type"] == "DELETED":
            pods.pop(body["metadata"]["name"], None)
        else:
            pods[body["metadata"]["name"]] = poolstatus.pod_digest(dict(body))
        if key in self.pools:
            self._schedule(key)

    async def node_event(self, event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        name = body["metadata"]["name"]
        before = self.nodes.get(name)
        if event["type"] == "DELETED":
            self.nodes.pop(name, None)
        else:
            self.nodes[name] = poolstatus.summarize_node(dict(body))
        if self.nodes.get(name) != before:
            # Capacity changed: pools that were (or might become) unplaceable re-check.
            for key in list(self.pools):
                self._schedule(key)

    async def resync_forever(self, interval: float = 60.0) -> None:
        """Safety net against a missed event; normally every pass is a no-op."""
        while True:
            await asyncio.sleep(interval)
            for key in list(self.pools):
                await self.reconcile(key)
