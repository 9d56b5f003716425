"""The extension point a hosted provider implements, owned by the adapter server.

A backend turns one provider call (a HostedRequest the server already validated and
translated against the backend's Capabilities) into a ProviderResult, or raises one
of the ProviderFailure types below; the server maps each failure to the client
answer of brief contract 3. Backends never see the client's HTTP request.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp


@dataclass(frozen=True)
class Size:
    width: int
    height: int

    def __str__(self) -> str:
        return f"{self.width}x{self.height}"


@dataclass(frozen=True)
class Capabilities:
    """What one provider model can make. `sizes` lists every pixel size the provider
    produces (an aspect-ratio provider lists each ratio x resolution it renders);
    the server picks one of them (exact, or nearest under sizePolicy nearest)
    before calling the backend, which maps it back to its own parameters."""

    sizes: tuple[Size, ...]
    default_size: Size
    max_n: int  # images per provider call; the server splits larger n
    seed: bool  # the provider takes a seed
    edits: bool  # the backend implements edit()
    qualities: tuple[str, ...] = ()  # allowed `quality` values; () = the field is not taken
    max_prompt_chars: int = 4000


@dataclass(frozen=True)
class EditInput:
    """An edit's uploads, as the client sent them (already size-limited by the server)."""

    images: tuple[tuple[str, bytes, str], ...]  # (filename, bytes, content type)
    mask: tuple[str, bytes, str] | None = None


@dataclass(frozen=True)
class HostedRequest:
    """One provider call. `n` is at most Capabilities.max_n; `size` is one of
    Capabilities.sizes; `seed` is None where the provider takes none."""

    prompt: str
    n: int
    size: Size
    quality: str | None = None
    seed: int | None = None
    negative_prompt: str | None = None
    # Provider-specific fields the client or the pool's request defaults set
    # (style, background, output_format, rendering_speed, ...), already allow-listed.
    extra: Mapping[str, Any] = field(default_factory=dict)
    edit: EditInput | None = None


@dataclass(frozen=True)
class ProviderImage:
    """One image: inline bytes as base64 or a URL the server downloads (never both)."""

    b64_json: str | None = None
    url: str | None = None
    revised_prompt: str | None = None
    seed: int | None = None  # the seed the provider reports, if any


@dataclass(frozen=True)
class ProviderResult:
    images: tuple[ProviderImage, ...]
    # What the provider billed the call at, when it says (else the price table applies).
    quality: str | None = None
    # The provider said this call was the last one allowed for a while (e.g. a 200 with
    # x-ratelimit-remaining-requests: 0): the server holds further calls this long.
    pause_s: float | None = None


@dataclass(frozen=True)
class ProviderContext:
    """What the server hands a backend for each call. `api_key` must never be logged,
    put in an exception message, or sent anywhere but the provider's endpoint."""

    session: aiohttp.ClientSession
    api_key: str
    endpoint: str  # base URL without trailing slash, as the provider's SDK names it
    timeout_s: float


class ProviderFailure(Exception):
    """Base of every failure a backend raises; `message` is safe to show a client."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ProviderRefused(ProviderFailure):
    """Safety refusal (moderation block, raiFilteredReason, is_image_safe=false):
    422 content_policy_violation; counted apart, never a pool error."""


class ProviderRateLimited(ProviderFailure):
    """Provider 429: the server stops calling it for `retry_after_s` and answers
    429 rate_limited with Retry-After at once."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ProviderQuotaExhausted(ProviderFailure):
    """Quota spent (e.g. Gemini RESOURCE_EXHAUSTED daily quota): unready until `until`."""

    def __init__(self, message: str, until: float) -> None:
        super().__init__(message)
        self.until = until  # unix seconds


class ProviderError(ProviderFailure):
    """Anything else. `status` is the provider's HTTP status (0: no answer, timeout or
    connection error). 400s the request caused reach the client as 400; the rest 502."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.param = param


class EditsUnsupported(ProviderFailure):
    """edit() on a backend whose capabilities say edits=False."""


class ProviderBackend(Protocol):
    """One provider model. Built by a registry factory from the pool's settings."""

    name: str  # backend type, e.g. "openai"
    provider: str  # price table provider key, e.g. "openai"
    model: str  # provider model, e.g. "gpt-image-1"
    capabilities: Capabilities
    default_endpoint: str  # used when the pool sets no --endpoint

    async def generate(self, req: HostedRequest, ctx: ProviderContext) -> ProviderResult: ...

    async def edit(self, req: HostedRequest, ctx: ProviderContext) -> ProviderResult: ...
