"""Canary controller: the thin shell around the pure canary core.

One driver task per Canary repeats a tick: read the Canary and its pools fresh
from the API (all state lives there, so a restarted operator continues where
the last one stopped), measure what plan_analysis() asks for, call decide(),
apply its actions idempotently, write status only when it changed, and sleep
until decide()'s requeue_after or the next change of the Canary.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import kopf
from prometheus_client import Counter, Gauge, Histogram
from pydantic import ValidationError

from modelfleet import GROUP, VERSION
from modelfleet.api.canary import Canary, CanaryStatus
from modelfleet.canary import (
    ACTION_ANNOTATION,
    EmitEvent,
    Observations,
    PoolReadiness,
    Promote,
    RecordAnalysis,
    RollBack,
    ScaleDownStable,
    decide,
    plan_analysis,
)
from modelfleet.canary.measure import collect_analysis
from modelfleet.canary.ports import MetricsProvider
from modelfleet.controllers import kube, routingpolicy
from modelfleet.providers import provider_for

log = logging.getLogger("modelfleet.canary")
Key = tuple[str, str]

PHASE = Gauge(
    "modelfleet_canary_phase", "1 for the Canary's current phase", ["namespace", "canary", "phase"]
)
WEIGHT = Gauge("modelfleet_canary_weight", "Candidate traffic percent", ["namespace", "canary"])
ANALYSES = Counter(
    "modelfleet_canary_analyses_total",
    "Judged analyses by result",
    ["namespace", "canary", "result", "early"],
)
ROLLBACKS = Counter(
    "modelfleet_canary_rollbacks_total", "Rollbacks by reason", ["namespace", "canary", "reason"]
)
STEP_SECONDS = Histogram(
    "modelfleet_canary_step_duration_seconds",
    "Time from a step's start to its analysis",
    ["namespace", "canary"],
    buckets=(1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
)
PHASES = ("Pending", "Progressing", "Paused", "Succeeded", "RolledBack", "Failed")
MAX_SLEEP = 30.0


@dataclass
class Driver:
    task: asyncio.Task[None]
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    provider: MetricsProvider | None = None
    provider_key: Any = None


DRIVERS: dict[Key, Driver] = {}
ROUTER_URLS: list[str] = [u for u in os.environ.get("MODELFLEET_ROUTER_URLS", "").split(",") if u]


def configure(router_urls: list[str]) -> None:
    ROUTER_URLS[:] = router_urls


async def _pool_readiness(namespace: str, name: str) -> PoolReadiness:
    body = await kube.run(kube.get_custom, "modelpools", namespace, name)
    if body is None:
        return PoolReadiness(False, f"ModelPool {name!r} does not exist")
    status = body.get("status") or {}
    if status.get("phase") == "Ready" and (status.get("readyReplicas") or 0) > 0:
        return PoolReadiness(True)
    ready: dict[str, Any] = next(
        (c for c in status.get("conditions", []) if c.get("type") == "Ready"), {}
    )
    return PoolReadiness(
        False, f"ModelPool {name!r} not ready: {ready.get('message') or status.get('phase')}"
    )


def _provider(driver: Driver, canary: Canary) -> MetricsProvider:
    key = (canary.spec.analysis.provider.model_dump_json(), tuple(ROUTER_URLS))
    if driver.provider is None or driver.provider_key != key:
        driver.provider = provider_for(canary.spec.analysis.provider, ROUTER_URLS)
        driver.provider_key = key
    return driver.provider


async def _promote(canary: Canary, namespace: str) -> None:
    """Point the route at the candidate for good; optimistic concurrency on the policy."""
    spec = canary.spec
    for _ in range(5):
        policy = await kube.run(kube.get_custom, "routingpolicies", namespace, spec.routing_policy)
        if policy is None:
            return
        routes = policy["spec"]["routes"]
        route = next((r for r in routes if r["name"] == spec.route), None)
        if route is None or route["pool"] == spec.candidate_pool:
            return
        route["pool"] = spec.candidate_pool
        # The old stable becomes the first fallback; the candidate must not be its own.
        fallbacks = [
            p
            for p in route.get("fallbacks", [])
            if p not in (spec.candidate_pool, spec.stable_pool)
        ]
        route["fallbacks"] = [spec.stable_pool, *fallbacks][:8]
        patch = {
            "metadata": {"resourceVersion": policy["metadata"]["resourceVersion"]},
            "spec": {"routes": routes},
        }
        try:
            await kube.run(
                kube.patch_custom, "routingpolicies", namespace, spec.routing_policy, patch
            )
            return
        except Exception as exc:  # 409: someone changed the policy meanwhile; read again
            if getattr(exc, "status", None) != 409:
                raise


async def _scale_down(namespace: str, pool: str) -> None:
    body = await kube.run(kube.get_custom, "modelpools", namespace, pool)
    if body is not None and body["spec"].get("replicas") != 0:
        await kube.run(kube.patch_custom, "modelpools", namespace, pool, {"spec": {"replicas": 0}})


def _record_metrics(key: Key, old: CanaryStatus, new: CanaryStatus, now: dt.datetime) -> None:
    ns, name = key
    for phase in PHASES:
        PHASE.labels(ns, name, phase).set(1 if new.phase == phase else 0)
    WEIGHT.labels(ns, name).set(new.canary_weight or 0)
    if old.step_started_at and old.step_started_at != new.step_started_at:
        with contextlib.suppress(ValueError):
            started = dt.datetime.fromisoformat(old.step_started_at.replace("Z", "+00:00"))
            STEP_SECONDS.labels(ns, name).observe(max(0.0, (now - started).total_seconds()))


async def tick(key: Key, driver: Driver) -> float | None:
    ns, name = key
    body = await kube.run(kube.get_custom, "canaries", ns, name)
    if body is None:
        return None
    try:
        canary = Canary.model_validate(
            {k: body[k] for k in ("apiVersion", "kind", "metadata", "spec") if k in body}
        )
        status = CanaryStatus.model_validate(body.get("status") or {})
    except ValidationError as exc:
        kopf.warn(body, reason="InvalidSpec", message=str(exc)[:500])
        return None
    now = dt.datetime.now(dt.UTC)
    stable, candidate = await asyncio.gather(
        _pool_readiness(ns, canary.spec.stable_pool),
        _pool_readiness(ns, canary.spec.candidate_pool),
    )
    analysis = None
    plan = plan_analysis(canary.spec, status, now)
    if plan is not None:
        analysis = await collect_analysis(_provider(driver, canary), plan, canary.spec, ns)
        now = dt.datetime.now(dt.UTC)
    observations = Observations(
        stable=stable,
        candidate=candidate,
        generation=body["metadata"].get("generation"),
        analysis=analysis,
        action=(body["metadata"].get("annotations") or {}).get(ACTION_ANNOTATION),
    )
    decision = decide(canary.spec, status, observations, now)
    new = decision.next_status
    if decision.status_changed(status):
        await kube.run(
            kube.patch_status,
            "canaries",
            ns,
            name,
            new.model_dump(by_alias=True, exclude_none=True, mode="json"),
        )
        body["status"] = new.model_dump(by_alias=True, exclude_none=True, mode="json")
    # Weights live in the compiled route table: recompile now rather than wait for the
    # watch event (idempotent; no write when the table is unchanged).
    routingpolicy.CANARIES[key] = body
    if (ns, canary.spec.routing_policy) in routingpolicy.POLICIES:
        await routingpolicy.reconcile((ns, canary.spec.routing_policy))
    for action in decision.actions:
        if isinstance(action, Promote):
            await _promote(canary, ns)
        elif isinstance(action, ScaleDownStable):
            await _scale_down(ns, action.pool)
        elif isinstance(action, EmitEvent):
            kopf.event(body, type=action.type, reason=action.reason, message=action.message)
        elif isinstance(action, RollBack):
            ROLLBACKS.labels(ns, name, action.reason).inc()
        elif isinstance(action, RecordAnalysis):
            ANALYSES.labels(ns, name, action.record.result, str(action.early).lower()).inc()
    _record_metrics(key, status, new, now)
    return decision.requeue_after


async def _drive(key: Key) -> None:
    driver = DRIVERS[key]
    while True:
        driver.wake.clear()
        try:
            delay = await tick(key, driver)
        except asyncio.CancelledError:
            raise
        except Exception:  # keep driving: the next tick starts from the cluster's state
            log.exception("canary %s/%s tick failed", *key)
            delay = 2.0
        timeout = MAX_SLEEP if delay is None else min(MAX_SLEEP, max(0.05, delay))
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(driver.wake.wait(), timeout=timeout)


@kopf.on.event(GROUP, VERSION, "canaries")  # type: ignore[arg-type]
async def canary_event(event: dict[str, Any], body: kopf.Body, **_: Any) -> None:
    key = (body["metadata"]["namespace"], body["metadata"]["name"])
    driver = DRIVERS.get(key)
    if event["type"] == "DELETED":
        if driver is not None:
            driver.task.cancel()
            if driver.provider is not None:
                await driver.provider.close()
            DRIVERS.pop(key, None)
        return
    if driver is None or driver.task.done():
        DRIVERS[key] = Driver(task=asyncio.get_running_loop().create_task(_drive(key)))
    else:
        driver.wake.set()


@kopf.on.cleanup()
async def stop_drivers(**_: Any) -> None:
    for driver in DRIVERS.values():
        driver.task.cancel()
        if driver.provider is not None:
            await driver.provider.close()
    DRIVERS.clear()
