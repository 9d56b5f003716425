"""Request parsing: a client body becomes an Intent (what routing looks at) plus the body
forwarded to the worker. Pure; every failure is a RequestError naming the parameter."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from modelfleet.routing.sticky import ASSET_FIELD, asset_id_of
from modelfleet_common.errors import error_body
from modelfleet_common.expected_text import ExpectedTextError, parse_text_field

TIER_HEADER = "X-ModelFleet-Tier"
# A request's tier is any tier name here; the policy's spec.tiers say which exist
# (routing.tiers.resolve_tier). A request naming none gets the policy's default tier.
DEFAULT_TIER = "production"
_TIER_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
MAX_TIER_CHARS = 63
MAX_PROMPT_CHARS = 4000
MAX_TAGS = 32
MAX_TAG_CHARS = 63
_SIZE = re.compile(r"^([1-9][0-9]{0,4})x([1-9][0-9]{0,4})$")

# Fields the worker accepts; they are forwarded untouched once their shape is checked.
# Value ranges (steps, resolution) and what a backend can render (output_format gif) are
# the worker's business: its pool's limits differ. docs/router.md has the table of what
# each backend does with each field.
WORKER_FIELDS = frozenset(
    {
        # OpenAI Images API (what the official SDK sends)
        "prompt",
        "n",
        "size",
        "quality",
        "style",
        "response_format",
        "output_format",
        "output_compression",
        "background",
        "moderation",
        "user",
        "safety_identifier",
        "partial_images",
        "stream",
        "complexity",
        "frame_count",
        "frame_duration_ms",
        "svg",
        # ModelFleet extensions
        "seed",
        "steps",
        "guidance_scale",
        "negative_prompt",
        "text",  # the text the image must show (docs/verification.md)
    }
)
# Edits only (multipart): the worker's; files are never read by the router.
EDIT_FIELDS = frozenset({"input_fidelity", "strength"})
EDIT_FILES = frozenset({"image", "image[]", "mask", "markup"})
# Router-only fields, stripped before forwarding a generation.
ROUTER_FIELDS = frozenset({"tier", "tags", "model", "asset_id"})
MAX_MODEL_CHARS = 256
MAX_USER_CHARS = 256
_ENUMS: dict[str, tuple[str, ...]] = {
    "quality": ("auto", "low", "medium", "high", "xhigh", "max", "standard", "hd"),
    "style": ("vivid", "natural"),
    "output_format": ("png", "jpeg", "webp", "gif", "svg"),
    "background": ("auto", "transparent", "opaque"),
    "moderation": ("auto", "low"),
    "complexity": ("low", "medium", "high"),
    "input_fidelity": ("high", "low"),
}
_INT_RANGES: dict[str, tuple[int, int]] = {
    "n": (1, 8),
    "steps": (1, 1000),
    "output_compression": (0, 100),
    "partial_images": (0, 3),
    "frame_count": (2, 16),
    "frame_duration_ms": (0, 655_350),
}


class RequestError(Exception):
    """A request the router refuses; becomes {"error": {code, message, param}}."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param

    def body(self) -> dict[str, Any]:
        return error_body(self.code, self.message, self.param)


@dataclass(frozen=True)
class Intent:
    """What routing decides on."""

    tier: str = DEFAULT_TIER
    tags: frozenset[str] = field(default_factory=frozenset)
    prompt: str = ""
    # Lower-cased header names -> values, as the client sent them.
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ParsedRequest:
    intent: Intent
    forward: dict[str, Any]
    # The client's bytes when every field goes to the worker: no re-encoding needed.
    forward_raw: bytes | None = None
    model: str | None = None  # selects the route (routing.models); None: intent routing
    asset_id: str | None = None  # sticky assets (routing.sticky)
    # Where the tier came from ("tier" or the header); None: the request named none.
    tier_param: str | None = None


def _invalid(param: str, message: str) -> RequestError:
    return RequestError(400, "invalid_request", message, param)


def _int_in(v: object, low: int, high: int) -> bool:
    # bool is an int subclass in Python; JSON true is not a number.
    return isinstance(v, int) and not isinstance(v, bool) and low <= v <= high


def _number_in(v: object, low: float, high: float) -> bool:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return False
    return low <= v <= high


