"""The modelfleet.io/v1alpha1 API: pydantic models, the single source of truth."""

from __future__ import annotations

from typing import Any

from modelfleet.api.canary import Canary
from modelfleet.api.modelpool import ModelPool
from modelfleet.api.routingpolicy import RoutingPolicy

KINDS: dict[str, type[ModelPool] | type[RoutingPolicy] | type[Canary]] = {
    "ModelPool": ModelPool,
    "RoutingPolicy": RoutingPolicy,
    "Canary": Canary,
}


def parse(doc: dict[str, Any]) -> ModelPool | RoutingPolicy | Canary:
    """Validate a manifest as the operator sees it (raises pydantic.ValidationError)."""
    kind = doc.get("kind")
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {', '.join(KINDS)}, got {kind!r}")
    return KINDS[kind].model_validate(doc)


__all__ = ["KINDS", "Canary", "ModelPool", "RoutingPolicy", "parse"]
