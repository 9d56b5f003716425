"""Canary controller: the thin shell around the pure canary core.

One driver task per Canary repeats a tick in Argo Rollouts' shape:

    observed = await observe(key)        # the Canary, its pools' readiness, measurements
    decision = decide(...)               # pure: next status + actions
    await write_status(observed, ...)    # one status patch, only when it changed
    await apply(observed, actions)       # traffic through the TrafficRouter port, ...

and sleeps until decide()'s requeue_after or the next change of the Canary. All state
lives in the Canary's status, so a restarted operator (or this one in its next
leadership term) continues where the last one stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, assert_never

import kopf
from kubernetes import client as k8s
from prometheus_client import Counter, Gauge, Histogram
from pydantic import ValidationError

from modelfleet import GROUP, VERSION
from modelfleet.api.canary import ACTIVE_PHASES, PHASES, Canary, CanaryStatus, ProviderSpec
from modelfleet.api.common import parse_time
from modelfleet.builders.modelpool import selector_labels
from modelfleet.builders.poolstatus import CAPACITY_STARVED
from modelfleet.canary import (
    ACTION_ANNOTATION,
    Action,
    Decision,
    EmitEvent,
    MetricsProvider,
    Observations,
    PoolReadiness,
    Promote,
    RecordAnalysis,
    RollBack,
    ScaleDownStable,
    ScalePool,
    SetWeight,
    TrafficRouter,
    TrafficTarget,
    collect_analysis,
    decide,
    plan_analysis,
)
from modelfleet.canary.capacity import PoolSize, apply_plan
from modelfleet.controllers import kube
from modelfleet.controllers.replay import ReplayRunner
from modelfleet.providers import provider_for

log = logging.getLogger("modelfleet.canary")
Key = tuple[str, str]
ProviderFactory = Callable[[ProviderSpec, Sequence[str]], MetricsProvider]

# Process-wide (the Prometheus registry is): they carry on across leadership terms.
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
MAX_SLEEP = 30.0
RETRY_AFTER_ERROR = 2.0


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Scaler(Protocol):
    """Writes a pool's replicas (spec.capacity shift)."""

    async def scale(self, namespace: str, pool: str, replicas: int) -> None: ...


def _patch_scale(namespace: str, pool: str, replicas: int) -> None:
    k8s.CustomObjectsApi(kube.api_client()).patch_namespaced_custom_object_scale(
        GROUP,
        VERSION,
        namespace,
        "modelpools",
        pool,
        {"spec": {"replicas": replicas}},
        _content_type="application/merge-patch+json",
    )


class KubeScaler:
    """Through the ModelPool's scale subresource, the door `kubectl scale` and an HPA use."""

    async def scale(self, namespace: str, pool: str, replicas: int) -> None:
        await kube.run(_patch_scale, namespace, pool, replicas)


class PodCounter(Protocol):
    """Counts a pool's pods, terminating ones too: they hold their GPUs until they exit."""

    async def count(self, namespace: str, pool: str) -> int: ...


def _count_pods(namespace: str, pool: str) -> int:
    selector = ",".join(f"{k}={v}" for k, v in selector_labels(pool).items())
    core = k8s.CoreV1Api(kube.api_client())
    return len(core.list_namespaced_pod(namespace, label_selector=selector).items)


class KubePodCounter:
    async def count(self, namespace: str, pool: str) -> int:
        result: int = await kube.run(_count_pods, namespace, pool)
        return result


def pool_size(body: dict[str, Any] | None) -> PoolSize | None:
    """A ModelPool's replicas as spec.capacity shift sizes it (None: no such pool)."""
    if body is None:
        return None
    spec, status = body.get("spec") or {}, body.get("status") or {}

    def count(value: Any) -> int:
        return value if isinstance(value, int) and value >= 0 else 0

    return PoolSize(
        replicas=count(spec.get("replicas", 1)),
        pods=count(status.get("replicas")),
        ready=count(status.get("readyReplicas")),
        autoscaled=spec.get("autoscaling") is not None,
    )


def starved_message(status: dict[str, Any]) -> str | None:
    """The pool's CapacityStarved condition's message when it is True (pool status)."""
    for c in status.get("conditions") or []:
        if c.get("type") == CAPACITY_STARVED and c.get("status") == "True":
            return str(c.get("message") or c.get("reason") or "not enough GPUs")
    return None


