"""Backend name -> factory. Factories are imported lazily: a pool loads only its own."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .backend import ProviderBackend


@dataclass(frozen=True)
class BackendSettings:
    provider_model: str
    endpoint: str = ""  # "" = the provider's default base URL
    # The pool's request defaults (quality, rendering_speed, style, ...): used where
    # the client did not set the field.
    defaults: Mapping[str, Any] = field(default_factory=dict)


Factory = Callable[[BackendSettings], ProviderBackend]

# "module:function" relative to this package; one line per backend type.
BACKENDS: dict[str, str] = {
    "openai": ".openai:make_openai",
    "openai-compatible": ".openai:make_openai_compatible",
    "gemini-imagen": ".gemini:make_imagen",
    "gemini": ".gemini:make_gemini",
    "ideogram": ".ideogram:make_ideogram",
}


class UnknownBackend(ValueError):
    pass


def backend_names() -> tuple[str, ...]:
    return tuple(sorted(BACKENDS))


def make_backend(name: str, settings: BackendSettings) -> ProviderBackend:
    """Raises UnknownBackend, or ValueError from the factory (e.g. an unknown provider
    model for a backend that knows its models)."""
    target = BACKENDS.get(name)
    if target is None:
        raise UnknownBackend(f"unknown backend {name!r}; one of {', '.join(backend_names())}")
    module_name, func = target.split(":")
    module = importlib.import_module(module_name, __package__)
    factory: Factory = getattr(module, func)
    return factory(settings)
