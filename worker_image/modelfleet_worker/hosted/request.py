"""Pure: a client's generation/edit fields -> ClientRequest, checked against the
provider model's Capabilities. Rejections are TranslationErrors naming the field.

Unknown fields are ignored (router fields `model`, `user`, `asset_id`, `tier`, `tags`,
and OpenAI fields a provider does not take: brief contract 2)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..validation import MAX_SEED
from .backend import Capabilities
from .translate import CallPlan, TranslationError, check_quality, plan_calls

MAX_N = 10  # the Images API's own bound
# Provider options passed through to backends (each uses those it knows).
EXTRA_FIELDS = (
    "style",
    "background",
    "moderation",
    "output_format",
    "output_compression",
    "user",
    "rendering_speed",
    "magic_prompt",
    "image_size",
    "person_generation",
    "style_type",
)


@dataclass(frozen=True)
class ClientRequest:
    prompt: str
    n: int
    plan: CallPlan
    quality: str | None
    negative_prompt: str | None
    extra: Mapping[str, Any] = field(default_factory=dict)


def _int(body: Mapping[str, Any], name: str, lo: int, hi: int) -> int | None:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, str) and v.strip().lstrip("-").isdigit():  # multipart fields are text
        v = int(v)
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int):
        raise TranslationError(name, f"{name} must be an integer")
    if not lo <= v <= hi:
        raise TranslationError(name, f"{name} must be between {lo} and {hi}, got {v}")
    return v


def _str(body: Mapping[str, Any], name: str) -> str | None:
    v = body.get(name)
    if v is not None and not isinstance(v, str):
        raise TranslationError(name, f"{name} must be a string")
    return v


def parse_client_request(
    body: Any, caps: Capabilities, defaults: Mapping[str, Any], size_policy: str
) -> ClientRequest:
    if not isinstance(body, Mapping):
        raise TranslationError("body", "body must be a JSON object")
    prompt = _str(body, "prompt")
    if prompt is None:
        raise TranslationError("prompt", "prompt is required")
    if not prompt.strip():
        raise TranslationError("prompt", "prompt must not be empty")
    if len(prompt) > caps.max_prompt_chars:
        raise TranslationError(
            "prompt", f"prompt is longer than {caps.max_prompt_chars} characters for this model"
        )
    fmt = _str(body, "response_format")
    if fmt not in (None, "b64_json"):
        raise TranslationError(
            "response_format",
            "response_format must be 'b64_json' (the adapter downloads provider URLs itself)",
        )
    n = _int(body, "n", 1, MAX_N) or 1
    seed = _int(body, "seed", 0, MAX_SEED)
    size = _str(body, "size")
    quality = check_quality(_str(body, "quality"), caps)
    if quality is None and defaults.get("quality") in caps.qualities:
        # A pool default the model does not take is dropped: only the client's own
        # field is the client's error (one pool's defaults may serve several backends).
        quality = defaults["quality"]
    negative = _str(body, "negative_prompt")
    if negative is None:
        negative = defaults.get("negative_prompt")
    extra = {k: defaults[k] for k in EXTRA_FIELDS if defaults.get(k) is not None}
    for k in EXTRA_FIELDS:
        v = body.get(k)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, str | int):
            raise TranslationError(k, f"{k} must be a string or an integer")
        extra[k] = v
    plan = plan_calls(n, size, seed, caps, size_policy)
    return ClientRequest(prompt, n, plan, quality, negative, extra)