def _reject_constant(name: str) -> Any:
    # Python's json takes NaN/Infinity, which no other JSON parser (the worker's) accepts.
    raise ValueError(f"{name} is not valid JSON")


def _check_worker_field(name: str, v: object) -> None:
    if name == "prompt":
        if not isinstance(v, str):
            raise _invalid(name, "prompt must be a string")
        if not 1 <= len(v) <= MAX_PROMPT_CHARS:
            raise _invalid(name, f"prompt must be 1 to {MAX_PROMPT_CHARS} characters")
        if not v.strip():
            raise _invalid(name, "prompt must not be blank")
    elif v is None:  # every other field is optional, and null means "the default"
        return
    elif name == "negative_prompt":
        if not isinstance(v, str) or len(v) > MAX_PROMPT_CHARS:
            raise _invalid(name, f"negative_prompt must be a string of at most {MAX_PROMPT_CHARS}")
    elif name in _INT_RANGES:
        low, high = _INT_RANGES[name]
        if not _int_in(v, low, high):
            raise _invalid(name, f"{name} must be an integer from {low} to {high}")
    elif name in _ENUMS:
        if v not in _ENUMS[name]:
            raise _invalid(name, f"{name} must be one of {', '.join(_ENUMS[name])}")
    elif name == "size":
        if v != "auto" and (not isinstance(v, str) or not _SIZE.match(v)):
            raise _invalid(name, "size must be auto or look like WIDTHxHEIGHT, e.g. 1024x1024")
    elif name == "response_format":
        if v == "url":
            raise _invalid(
                name,
                "response_format url is not supported: ModelFleet stores no images, it "
                "returns them in the response; use b64_json (the default)",
            )
        if v != "b64_json":
            raise _invalid(name, "response_format must be b64_json")
    elif name == "stream":
        if v is not False:
            raise _invalid(name, "stream must be false: images are returned whole, not streamed")
    elif name in ("user", "safety_identifier"):
        if not isinstance(v, str) or len(v) > MAX_USER_CHARS:
            raise _invalid(name, f"{name} must be a string of at most {MAX_USER_CHARS} characters")
    elif name == "svg":
        if not isinstance(v, dict):
            raise _invalid(name, "svg must be an object")
    elif name == "seed":
        if not _int_in(v, 0, 2**64 - 1):
            raise _invalid(name, "seed must be an integer from 0 to 2^64-1 or null")
    elif name == "guidance_scale":
        if not _number_in(v, 0, 100):
            raise _invalid(name, "guidance_scale must be a number from 0 to 100")
    elif name == "strength":
        if not _number_in(v, 0, 1):
            raise _invalid(name, "strength must be a number from 0 to 1")
    elif name == "text":
        try:  # the worker's own rule, so a bad field is refused before it is forwarded
            parse_text_field(v)
        except ExpectedTextError as exc:
            raise _invalid(exc.param, str(exc)) from None


def _parse_model(v: object) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str) or not 1 <= len(v) <= MAX_MODEL_CHARS:
        raise _invalid("model", f"model must be a string of 1 to {MAX_MODEL_CHARS} characters")
    return v


def _is_tier_name(v: object) -> bool:
    return isinstance(v, str) and len(v) <= MAX_TIER_CHARS and bool(_TIER_NAME.match(v))


def _parse_tier(body_tier: object, header_tier: str | None) -> tuple[str, str | None]:
    """(tier, the field it came from); the shape only: the policy says which tiers exist."""
    # The body wins over the header: it is the more specific statement of intent.
    rule = f"a tier name (lower-case letters, digits and '-', at most {MAX_TIER_CHARS})"
    if body_tier is not None:
        if not _is_tier_name(body_tier):
            raise _invalid("tier", f"tier must be {rule}, e.g. preview or production")
        return str(body_tier), "tier"
    if header_tier is not None:
        t = header_tier.strip().lower()
        if not _is_tier_name(t):
            raise _invalid(TIER_HEADER, f"header {TIER_HEADER} must be {rule}")
        return t, TIER_HEADER
    return DEFAULT_TIER, None


