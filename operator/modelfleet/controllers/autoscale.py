"""Autoscale controller: every autoscaled ModelPool gets a kopf timer (~1 s) that reads
the routers' demand, asks the pure autoscaler (modelfleet.autoscale.core) for the
replicas, and writes them through the pool's scale subresource, the same door
`kubectl scale` and an HPA use. Its status fields (desiredReplicas, lastScaleTime,
scaleReason, demand) are merged into the pool's status; the ModelPool controller
carries them over.

Leadership: the timers live in the term's registry, so they stop with the term, and
what the autoscaler remembers (windows, stabilisation) is dropped with it: the next
leader starts with no history and waits a whole stable window before scaling down.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import time
from collections.abc import Callable
from typing import Any

import kopf
from kubernetes import client as k8s
from kubernetes.client.rest import ApiException
from prometheus_client import Counter, Gauge
from pydantic import ValidationError

from modelfleet import GROUP, VERSION
from modelfleet.api.common import format_time
from modelfleet.api.modelpool import ModelPool
from modelfleet.autoscale.core import Decision, Params, State, decide
from modelfleet.builders import poolstatus
from modelfleet.controllers import kube
from modelfleet.providers.demand import DemandReader

log = logging.getLogger("modelfleet.autoscale")
Key = tuple[str, str]
TICK_S = 1.0
# A reason that changes without a scale (WithinTolerance <-> StableWindow) is written at
# most this often: one status write per pool per second would load the API server.
REASON_EVERY_S = 5.0

_LABELS = ["namespace", "pool"]
DESIRED = Gauge("modelfleet_autoscaler_desired_replicas", "Autoscaler's replicas", _LABELS)
DEMAND = Gauge("modelfleet_autoscaler_demand", "Stable-window demand (requests)", _LABELS)
PANIC = Gauge("modelfleet_autoscaler_panic", "1 while the pool is in panic mode", _LABELS)
CHANGES = Counter(
    "modelfleet_autoscaler_scale_changes_total",
    "Changes of spec.replicas by the autoscaler",
    [*_LABELS, "direction"],
)


def patch_scale(namespace: str, name: str, replicas: int) -> None:
    """spec.replicas through the scale subresource (RBAC: modelpools/scale)."""
    k8s.CustomObjectsApi(kube.api_client()).patch_namespaced_custom_object_scale(
        GROUP,
        VERSION,
        namespace,
        "modelpools",
        name,
        {"spec": {"replicas": replicas}},
        _content_type="application/merge-patch+json",
    )


def _autoscaled(spec: kopf.Spec, **_: Any) -> bool:
    return bool(spec.get("autoscaling"))


def blocked_message(
    pool: ModelPool, desired: int, nodes: list[poolstatus.NodeSummary]
) -> str | None:
    """Why a scale-up to `desired` cannot be placed, judged from the node cache."""
    gpu = pool.spec.gpu_or_default()
    if gpu.count == 0:
        return None
    matching = [
        n for n in nodes if n.schedulable and (gpu.product is None or n.gpu_product == gpu.product)
    ]
    offered = sum(n.gpus for n in matching)
    if desired * gpu.count <= offered:
        return None
    return (
        f"scale-up to {desired} replicas needs {desired * gpu.count} GPUs of product "
        f"{gpu.product or poolstatus.ANY_PRODUCT}; schedulable nodes offer {offered}"
    )


class AutoscaleController:
    """The autoscaler for one leadership term."""

    def __init__(
        self,
        reader: DemandReader,
        nodes: Callable[[], list[poolstatus.NodeSummary]] = list,
        *,
        clock: Callable[[], float] = time.monotonic,
        tick_s: float = TICK_S,
    ) -> None:
        self.reader = reader
        self.nodes = nodes
        self.clock = clock
        self.tick_s = tick_s
        self.states: dict[Key, State] = {}
        self.blocked: dict[Key, int] = {}  # desired replicas last reported as blocked
        self.reason_written: dict[Key, float] = {}
        self.stopped = False

    def register(self, registry: kopf.OperatorRegistry) -> None:
        kopf.timer(
            GROUP,
            VERSION,
            "modelpools",
            interval=self.tick_s,
            when=_autoscaled,
            registry=registry,
        )(self.tick)
        kopf.on.event(GROUP, VERSION, "modelpools", registry=registry)(self.forget)

    async def forget(self, event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        if event["type"] == "DELETED" or not (body.get("spec") or {}).get("autoscaling"):
            key = (body["metadata"]["namespace"], body["metadata"]["name"])
            self.states.pop(key, None)
            self.blocked.pop(key, None)
            self.reason_written.pop(key, None)
            for gauge in (DESIRED, DEMAND, PANIC):
                with contextlib.suppress(KeyError):
                    gauge.remove(*key)
            for direction in ("up", "down"):
                with contextlib.suppress(KeyError):
                    CHANGES.remove(*key, direction)

    def stop(self) -> None:
        self.stopped = True

    async def close(self) -> None:
        self.stop()
        await self.reader.close()

    async def tick(self, body: kopf.Body, **_: Any) -> None:
        if self.stopped:
            return
        try:
            await self._tick(body)
        except ApiException as exc:  # the next tick tries again
            log.warning("autoscaling %s/%s: %s", *_key(body), kube.api_message(exc))
        except Exception:  # never let one pool's bug stop the timer
            log.exception("autoscaling %s/%s failed", *_key(body))

    async def _tick(self, body: kopf.Body) -> None:
        key = _key(body)
        try:
            pool = ModelPool.model_validate(
                {k: body[k] for k in ("apiVersion", "kind", "metadata", "spec") if k in body}
            )
        except ValidationError:
            return  # the ModelPool controller reports InvalidSpec
        spec = pool.spec.autoscaling
        if spec is None:
            return
        status = dict(body.get("status") or {})
        reading = await self.reader.read()
        demand = reading.of(*key)
        current = pool.spec.replicas
        ready = int(status.get("readyReplicas") or 0)
        d = decide(
            Params.of(spec), self.states.get(key, State()), self.clock(), demand, current, ready
        )
        if self.stopped:
            return  # leadership lost while reading: act on nothing
        self.states[key] = d.state
        DESIRED.labels(*key).set(d.desired)
        PANIC.labels(*key).set(1 if d.panicking else 0)
        if demand is not None:
            DEMAND.labels(*key).set(d.stable_demand)
        scaled = d.desired != current
        if scaled:
            await kube.run(patch_scale, key[0], key[1], d.desired)
            CHANGES.labels(*key, "up" if d.desired > current else "down").inc()
            kopf.info(body, reason="Scaled", message=f"{d.reason}: {d.message}"[:1000])
            log.info("%s/%s scaled %d -> %d (%s)", *key, current, d.desired, d.reason)
        self._report_blocked(key, pool, body, d)
        await self._write_status(key, status, d, demand is not None, scaled)

    def _report_blocked(self, key: Key, pool: ModelPool, body: kopf.Body, d: Decision) -> None:
        if d.desired <= int((body.get("status") or {}).get("readyReplicas") or 0):
            self.blocked.pop(key, None)
            return
        why = blocked_message(pool, d.desired, self.nodes())
        if why is None:
            self.blocked.pop(key, None)
        elif self.blocked.get(key) != d.desired:
            self.blocked[key] = d.desired
            kopf.warn(body, reason=poolstatus.SCALE_UP_BLOCKED, message=why)

    async def _write_status(
        self, key: Key, status: dict[str, Any], d: Decision, known: bool, scaled: bool
    ) -> None:
        patch: dict[str, Any] = {}
        if status.get("desiredReplicas") != d.desired:
            patch["desiredReplicas"] = d.desired
        reason = f"{d.reason}: {d.message}"[:512]
        # The reason's numbers move every tick; rewrite it only when the reason changes.
        now = self.clock()
        changed = (status.get("scaleReason") or "").split(":")[0] != d.reason
        if scaled or (changed and now - self.reason_written.get(key, -1e9) >= REASON_EVERY_S):
            self.reason_written[key] = now
            patch["scaleReason"] = reason
            if known:
                patch["demand"] = round(d.stable_demand, 3)
        if scaled:
            patch["lastScaleTime"] = format_time(dt.datetime.now(dt.UTC))
        if patch:
            await kube.run(kube.patch_status, "modelpools", key[0], key[1], patch)


def _key(body: Any) -> Key:
    return (body["metadata"]["namespace"], body["metadata"]["name"])
