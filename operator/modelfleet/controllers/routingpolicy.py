"""RoutingPolicy controller: validates references in context and publishes the
compiled route table (status.routes) that every router watches.

It is also the canary's traffic router (`modelfleet.canary.ports.TrafficRouter`):
set_weight() folds a canary's split into the route table at once (the table is what
routers apply, so a weight reaches them with one status write), promote() points the
route at the candidate in the policy's spec.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

import kopf
from pydantic import ValidationError

from modelfleet import GROUP, VERSION
from modelfleet.api.conditions import set_condition
from modelfleet.api.routingpolicy import RoutingPolicy, RoutingPolicySpec, RoutingPolicyStatus
from modelfleet.canary.ports import TrafficTarget
from modelfleet.controllers import kube
from modelfleet.controllers.requeue import Requeue, namespace_terminating
from modelfleet.routing.compile import COMPILED, CanaryWeight, compile_routes

log = logging.getLogger("modelfleet.routingpolicy")
Key = tuple[str, str]
PROMOTE_ATTEMPTS = 5  # reads of the policy when writers keep conflicting (HTTP 409)
MAX_FALLBACKS = 8


@dataclass(frozen=True)
class Override:
    """A canary's split of its route. `promoted`: the candidate has the route for good;
    it holds the route at 100% until the promoted spec reaches this controller, so
    routers never see the old stable in between."""

    target: TrafficTarget
    weight: int
    promoted: bool = False

    def in_effect(self, spec: RoutingPolicySpec) -> bool:
        if not self.promoted:
            return True
        route = next((r for r in spec.routes if r.name == self.target.route), None)
        return route is not None and route.pool == self.target.stable_pool


class RoutingPolicyController:
    """What this controller knows during one leadership term (rebuilt from the watches
    in the next one: a pool deleted while another operator led must not linger)."""

    def __init__(self, objects: kube.Objects | None = None, events: kube.Events | None = None):
        self.objects: kube.Objects = objects or kube.KubeObjects()
        self.events: kube.Events = events or kube.KopfEvents()
        self.policies: dict[Key, Any] = {}
        self.pools: dict[str, set[str]] = {}
        self.overrides: dict[Key, Override] = {}  # by Canary (namespace, name)
        self.locks: dict[Key, asyncio.Lock] = {}
        self.retry = Requeue(self._retry)

    def register(self, registry: kopf.OperatorRegistry) -> None:
        kopf.on.event(GROUP, VERSION, "routingpolicies", registry=registry)(self.policy_event)
        kopf.on.event(GROUP, VERSION, "modelpools", registry=registry)(self.pool_membership)

    def stand_down(self) -> None:
        self.retry.cancel_all()

    # --- the TrafficRouter port ---------------------------------------------------------

    async def set_weight(self, target: TrafficTarget, weight: int) -> None:
        await self._override(target, Override(target, weight) if weight > 0 else None)

    async def promote(self, target: TrafficTarget) -> None:
        await self._override(target, Override(target, 100, promoted=True))
        await self._promote_in_spec(target)

    async def _override(self, target: TrafficTarget, new: Override | None) -> None:
        key = (target.namespace, target.canary)
        old = self.overrides.get(key)
        if new == old:
            return
        if new is None:
            self.overrides.pop(key, None)
        else:
            self.overrides[key] = new
        policies = {(target.namespace, target.routing_policy)}
        if old is not None:  # the canary may have moved to another policy
            policies.add((old.target.namespace, old.target.routing_policy))
        for policy in sorted(policies):
            if policy in self.policies:
                await self.reconcile(policy)

    async def _promote_in_spec(self, target: TrafficTarget) -> None:
        """Optimistic concurrency on the policy: on a conflict, read it again."""
        ns, name = target.namespace, target.routing_policy
        for _ in range(PROMOTE_ATTEMPTS):
            policy = await self.objects.get("routingpolicies", ns, name)
            if policy is None:
                return
            routes = policy["spec"]["routes"]
            route = next((r for r in routes if r["name"] == target.route), None)
            if route is None or route["pool"] == target.candidate_pool:
                return
            route["pool"] = target.candidate_pool
            # The old stable becomes the first fallback; the candidate must not be its own.
            fallbacks = [
                p
                for p in route.get("fallbacks", [])
                if p not in (target.candidate_pool, target.stable_pool)
            ]
            route["fallbacks"] = [target.stable_pool, *fallbacks][:MAX_FALLBACKS]
            patch = {
                "metadata": {"resourceVersion": policy["metadata"]["resourceVersion"]},
                "spec": {"routes": routes},
            }
            try:
                await self.objects.patch("routingpolicies", ns, name, patch)
                return
            except Exception as exc:  # 409: someone changed the policy meanwhile
                if getattr(exc, "status", None) != 409:
                    raise

    # --- reconcile ----------------------------------------------------------------------

    def _canary_weights(self, key: Key, spec: RoutingPolicySpec) -> list[CanaryWeight]:
        return [
            CanaryWeight(t.route, t.stable_pool, t.candidate_pool, o.weight)
            for o in self.overrides.values()
            if (t := o.target).namespace == key[0]
            and t.routing_policy == key[1]
            and o.in_effect(spec)
        ]

    async def reconcile(self, key: Key) -> None:
        try:
            await self._reconcile(key)
        except Exception as exc:  # one policy's failure never stops the others
            if namespace_terminating(exc):
                return
            delay = self.retry.failed(key)
            log.exception("reconciling RoutingPolicy %s/%s failed; retrying in %.1fs", *key, delay)
        else:
            self.retry.succeeded(key)

    async def _retry(self, key: Key) -> None:
        if key in self.policies:
            await self.reconcile(key)

    async def _reconcile(self, key: Key) -> None:
        async with self.locks.setdefault(key, asyncio.Lock()):
            body = self.policies.get(key)
            if body is None:
                return
            previous, status = self._status(key, body, dt.datetime.now(dt.UTC))
            new = status.model_dump(by_alias=True, exclude_none=True, mode="json")
            old = previous.model_dump(by_alias=True, exclude_none=True, mode="json")
            if new == old:
                return
            await self.objects.patch_status("routingpolicies", key[0], key[1], new)
            body["status"] = new
            was = {c.type: c for c in previous.conditions}
            ready = next(c for c in status.conditions if c.type == "Ready")
            before = was.get("Ready")
            if before is None or (before.status, before.reason) != (ready.status, ready.reason):
                kind: kube.EventType = "Normal" if ready.status == "True" else "Warning"
                self.events.post(body, kind, ready.reason, ready.message)

    def _status(
        self, key: Key, body: Any, now: dt.datetime
    ) -> tuple[RoutingPolicyStatus, RoutingPolicyStatus]:
        """(previous, new) status of a policy from what this term knows."""
        try:
            previous = RoutingPolicyStatus.model_validate(body.get("status") or {})
        except ValidationError:
            previous = RoutingPolicyStatus()
        gen = body["metadata"].get("generation")
        try:
            policy = RoutingPolicy.model_validate(
                {k: body[k] for k in ("apiVersion", "kind", "metadata", "spec")}
            )
        except ValidationError as exc:
            message = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
            )
            conditions = set_condition(
                previous.conditions, "Ready", "False", "InvalidSpec", message, now, gen
            )
            return previous, RoutingPolicyStatus(
                observed_generation=gen, conditions=conditions, routes=previous.routes
            )
        routes, problems = compile_routes(
            policy.spec, self.pools.get(key[0], set()), self._canary_weights(key, policy.spec)
        )
        if problems:
            reason = problems[0].reason
            message = "; ".join(p.message for p in problems)
            conditions = set_condition(
                previous.conditions, "Ready", "False", reason, message, now, gen
            )
        else:
            conditions = set_condition(
                previous.conditions,
                "Ready",
                "True",
                COMPILED,
                f"{len(routes)} routes compiled",
                now,
                gen,
            )
        return previous, RoutingPolicyStatus(
            observed_generation=gen, conditions=conditions, routes=routes
        )

    # --- watches ------------------------------------------------------------------------

    async def policy_event(self, event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        key = (body["metadata"]["namespace"], body["metadata"]["name"])
        if event["type"] == "DELETED":
            self.policies.pop(key, None)
            self.retry.forget(key)
            return
        self.policies[key] = dict(body)
        await self.reconcile(key)

    async def pool_membership(self, event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
        pools = self.pools.setdefault(ns, set())
        before = name in pools
        if event["type"] == "DELETED":
            pools.discard(name)
        else:
            pools.add(name)
        if before != (name in pools):
            for key in [k for k in self.policies if k[0] == ns]:
                await self.reconcile(key)