def _parse_tags(v: object) -> frozenset[str]:
    if v is None:
        return frozenset()
    if not isinstance(v, list) or len(v) > MAX_TAGS:
        raise _invalid("tags", f"tags must be a list of at most {MAX_TAGS} strings")
    for t in v:
        if not isinstance(t, str) or not 1 <= len(t) <= MAX_TAG_CHARS:
            raise _invalid("tags", f"each tag must be a string of 1 to {MAX_TAG_CHARS} characters")
    return frozenset(v)


def _parsed(
    body: Mapping[str, Any],
    headers: Mapping[str, str],
    allowed: frozenset[str],
    forward: dict[str, Any],
    forward_raw: bytes | None,
) -> ParsedRequest:
    for name in body:
        if name not in allowed and name not in ROUTER_FIELDS:
            raise _invalid(str(name), f"unknown field {name!r}")
    if "prompt" not in body:
        raise _invalid("prompt", "prompt is required")
    for name, v in body.items():
        if name in allowed:
            _check_worker_field(name, v)
    try:
        asset_id = asset_id_of(body, headers)
    except ValueError as exc:
        raise _invalid(ASSET_FIELD, str(exc)) from None
    tier, tier_param = _parse_tier(body.get("tier"), headers.get(TIER_HEADER.lower()))
    intent = Intent(
        tier=tier, tags=_parse_tags(body.get("tags")), prompt=body["prompt"], headers=headers
    )
    model = _parse_model(body.get("model"))
    return ParsedRequest(intent, forward, forward_raw, model, asset_id, tier_param)


def parse_request(raw: bytes, headers: Mapping[str, str]) -> ParsedRequest:
    """Check a generation's JSON body; `headers` maps lower-cased names to values."""
    try:
        body = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(400, "invalid_json", f"body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise RequestError(400, "invalid_json", "body must be a JSON object")
    forward = {k: v for k, v in body.items() if k in WORKER_FIELDS}
    forward_raw = raw if len(forward) == len(body) else None
    return _parsed(body, headers, WORKER_FIELDS, forward, forward_raw)


# Multipart values are text; these fields are numbers or lists in the JSON body.
_FORM_INTS = frozenset({*_INT_RANGES, "seed"})
_FORM_FLOATS = frozenset({"guidance_scale", "strength"})
_FORM_LISTS = frozenset({"tags", "text"})


def _form_value(name: str, v: str) -> Any:
    if name in _FORM_INTS or name in _FORM_FLOATS:
        try:
            num = float(v.strip())
        except ValueError:
            return v  # stays a string: the field check names it
        if name in _FORM_INTS:
            return int(num) if num.is_integer() else num
        return num if num == num and abs(num) != float("inf") else v
    if name == "stream":
        return {"true": True, "false": False}.get(v.strip().lower(), v)
    return v


def parse_edit_form(
    fields: Mapping[str, Sequence[str]], files: Mapping[str, int], headers: Mapping[str, str]
) -> ParsedRequest:
    """Check an edit's multipart text fields (`fields`: name -> values as sent, `files`:
    file part name -> count). The body is forwarded as the client sent it, so
    `forward` is informational: the fields as JSON values."""
    body: dict[str, Any] = {}
    for raw_name, values in fields.items():
        name = raw_name.removesuffix("[]")
        if name.startswith("svg["):  # an object in a form: svg[model], svg[reasoning][effort]
            body["svg"] = {}
            continue
        if name in EDIT_FILES or raw_name in EDIT_FILES:
            raise _invalid(name, f"{name} must be a file part (with a filename)")
        if name in _FORM_LISTS:
            body[name] = [*body.get(name, []), *values]
            continue
        if len(values) != 1 or name in body:
            raise _invalid(name, f"{name} must be given once")
        body[name] = _form_value(name, values[0])
    for name in files:
        if name not in EDIT_FILES:
            raise _invalid(name, f"unknown file field {name!r}")
    images = files.get("image", 0) + files.get("image[]", 0)
    if images == 0:
        raise _invalid("image", "image is required: one or more image files to edit")
    if files.get("mask", 0) > 1:
        raise _invalid("mask", "mask must be one file")
    allowed = WORKER_FIELDS | EDIT_FIELDS
    forward = {k: v for k, v in body.items() if k in allowed}
    return _parsed(body, headers, allowed, forward, None)
