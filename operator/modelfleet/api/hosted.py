"""The hosted side of a ModelPool: which provider API the adapter speaks and how.

A hosted pool runs the worker in adapter mode (CPU only) in front of a provider's
image API; the key reaches it only through a Secret reference.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from modelfleet.api.common import ApiModel

Backend = Literal["diffusers", "openai", "openai-compatible", "gemini-imagen", "gemini", "ideogram"]
HOSTED_BACKENDS: tuple[str, ...] = (
    "openai",
    "openai-compatible",
    "gemini-imagen",
    "gemini",
    "ideogram",
)
# Every adapter needs a key (it refuses to start without one); an open
# openai-compatible server takes any Bearer value from a Secret.
KEYED_BACKENDS: tuple[str, ...] = HOSTED_BACKENDS
IDEOGRAM_MODELS: tuple[str, ...] = ("V_3", "V_2", "V_2_TURBO", "V_2A", "V_2A_TURBO")

# A base URL, never one carrying credentials: no userinfo (user:key@), no query
# (Gemini accepts ?key=...), no fragment.
ENDPOINT_PATTERN = r"^https?://[^/?#@\s]+(/[^?#@\s]*)?$"
SECRET_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
SECRET_KEY_PATTERN = r"^[-._a-zA-Z0-9]+$"

# What a literal credential looks like, wherever free text is allowed (worker env and
# args): the providers' published key prefixes, and env names that say "key".
# RE2 (CEL) and Python share this syntax.
KEY_VALUE_RE = r"(sk-[A-Za-z0-9_-]{16,}|AIza[0-9A-Za-z_-]{30,})"
KEY_NAME_RE = r"(?i)(api_?key|token|secret|password|credential)"
_KEY_VALUE = re.compile(KEY_VALUE_RE)
_KEY_NAME = re.compile(KEY_NAME_RE)


def looks_like_key_value(text: str) -> bool:
    return _KEY_VALUE.search(text) is not None


def looks_like_key_name(text: str) -> bool:
    return _KEY_NAME.search(text) is not None


class SecretKeyRef(ApiModel):
    """One key of a Secret in the pool's namespace."""

    name: str = Field(pattern=SECRET_NAME_PATTERN, max_length=253, description="The Secret's name.")
    key: str = Field(
        pattern=SECRET_KEY_PATTERN,
        max_length=253,
        description="The key in the Secret whose value is the provider API key.",
    )


class ProviderDefaults(ApiModel):
    """Request defaults the adapter applies when a client leaves the field out."""

    quality: Literal["auto", "low", "medium", "high", "standard", "hd"] | None = Field(
        default=None,
        description="OpenAI quality: auto, low, medium, high (gpt-image-1) or standard, hd "
        "(dall-e-3).",
    )
    style: Literal["vivid", "natural"] | None = Field(
        default=None, description="dall-e-3 style: vivid or natural."
    )
    background: Literal["auto", "transparent", "opaque"] | None = Field(
        default=None, description="gpt-image-1 background: auto, transparent or opaque."
    )
    output_format: Literal["png", "jpeg", "webp"] | None = Field(
        default=None, description="gpt-image-1 output format: png, jpeg or webp."
    )
    moderation: Literal["auto", "low"] | None = Field(
        default=None, description="gpt-image-1 moderation: auto or low."
    )
    rendering_speed: Literal["FLASH", "TURBO", "DEFAULT", "QUALITY"] | None = Field(
        default=None, description="Ideogram V_3 rendering speed: FLASH, TURBO, DEFAULT, QUALITY."
    )
    magic_prompt: Literal["AUTO", "ON", "OFF"] | None = Field(
        default=None, description="Ideogram magic prompt: AUTO, ON or OFF."
    )
    image_size: Literal["1K", "2K", "4K"] | None = Field(
        default=None, description="Imagen / Gemini image size: 1K, 2K or 4K."
    )
    person_generation: Literal["dont_allow", "allow_adult", "allow_all"] | None = Field(
        default=None, description="Imagen person generation: dont_allow, allow_adult, allow_all."
    )
    negative_prompt: str | None = Field(
        default=None, max_length=2000, description="Negative prompt (Ideogram)."
    )

    @field_validator("negative_prompt")
    @classmethod
    def _no_key(cls, v: str | None) -> str | None:
        if v is not None and looks_like_key_value(v):
            raise ValueError("spec.provider.defaults.negativePrompt looks like an API key")
        return v


SIZE_PATTERN = r"^[0-9]{2,5}x[0-9]{2,5}$"


class PriceOverride(ApiModel):
    """A price per image for some quality and/or size (either may be left out)."""

    quality: str | None = Field(
        default=None, max_length=32, description="Quality it applies to; any when empty."
    )
    size: str | None = Field(
        default=None,
        pattern=SIZE_PATTERN,
        description="Size (WIDTHxHEIGHT) it applies to; any when empty.",
    )
    usd_per_image: float = Field(ge=0, le=100, description="US dollars per image (0-100).")


class PriceSpec(ApiModel):
    """Per-pool prices that replace the shipped price table's entries."""

    overrides: list[PriceOverride] = Field(
        default_factory=list,
        max_length=32,
        description="Most specific match wins (quality and size, then one of them, then "
        "neither; the first of equals); otherwise the shipped table's price.",
    )


class ProviderSpec(ApiModel):
    """The provider API a hosted pool's adapter calls."""

    model: str = Field(
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._/:-]*$",
        description="The provider's model name, e.g. gpt-image-1, dall-e-3, "
        "imagen-4.0-generate-001, gemini-3-pro-image-preview, V_3, V_2A_TURBO.",
    )
    endpoint: str | None = Field(
        default=None,
        max_length=512,
        pattern=ENDPOINT_PATTERN,
        description="Base URL as the provider's SDK names it (https://api.openai.com/v1, "
        "https://generativelanguage.googleapis.com, https://api.ideogram.ai; an Azure "
        "OpenAI URL); no credentials or query in it. The provider's default when empty.",
    )
    credentials: SecretKeyRef | None = Field(
        default=None,
        description="Secret key holding the API key; it reaches the adapter only as the "
        "env var MODELFLEET_PROVIDER_API_KEY. Required.",
    )
    defaults: ProviderDefaults = Field(
        default_factory=ProviderDefaults, description="Request defaults."
    )
    max_concurrency: int = Field(
        default=4,
        ge=1,
        le=256,
        description="Provider calls in flight per adapter pod (1-256); the pool's cap is "
        "this times its replicas.",
    )
    requests_per_minute: int | None = Field(
        default=None,
        ge=1,
        le=100000,
        description="Token bucket per adapter pod (the pool's ceiling is this times its "
        "replicas); no limit when empty.",
    )
    size_policy: Literal["reject", "nearest"] = Field(
        default="reject",
        description="A size the provider cannot make: reject (400 naming size) or nearest "
        "(the closest allowed one).",
    )
    timeout_seconds: int = Field(
        default=120, ge=1, le=900, description="Longest one provider call may take (1-900 s)."
    )
    price: PriceSpec | None = Field(default=None, description="Price overrides.")


class CostSpec(ApiModel):
    """What a diffusers pool's GPU time costs, for the per-image cost."""

    gpu_hour_price: float = Field(
        ge=0, le=1000, description="US dollars per GPU-hour (0-1000); cost = GPU-seconds x price."
    )
