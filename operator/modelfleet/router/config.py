"""What the router serves from (a Snapshot) and the static-file source of it."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from modelfleet.api.modelpool import ModelName
from modelfleet.api.routingpolicy import RoutingPolicy
from modelfleet.routing.clients import KeyRing, StaticClientKey, ring_from_static
from modelfleet.routing.models import PoolModels
from modelfleet.routing.table import DEFAULT_NAMESPACE, PolicyTable, compile_policy

ENDPOINT_URL_PATTERN = r"^https?://[^/\s?#]+$"


@dataclass(frozen=True)
class Snapshot:
    """Immutable; a config change swaps the whole snapshot, so a request sees one config."""

    policies: tuple[PolicyTable, ...] = ()
    # (namespace, pool) -> base URLs of ready workers.
    endpoints: Mapping[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)
    # (namespace, pool) -> the names clients pass as `model` (ModelPool spec.modelNames).
    model_names: Mapping[tuple[str, str], PoolModels] = field(default_factory=dict)
    # (namespace, pool) of pools autoscaled with minReplicas 0: a request for one with no
    # endpoint is held until its first worker is ready (router.holds).
    scale_from_zero: frozenset[tuple[str, str]] = frozenset()
    # Client keys by digest (router.access; Secrets in kube mode, clientKeys here).
    client_keys: KeyRing = field(default_factory=KeyRing)


class ConfigError(Exception):
    """Invalid configuration; the message names the field."""


class StaticConfig(BaseModel):
    """`--config FILE`: policies as users write them for kubectl, endpoints per pool."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    policies: list[RoutingPolicy] = Field(min_length=1)
    endpoints: dict[str, list[str]] = Field(default_factory=dict)
    # POOL -> names, as a ModelPool's spec.modelNames says them.
    model_names: dict[str, list[ModelName]] = Field(default_factory=dict, alias="modelNames")
    # Pools autoscaled to zero elsewhere: requests for them wait for an endpoint (SIGHUP).
    scale_from_zero: list[str] = Field(default_factory=list, alias="scaleFromZero")
    # Client keys as SHA-256 digests, never the keys (docs/clients.md#keys).
    client_keys: list[StaticClientKey] = Field(default_factory=list, alias="clientKeys")


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def format_validation_error(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        where = _loc(tuple(err["loc"])) or "(top level)"
        lines.append(f"{where}: {err['msg']}")
    return "\n".join(lines)


def parse_static_config(doc: Any) -> Snapshot:
    """Validate a parsed YAML document with the API models and build a Snapshot."""
    if not isinstance(doc, dict):
        raise ConfigError(
            "config must be a mapping with keys policies, endpoints, modelNames and scaleFromZero"
        )
    try:
        cfg = StaticConfig.model_validate(doc)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None
    errors: list[str] = []
    seen: set[tuple[str, str]] = set()
    for i, p in enumerate(cfg.policies):
        if not p.metadata.name:
            errors.append(f"policies[{i}].metadata.name: is required")
        key = (p.metadata.namespace or DEFAULT_NAMESPACE, p.metadata.name)
        if key in seen:
            errors.append(f"policies[{i}].metadata.name: {p.metadata.name!r} is not unique")
        seen.add(key)
    for pool, urls in cfg.endpoints.items():
        for j, u in enumerate(urls):
            if not re.match(ENDPOINT_URL_PATTERN, u.rstrip("/")):
                errors.append(
                    f"endpoints.{pool}[{j}]: {u!r} is not a base URL like http://127.0.0.1:8081"
                )
    for pool, names in cfg.model_names.items():
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            errors.append(f"modelNames.{pool}: repeated: {', '.join(dupes)}")
    try:
        keys = ring_from_static(cfg.client_keys)
    except ValueError as exc:
        errors.append(str(exc))
    if errors:
        raise ConfigError("\n".join(errors))
    policies = tuple(compile_policy(p) for p in cfg.policies)
    # Static endpoints serve every namespace a policy names.
    namespaces = {p.namespace for p in policies}
    endpoints = {
        (ns, pool): tuple(u.rstrip("/") for u in urls)
        for ns in namespaces
        for pool, urls in cfg.endpoints.items()
    }
    model_names = {
        (ns, pool): PoolModels(tuple(names))
        for ns in namespaces
        for pool, names in cfg.model_names.items()
        if names
    }
    zero = frozenset((ns, pool) for ns in namespaces for pool in cfg.scale_from_zero)
    return Snapshot(
        policies=policies,
        endpoints=endpoints,
        model_names=model_names,
        scale_from_zero=zero,
        client_keys=keys,
    )


def load_static_config(path: Path) -> Snapshot:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    return parse_static_config(doc)
