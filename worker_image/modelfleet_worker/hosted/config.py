"""Adapter-mode settings: the same table-driven flags/env vars as the diffusers worker
(config.SETTINGS); host, port, pool and drain timeout come from that table."""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from modelfleet_common.prices import Price, PriceError, parse_overrides

from ..config import Setting, _choice, _non_negative_int, _positive_int
from .translate import SIZE_POLICIES

API_KEY_ENV = "MODELFLEET_PROVIDER_API_KEY"
DIFFUSERS = "diffusers"


def _json_object(value: str) -> dict[str, Any]:
    try:
        doc = json.loads(value) if value.strip() else {}
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return doc


def _overrides(value: str) -> tuple[Price, ...]:
    try:
        return parse_overrides(value)
    except PriceError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _positive_float(value: str) -> float:
    v = float(value)
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {v}")
    return v


HOSTED_SETTINGS: tuple[Setting, ...] = (
    Setting("backend", str, DIFFUSERS, "diffusers, or a hosted provider backend (adapter mode)"),
    Setting("provider_model", str, "", "adapter mode: the provider's model, e.g. gpt-image-1"),
    Setting("endpoint", str, "", "adapter mode: provider base URL (default: the provider's own)"),
    Setting("size_policy", _choice(SIZE_POLICIES), "reject", "a size the provider cannot make"),
    Setting("max_concurrency", _positive_int, 4, "adapter mode: most provider calls at once"),
    Setting("requests_per_minute", _non_negative_int, 0, "adapter: provider calls/min (0=off)"),
    Setting("provider_defaults", _json_object, {}, "adapter: JSON object of request defaults"),
    Setting("price_overrides", _overrides, (), "adapter: JSON price overrides (see providers.md)"),
    Setting("request_timeout_s", _positive_float, 120.0, "adapter: timeout per provider call"),
    Setting("download_timeout_s", _positive_float, 30.0, "adapter: timeout per image URL fetch"),
)


@dataclass(frozen=True)
class HostedConfig:
    backend: str = DIFFUSERS
    provider_model: str = ""
    endpoint: str = ""
    size_policy: str = "reject"
    max_concurrency: int = 4
    requests_per_minute: int = 0
    provider_defaults: Mapping[str, Any] = field(default_factory=dict)
    price_overrides: tuple[Price, ...] = ()
    request_timeout_s: float = 120.0
    download_timeout_s: float = 30.0
    # from the worker table
    host: str = "0.0.0.0"
    port: int = 8080
    pool: str = "default"
    drain_timeout_s: float = 300.0


def add_hosted_arguments(parser: argparse.ArgumentParser) -> None:
    for s in HOSTED_SETTINGS:
        parser.add_argument(
            s.flag,
            dest=s.name,
            type=s.parse,
            default=None,
            help=f"{s.help} [env {s.env}, default {'none' if s.default in ('', {}, ()) else s.default}]",
        )


def resolve_hosted(
    args: argparse.Namespace, env: Mapping[str, str], base: Mapping[str, Any]
) -> HostedConfig:
    """Flag over env over default; `base` holds host/port/pool/drain from the worker table."""
    values: dict[str, Any] = {k: base[k] for k in ("host", "port", "pool", "drain_timeout_s")}
    for s in HOSTED_SETTINGS:
        given = getattr(args, s.name, None)
        if given is not None:
            values[s.name] = given
        elif s.env in env:
            try:
                values[s.name] = s.parse(env[s.env])
            except (ValueError, argparse.ArgumentTypeError) as exc:
                raise ValueError(f"{s.env}: {exc}") from exc
        else:
            values[s.name] = s.default
    assert {f.name for f in fields(HostedConfig)} == set(values), "HOSTED_SETTINGS drifted"
    if values["backend"] != DIFFUSERS and not values["provider_model"]:
        raise ValueError(f"--backend {values['backend']} needs --provider-model")
    return HostedConfig(**values)
