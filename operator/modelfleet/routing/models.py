"""`model` selects the route: which routes of a policy serve a model name (a ModelPool's
spec.modelNames, or the static config's modelNames), and the OpenAI models list. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from modelfleet.routing.intent import Intent
from modelfleet.routing.table import PolicyTable, RouteEntry, match_route


@dataclass(frozen=True)
class PoolModels:
    """The model names one pool serves, and when the pool was created (unix seconds;
    the `created` of OpenAI's model object)."""

    names: tuple[str, ...]
    created: int = 0


# (namespace, pool) -> what it serves.
ModelNames = Mapping[tuple[str, str], PoolModels]


def _serving_pools(route: RouteEntry) -> tuple[str, ...]:
    # The pools a route sends to now: a canary candidate at 0% serves nothing yet, so a
    # name only it declares is not routable (it would land on the stable's model).
    return tuple(p.pool for p in route.pools if p.weight > 0)


def route_names(policy: PolicyTable, route: RouteEntry, names: ModelNames) -> set[str]:
    out: set[str] = set()
    for pool in _serving_pools(route):
        pm = names.get((policy.namespace, pool))
        if pm is not None:
            out.update(pm.names)
    return out


def available(policy: PolicyTable, names: ModelNames) -> list[str]:
    """Every model name the policy serves, sorted."""
    out: set[str] = set()
    for r in policy.routes:
        out |= route_names(policy, r, names)
    return sorted(out)


@dataclass(frozen=True)
class ModelNotFound:
    model: str
    available: tuple[str, ...]

    @property
    def message(self) -> str:
        names = ", ".join(self.available) or "(none)"
        return (
            f"The model {self.model!r} does not exist or is not served here; "
            f"available models: {names}"
        )


def route_for(
    policy: PolicyTable, intent: Intent, model: str | None, names: ModelNames
) -> RouteEntry | ModelNotFound | None:
    """No model: intent routing (match_route). A model: the routes serving that name; of
    those, the first whose match holds (tier, tags, prompt, headers refine the choice),
    else the first of them: the name is the client's explicit choice. A policy whose pools
    declare no names at all takes `model` as intent routing too: a fleet that has not
    named its models keeps serving clients that send one by habit. None only when intent
    routing finds no route."""
    if model is None:
        return match_route(policy.routes, intent)
    serving = [r for r in policy.routes if model in route_names(policy, r, names)]
    if not serving:
        served = available(policy, names)
        if not served:
            return match_route(policy.routes, intent)
        return ModelNotFound(model, tuple(served))
    return match_route(serving, intent) or serving[0]


def models_list(policy: PolicyTable, names: ModelNames) -> dict[str, Any]:
    """OpenAI's GET /v1/models shape for the names the policy serves."""
    created: dict[str, int] = {}
    for r in policy.routes:
        for pool in _serving_pools(r):
            pm = names.get((policy.namespace, pool))
            if pm is None:
                continue
            for n in pm.names:
                # The oldest pool serving a name dates it.
                created[n] = min(created.get(n, pm.created), pm.created)
    return {
        "object": "list",
        "data": [
            {"id": n, "object": "model", "created": created[n], "owned_by": "modelfleet"}
            for n in sorted(created)
        ],
    }


def model_object(policy: PolicyTable, names: ModelNames, model: str) -> dict[str, Any] | None:
    for m in models_list(policy, names)["data"]:
        if m["id"] == model:
            return dict(m)
    return None
