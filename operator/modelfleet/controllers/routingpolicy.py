"""RoutingPolicy controller: validates references in context and publishes the
compiled route table (status.routes) that every router watches."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import Any

import kopf
from pydantic import ValidationError

from modelfleet import GROUP, VERSION
from modelfleet.api.conditions import set_condition
from modelfleet.api.routingpolicy import RoutingPolicy, RoutingPolicyStatus
from modelfleet.controllers import kube
from modelfleet.controllers.requeue import Requeue, namespace_terminating
from modelfleet.routing.compile import COMPILED, CanaryWeight, compile_routes

log = logging.getLogger("modelfleet.routingpolicy")
ACTIVE_CANARY_PHASES = {"Pending", "Progressing", "Paused"}
Key = tuple[str, str]
POLICIES: dict[Key, Any] = {}
POOLS: dict[str, set[str]] = {}
CANARIES: dict[Key, Any] = {}
LOCKS: dict[Key, asyncio.Lock] = {}


def _canary_weights(namespace: str, policy: str) -> list[CanaryWeight]:
    out = []
    for (ns, _), body in CANARIES.items():
        spec, status = body.get("spec") or {}, body.get("status") or {}
        if ns != namespace or spec.get("routingPolicy") != policy:
            continue
        if status.get("phase") in ACTIVE_CANARY_PHASES and status.get("canaryWeight") is not None:
            out.append(
                CanaryWeight(
                    spec["route"],
                    spec["stablePool"],
                    spec["candidatePool"],
                    int(status["canaryWeight"]),
                )
            )
    return out


async def reconcile(key: Key) -> None:
    try:
        await _reconcile(key)
    except Exception as exc:  # one policy's failure never stops the others
        if namespace_terminating(exc):
            return
        delay = RETRY.failed(key)
        log.exception("reconciling RoutingPolicy %s/%s failed; retrying in %.1fs", *key, delay)
    else:
        RETRY.succeeded(key)


async def _retry(key: Key) -> None:
    if key in POLICIES:
        await reconcile(key)


RETRY = Requeue(_retry)


async def _reconcile(key: Key) -> None:
    async with LOCKS.setdefault(key, asyncio.Lock()):
        body = POLICIES.get(key)
        if body is None:
            return
        now = dt.datetime.now(dt.UTC)
        previous_raw = body.get("status") or {}
        try:
            previous = RoutingPolicyStatus.model_validate(previous_raw)
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
            status = RoutingPolicyStatus(
                observed_generation=gen, conditions=conditions, routes=previous.routes
            )
        else:
            routes, problems = compile_routes(
                policy.spec, POOLS.get(key[0], set()), _canary_weights(key[0], key[1])
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
            status = RoutingPolicyStatus(
                observed_generation=gen, conditions=conditions, routes=routes
            )
        new = status.model_dump(by_alias=True, exclude_none=True, mode="json")
        old = previous.model_dump(by_alias=True, exclude_none=True, mode="json")
        if new == old:
            return
        await kube.run(kube.patch_status, "routingpolicies", key[0], key[1], new)
        body["status"] = new
        was = {c.type: c for c in previous.conditions}
        ready = next(c for c in status.conditions if c.type == "Ready")
        before = was.get("Ready")
        if before is None or (before.status, before.reason) != (ready.status, ready.reason):
            if ready.status == "True":
                kopf.info(body, reason=ready.reason, message=ready.message)
            else:
                kopf.warn(body, reason=ready.reason, message=ready.message)


def _namespace_policies(namespace: str) -> list[Key]:
    return [k for k in POLICIES if k[0] == namespace]


@kopf.on.event(GROUP, VERSION, "routingpolicies")  # type: ignore[arg-type]
async def policy_event(event: dict[str, Any], body: kopf.Body, **_: Any) -> None:
    key = (body["metadata"]["namespace"], body["metadata"]["name"])
    if event["type"] == "DELETED":
        POLICIES.pop(key, None)
        RETRY.forget(key)
        return
    POLICIES[key] = dict(body)
    await reconcile(key)


@kopf.on.event(GROUP, VERSION, "modelpools")  # type: ignore[arg-type]
async def pool_membership(event: dict[str, Any], body: kopf.Body, **_: Any) -> None:
    ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
    pools = POOLS.setdefault(ns, set())
    before = name in pools
    if event["type"] == "DELETED":
        pools.discard(name)
    else:
        pools.add(name)
    if before != (name in pools):
        for key in _namespace_policies(ns):
            await reconcile(key)


@kopf.on.event(GROUP, VERSION, "canaries")  # type: ignore[arg-type]
async def canary_weights(event: dict[str, Any], body: kopf.Body, **_: Any) -> None:
    key = (body["metadata"]["namespace"], body["metadata"]["name"])
    if event["type"] == "DELETED":
        CANARIES.pop(key, None)
    else:
        CANARIES[key] = dict(body)
    policy = (body.get("spec") or {}).get("routingPolicy")
    if policy and (key[0], policy) in POLICIES:
        await reconcile((key[0], policy))
