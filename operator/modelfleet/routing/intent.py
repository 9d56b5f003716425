"""Request parsing: a client body becomes an Intent (what routing looks at) plus the body
forwarded to the worker. Pure; every failure is a RequestError naming the parameter."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from modelfleet_common.expected_text import ExpectedTextError, parse_text_field

TIER_HEADER = "X-ModelFleet-Tier"
TIERS = ("preview", "production")
DEFAULT_TIER = "production"
MAX_PROMPT_CHARS = 4000
MAX_TAGS = 32
MAX_TAG_CHARS = 63
_SIZE = re.compile(r"^([1-9][0-9]{0,4})x([1-9][0-9]{0,4})$")

# Fields the worker accepts; they are forwarded untouched once their shape is checked.
# Value ranges (steps, resolution) are the worker's business: its pool's limits differ.
WORKER_FIELDS = frozenset(
    {
        "prompt",
        "n",
        "size",
        "response_format",
        "seed",
        "steps",
        "guidance_scale",
        "negative_prompt",
        "text",  # ModelFleet extension: the text the image must show (docs/verification.md)
    }
)
# Router-only fields, stripped before forwarding.
ROUTER_FIELDS = frozenset({"tier", "tags"})


class RequestError(Exception):
    """A request the router refuses; becomes {"error": {code, message, param}}."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "param": self.param}}


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
    if name in ("prompt", "negative_prompt"):
        if not isinstance(v, str):
            raise _invalid(name, f"{name} must be a string")
        limit_low = 1 if name == "prompt" else 0
        if not limit_low <= len(v) <= MAX_PROMPT_CHARS:
            raise _invalid(name, f"{name} must be {limit_low} to {MAX_PROMPT_CHARS} characters")
        if name == "prompt" and not v.strip():
            raise _invalid(name, "prompt must not be blank")
    elif name == "n":
        if not _int_in(v, 1, 8):
            raise _invalid(name, "n must be an integer from 1 to 8")
    elif name == "size":
        if not isinstance(v, str) or not _SIZE.match(v):
            raise _invalid(name, "size must look like WIDTHxHEIGHT, e.g. 1024x1024")
    elif name == "response_format":
        if v != "b64_json":
            raise _invalid(name, "response_format must be b64_json")
    elif name == "seed":
        if v is not None and not _int_in(v, 0, 2**64 - 1):
            raise _invalid(name, "seed must be an integer from 0 to 2^64-1 or null")
    elif name == "steps":
        if not _int_in(v, 1, 1000):
            raise _invalid(name, "steps must be an integer from 1 to 1000")
    elif name == "guidance_scale" and not _number_in(v, 0, 100):
        raise _invalid(name, "guidance_scale must be a number from 0 to 100")
    elif name == "text":
        try:  # the worker's own rule, so a bad field is refused before it is forwarded
            parse_text_field(v)
        except ExpectedTextError as exc:
            raise _invalid(exc.param, str(exc)) from None


def _parse_tier(body_tier: object, header_tier: str | None) -> str:
    # The body wins over the header: it is the more specific statement of intent.
    if body_tier is not None:
        if body_tier not in TIERS:
            raise _invalid("tier", "tier must be preview or production")
        return str(body_tier)
    if header_tier is not None:
        t = header_tier.strip().lower()
        if t not in TIERS:
            raise _invalid(TIER_HEADER, f"header {TIER_HEADER} must be preview or production")
        return t
    return DEFAULT_TIER


def _parse_tags(v: object) -> frozenset[str]:
    if v is None:
        return frozenset()
    if not isinstance(v, list) or len(v) > MAX_TAGS:
        raise _invalid("tags", f"tags must be a list of at most {MAX_TAGS} strings")
    for t in v:
        if not isinstance(t, str) or not 1 <= len(t) <= MAX_TAG_CHARS:
            raise _invalid("tags", f"each tag must be a string of 1 to {MAX_TAG_CHARS} characters")
    return frozenset(v)


def parse_request(raw: bytes, headers: Mapping[str, str]) -> ParsedRequest:
    """Check a client body; `headers` maps lower-cased names to values."""
    try:
        body = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(400, "invalid_json", f"body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise RequestError(400, "invalid_json", "body must be a JSON object")
    for name in body:
        if name not in WORKER_FIELDS and name not in ROUTER_FIELDS:
            raise _invalid(str(name), f"unknown field {name!r}")
    if "prompt" not in body:
        raise _invalid("prompt", "prompt is required")
    forward: dict[str, Any] = {}
    for name, v in body.items():
        if name in WORKER_FIELDS:
            _check_worker_field(name, v)
            forward[name] = v
    intent = Intent(
        tier=_parse_tier(body.get("tier"), headers.get(TIER_HEADER.lower())),
        tags=_parse_tags(body.get("tags")),
        prompt=body["prompt"],
        headers=headers,
    )
    forward_raw = raw if len(forward) == len(body) else None
    return ParsedRequest(intent=intent, forward=forward, forward_raw=forward_raw)