@dataclass
class Driver:
    task: asyncio.Task[None]
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    provider: MetricsProvider | None = None
    provider_key: Any = None


@dataclass(frozen=True)
class Observed:
    """What one tick saw: decide()'s inputs plus the raw body (Events refer to it)."""

    key: Key
    body: dict[str, Any]
    canary: Canary
    status: CanaryStatus
    observations: Observations
    now: dt.datetime
    stable_size: PoolSize | None = None
    candidate_size: PoolSize | None = None

    @property
    def target(self) -> TrafficTarget:
        return TrafficTarget.of(*self.key, self.canary.spec)


def target_of(body: Any) -> TrafficTarget:
    """The traffic target named by a raw Canary (a deleted or invalid one included)."""
    meta, spec = body["metadata"], body.get("spec") or {}
    return TrafficTarget(
        namespace=meta["namespace"],
        canary=meta["name"],
        routing_policy=str(spec.get("routingPolicy", "")),
        route=str(spec.get("route", "")),
        stable_pool=str(spec.get("stablePool", "")),
        candidate_pool=str(spec.get("candidatePool", "")),
    )


def record_metrics(key: Key, old: CanaryStatus, new: CanaryStatus, now: dt.datetime) -> None:
    ns, name = key
    for phase in PHASES:
        PHASE.labels(ns, name, phase).set(1 if new.phase == phase else 0)
    WEIGHT.labels(ns, name).set(new.canary_weight or 0)
    if old.step_started_at and old.step_started_at != new.step_started_at:
        with contextlib.suppress(ValueError):
            started = parse_time(old.step_started_at)
            STEP_SECONDS.labels(ns, name).observe(max(0.0, (now - started).total_seconds()))


class CanaryController:
    """The canary drivers of one leadership term and the ports they act through."""

    def __init__(
        self,
        traffic: TrafficRouter,
        router_urls: Sequence[str] = (),
        *,
        objects: kube.Objects | None = None,
        events: kube.Events | None = None,
        providers: ProviderFactory = provider_for,
        clock: Callable[[], dt.datetime] = _now,
        replays: ReplayRunner | None = None,
        scaler: Scaler | None = None,
        pods: PodCounter | None = None,
    ) -> None:
        self.traffic = traffic
        self.scaler: Scaler = scaler or KubeScaler()
        self.pods: PodCounter = pods or KubePodCounter()
        # Pre-flight replays (spec.replay), each in a task beside its canary's driver.
        self.replays = replays or ReplayRunner(router_urls, lambda: None, clock=clock)
        self.router_urls = tuple(router_urls)
        self.objects: kube.Objects = objects or kube.KubeObjects()
        self.events: kube.Events = events or kube.KopfEvents()
        self.providers = providers
        self.clock = clock
        self.drivers: dict[Key, Driver] = {}
        self.stopped = False

    def register(self, registry: kopf.OperatorRegistry) -> None:
        kopf.on.event(GROUP, VERSION, "canaries", registry=registry)(self.canary_event)

    # --- one tick -----------------------------------------------------------------------

    async def tick(self, key: Key, driver: Driver) -> float | None:
        """One pass; returns seconds until the next one (None: only on change)."""
        observed = await self.observe(key, driver)
        if observed is None:
            return None
        o = observed
        decision = decide(o.canary.spec, o.status, o.observations, o.now)
        decision = apply_plan(o.canary.spec, decision, o.stable_size, o.candidate_size)
        await self.write_status(observed, decision)
        await self.apply(observed, decision.actions)
        record_metrics(key, o.status, decision.next_status, o.now)
        return decision.requeue_after

    async def observe(self, key: Key, driver: Driver) -> Observed | None:
        """Read the Canary and its pools fresh from the API and measure what
        plan_analysis() asks for. None: the Canary is gone or cannot be read."""
        ns, name = key
        body = await self.objects.get("canaries", ns, name)
        if body is None:
            return None
        try:
            canary = Canary.model_validate(
                {k: body[k] for k in ("apiVersion", "kind", "metadata", "spec") if k in body}
            )
            status = CanaryStatus.model_validate(body.get("status") or {})
        except ValidationError as exc:
            self.events.post(body, "Warning", "InvalidSpec", str(exc)[:500])
            return None
        now = self.clock()
        (stable, stable_size), (candidate, candidate_size) = await asyncio.gather(
            self._pool(ns, canary.spec.stable_pool),
            self._pool(ns, canary.spec.candidate_pool),
        )
        if canary.spec.capacity == "shift" and stable_size is not None:
            stable_size = await self._with_pods(ns, canary.spec.stable_pool, stable_size)
        analysis = None
        plan = plan_analysis(canary.spec, status, now)
        if plan is not None:
            provider = self._provider(driver, canary.spec.analysis.provider)
            analysis = await collect_analysis(provider, plan, canary.spec, ns)
            now = self.clock()
        ready = stable.ready and candidate.ready
        observations = Observations(
            stable=stable,
            candidate=candidate,
            generation=body["metadata"].get("generation"),
            analysis=analysis,
            action=(body["metadata"].get("annotations") or {}).get(ACTION_ANNOTATION),
            replay=self.replays.poll(key, canary.spec, status, ready, driver.wake.set),
        )
        return Observed(key, body, canary, status, observations, now, stable_size, candidate_size)

    async def write_status(self, observed: Observed, decision: Decision) -> None:
        """The tick's one status write, skipped when nothing changed."""
        if not decision.status_changed(observed.status):
            return
        new = decision.next_status.model_dump(by_alias=True, exclude_none=True, mode="json")
        ns, name = observed.key
        await self.objects.patch_status("canaries", ns, name, new)
        observed.body["status"] = new

    async def apply(self, observed: Observed, actions: Sequence[Action]) -> None:
        """Each action is idempotent: decide() repeats them on every tick. The match is
        exhaustive (mypy checks it), so a new Action cannot be silently dropped."""
        ns, name = observed.key
        for action in actions:
            match action:
                case SetWeight(weight=weight):
                    await self.traffic.set_weight(observed.target, weight)
                case Promote():
                    await self.traffic.promote(observed.target)
                case ScaleDownStable(pool=pool):
                    await self._scale_down(ns, pool)
                case ScalePool(pool=pool, replicas=replicas):
                    await self.scaler.scale(ns, pool, replicas)
                case EmitEvent(type=type_, reason=reason, message=message):
                    self.events.post(observed.body, type_, reason, message)
                case RollBack(reason=reason):
                    ROLLBACKS.labels(ns, name, reason).inc()
                case RecordAnalysis(record=record, early=early):
                    ANALYSES.labels(ns, name, record.result, str(early).lower()).inc()
                case _:
                    assert_never(action)

    # --- helpers of the tick ------------------------------------------------------------

    async def _pool_readiness(self, namespace: str, name: str) -> PoolReadiness:
        return (await self._pool(namespace, name))[0]

    async def _pool(self, namespace: str, name: str) -> tuple[PoolReadiness, PoolSize | None]:
        """The pool's readiness (starvation included) and its size for spec.capacity."""
        body = await self.objects.get("modelpools", namespace, name)
        if body is None:
            return PoolReadiness(False, f"ModelPool {name!r} does not exist"), None
        status = body.get("status") or {}
        replicas = status.get("readyReplicas")
        ready_replicas = replicas if isinstance(replicas, int) and replicas >= 0 else None
        starved = starved_message(status)
        if status.get("phase") == "Ready" and (ready_replicas or 0) > 0:
            return PoolReadiness(True, ready_replicas=ready_replicas, starved=starved), pool_size(
                body
            )
        ready: dict[str, Any] = next(
            (c for c in status.get("conditions", []) if c.get("type") == "Ready"), {}
        )
        return PoolReadiness(
            False,
            f"ModelPool {name!r} not ready: {ready.get('message') or status.get('phase')}",
            ready_replicas,
            starved,
        ), pool_size(body)

    def _provider(self, driver: Driver, spec: ProviderSpec) -> MetricsProvider:
        key = (spec.model_dump_json(), self.router_urls)
        if driver.provider is None or driver.provider_key != key:
            driver.provider = self.providers(spec, self.router_urls)
            driver.provider_key = key
        return driver.provider

    async def _scale_down(self, namespace: str, pool: str) -> None:
        body = await self.objects.get("modelpools", namespace, pool)
        if body is not None and body["spec"].get("replicas") != 0:
            await self.objects.patch("modelpools", namespace, pool, {"spec": {"replicas": 0}})

    async def _with_pods(self, namespace: str, pool: str, size: PoolSize) -> PoolSize:
        """The stable's size with its terminating pods counted: the candidate grows only
        once they are gone (status.replicas leaves them out)."""
        try:
            pods = await self.pods.count(namespace, pool)
        except Exception as exc:  # the pool's status.replicas still bounds it
            log.warning("counting pods of pool %s/%s failed: %s", namespace, pool, exc)
            return size
        return dataclasses.replace(size, pods=max(size.pods, pods))

    async def _restore_stable(self, body: Any) -> None:
        """A `capacity: shift` canary deleted before success gives the stable back the
        replicas it had when the canary began (status.capacity.fullReplicas)."""
        spec, status = body.get("spec") or {}, body.get("status") or {}
        full = (status.get("capacity") or {}).get("fullReplicas")
        if spec.get("capacity") != "shift" or not isinstance(full, int):
            return
        if status.get("phase") == "Succeeded" or not spec.get("stablePool"):
            return
        ns, pool = body["metadata"]["namespace"], str(spec["stablePool"])
        try:
            stable = pool_size(await self.objects.get("modelpools", ns, pool))
            if stable is not None and not stable.autoscaled and stable.replicas < full:
                await self.scaler.scale(ns, pool, full)
        except Exception as exc:  # the route still goes back; the pool keeps its size
            log.warning(
                "restoring stable pool %s/%s to %d replicas failed: %s", ns, pool, full, exc
            )

    # --- drivers ------------------------------------------------------------------------

    async def _drive(self, key: Key) -> None:
        driver = self.drivers[key]
        while True:
            driver.wake.clear()
            try:
                delay = await self.tick(key, driver)
            except asyncio.CancelledError:
                raise
            except Exception:  # keep driving: the next tick starts from the cluster's state
                log.exception("canary %s/%s tick failed", *key)
                delay = RETRY_AFTER_ERROR
            timeout = MAX_SLEEP if delay is None else min(MAX_SLEEP, max(0.05, delay))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(driver.wake.wait(), timeout=timeout)

    async def canary_event(self, event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        if self.stopped:  # standing down: a standby must not act
            return
        key = (body["metadata"]["namespace"], body["metadata"]["name"])
        driver = self.drivers.get(key)
        if event["type"] == "DELETED":
            self.replays.forget(key)
            if driver is not None:
                driver.task.cancel()
                await asyncio.wait({driver.task})  # its last tick must not outlive the release
                if driver.provider is not None:
                    await driver.provider.close()
                self.drivers.pop(key, None)
            # The route is the policy's own again, on a stable of its full size.
            await self._restore_stable(body)
            await self.traffic.set_weight(target_of(body), 0)
            return
        if driver is None or driver.task.done():
            task = asyncio.get_running_loop().create_task(self._drive(key))
            self.drivers[key] = Driver(task=task)
        else:
            driver.wake.set()

    async def restore_weights(self, namespaces: Sequence[str]) -> None:
        """Before this term compiles any policy: push the weight each active Canary's
        status records (its last decision), so the first route table of a new leader
        keeps every split until that canary's first tick."""
        scopes: list[str | None] = list(namespaces) or [None]  # None: all namespaces
        try:
            bodies = [body for ns in scopes for body in await self.objects.list("canaries", ns)]
        except Exception as exc:  # the first ticks set the weights anyway
            log.warning("listing canaries to restore their weights failed: %s", exc)
            return
        for body in bodies:
            status = body.get("status") or {}
            weight = status.get("canaryWeight")
            # Under shift the route may trail canaryWeight, a rolled-back one's too.
            routed = (status.get("capacity") or {}).get("routedWeight")
            held = isinstance(routed, int) and routed != weight
            weight = routed if isinstance(routed, int) else weight
            if (status.get("phase") in ACTIVE_PHASES or held) and isinstance(weight, int):
                await self.traffic.set_weight(target_of(body), weight)

    def stop(self) -> None:
        """Leadership lost: every driver stops at once."""
        self.stopped = True
        for driver in self.drivers.values():
            driver.task.cancel()
        for key in list(self.replays.jobs):
            self.replays.forget(key)

    async def close(self) -> None:
        self.stop()
        for driver in self.drivers.values():
            if driver.provider is not None:
                await driver.provider.close()
        self.drivers.clear()
        await self.replays.close()
