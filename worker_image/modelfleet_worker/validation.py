"""Request validation: pure, no I/O. Every rejection names the offending field."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from modelfleet_common.errors import error_body
from modelfleet_common.expected_text import ExpectedTextError, expected_text

MAX_BODY_BYTES = 1024 * 1024
MAX_PROMPT_CHARS = 4000
MAX_N = 8
MAX_SEED = 2**32 - 1
MAX_GUIDANCE = 30.0
_SIZE_RE = re.compile(r"^([1-9][0-9]{0,5})x([1-9][0-9]{0,5})$")
# Pillow format name by OpenAI's output_format; gif and svg are not rendered here.
OUTPUT_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}


@dataclass(frozen=True)
class Limits:
    max_resolution: int
    max_steps: int
    size_multiple: int  # width and height must be multiples (VAE scale factor, >= 8 for SD)
    default_width: int
    default_height: int
    default_steps: int = 20
    default_guidance: float = 7.5
    supports_negative_prompt: bool = True


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    n: int
    width: int
    height: int
    seed: int | None  # None: the server picks one and returns it
    steps: int
    guidance_scale: float
    negative_prompt: str | None
    expected_text: tuple[str, ...] = ()  # what OCR verification looks for; () = not verified
    min_word_accuracy: float | None = None  # this request's pass threshold; None: the worker's
    output_format: str = "png"  # a key of OUTPUT_FORMATS
    output_compression: int | None = None  # 0-100 for jpeg/webp (quality = 100 - it)


class RequestError(Exception):
    def __init__(self, status: int, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param

    def body(self) -> dict[str, Any]:
        return error_body(self.code, self.message, self.param)


def _invalid(param: str, message: str) -> RequestError:
    return RequestError(400, "invalid_request", message, param)


def _reject_constant(name: str) -> Any:
    # json.loads accepts NaN/Infinity by default; they are not JSON.
    raise ValueError(f"{name} is not valid JSON")


def parse_body(raw: bytes) -> Any:
    if len(raw) > MAX_BODY_BYTES:
        raise RequestError(413, "body_too_large", f"body exceeds {MAX_BODY_BYTES} bytes", None)
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise RequestError(400, "invalid_json", f"body is not valid JSON: {exc}", None) from exc


def _int_field(
    body: dict[str, Any], name: str, lo: int, hi: int, default: int | None
) -> int | None:
    if name not in body or body[name] is None:
        return default
    v = body[name]
    # bool is an int subclass in Python; JSON true is not a number.
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise _invalid(name, f"{name} must be an integer")
    if isinstance(v, float):
        if not v.is_integer():
            raise _invalid(name, f"{name} must be an integer")
        v = int(v)
    if not lo <= v <= hi:
        raise _invalid(name, f"{name} must be between {lo} and {hi}, got {v}")
    return int(v)


def validate_request(body: Any, limits: Limits) -> GenerationRequest:
    if not isinstance(body, dict):
        raise _invalid("body", "body must be a JSON object")
    # Unknown fields are ignored: OpenAI clients and the router may add their own.

    prompt = body.get("prompt")
    if prompt is None:
        raise _invalid("prompt", "prompt is required")
    if not isinstance(prompt, str):
        raise _invalid("prompt", "prompt must be a string")
    if not prompt.strip():
        raise _invalid("prompt", "prompt must not be empty")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise _invalid("prompt", f"prompt is longer than {MAX_PROMPT_CHARS} characters")

    fmt = body.get("response_format", "b64_json")
    if fmt is None:
        fmt = "b64_json"
    if fmt == "url":
        raise _invalid(
            "response_format",
            "response_format 'url' is not supported: the worker stores no images; use 'b64_json'",
        )
    if fmt != "b64_json":
        raise _invalid("response_format", "response_format must be 'b64_json'")
    if body.get("stream") not in (None, False):
        raise _invalid("stream", "stream is not supported: the worker answers with whole images")
    out_fmt, compression = _output_format(body)

    n = _int_field(body, "n", 1, MAX_N, 1)
    seed = _int_field(body, "seed", 0, MAX_SEED, None)
    steps = _int_field(
        body, "steps", 1, limits.max_steps, min(limits.default_steps, limits.max_steps)
    )
    assert n is not None and steps is not None

    width, height = limits.default_width, limits.default_height
    size = body.get("size")
    if size is not None and size != "auto":  # auto: the model's default size
        if not isinstance(size, str):
            raise _invalid("size", "size must be a string 'WIDTHxHEIGHT'")
        m = _SIZE_RE.match(size)
        if m is None:
            raise _invalid("size", f"size must look like '512x512', got {size[:32]!r}")
        width, height = int(m.group(1)), int(m.group(2))
    if max(width, height) > limits.max_resolution:
        raise _invalid(
            "size", f"size {width}x{height} is above max_resolution {limits.max_resolution}"
        )
    if width % limits.size_multiple or height % limits.size_multiple:
        raise _invalid(
            "size",
            f"width and height must be multiples of {limits.size_multiple} "
            f"(VAE scale factor x patch size), got {width}x{height}",
        )

    guidance = body.get("guidance_scale")
    if guidance is None:
        guidance_f = limits.default_guidance
    else:
        if isinstance(guidance, bool) or not isinstance(guidance, int | float):
            raise _invalid("guidance_scale", "guidance_scale must be a number")
        guidance_f = float(guidance)
        if not math.isfinite(guidance_f) or not 0.0 <= guidance_f <= MAX_GUIDANCE:
            raise _invalid("guidance_scale", f"guidance_scale must be between 0 and {MAX_GUIDANCE}")

    negative = body.get("negative_prompt")
    if negative is not None:
        if not isinstance(negative, str):
            raise _invalid("negative_prompt", "negative_prompt must be a string")
        if len(negative) > MAX_PROMPT_CHARS:
            raise _invalid(
                "negative_prompt", f"negative_prompt is longer than {MAX_PROMPT_CHARS} characters"
            )
        if not limits.supports_negative_prompt:
            raise _invalid("negative_prompt", "this model family does not take a negative_prompt")

    try:  # the ModelFleet extension field `text`, else the prompt's quoted spans
        expected = expected_text(prompt, body.get("text"))
    except ExpectedTextError as exc:
        raise _invalid(exc.param, str(exc)) from exc

    # ModelFleet extension: a route's own pass threshold, sent by the router's text gate.
    threshold = body.get("min_word_accuracy")
    if threshold is not None and (
        isinstance(threshold, bool)
        or not isinstance(threshold, int | float)
        or not 0.0 <= threshold <= 1.0
    ):
        raise _invalid("min_word_accuracy", "min_word_accuracy must be a number from 0 to 1")

    return GenerationRequest(
        prompt=prompt,
        n=n,
        width=width,
        height=height,
        seed=seed,
        steps=steps,
        guidance_scale=guidance_f,
        negative_prompt=negative,
        expected_text=expected,
        min_word_accuracy=None if threshold is None else float(threshold),
        output_format=out_fmt,
        output_compression=compression,
    )


def _output_format(body: dict[str, Any]) -> tuple[str, int | None]:
    fmt = body.get("output_format")
    if fmt is None:
        fmt = "png"
    if not isinstance(fmt, str) or fmt not in OUTPUT_FORMATS:
        raise _invalid("output_format", f"output_format must be one of {', '.join(OUTPUT_FORMATS)}")
    compression = _int_field(body, "output_compression", 0, 100, None)
    if compression is not None and fmt == "png":
        raise _invalid("output_compression", "output_compression needs output_format jpeg or webp")
    return fmt, compression


# Multipart form values are strings; these are the fields whose JSON type is not.
_FORM_INTS = ("n", "seed", "steps", "output_compression", "partial_images")
_FORM_FLOATS = ("guidance_scale", "min_word_accuracy", "strength")
_FORM_BOOLS = ("stream",)
_FORM_LISTS = ("text", "tags")


def form_to_body(fields: dict[str, list[str]]) -> dict[str, Any]:
    """A multipart form's text fields as the JSON body validate_request reads.

    Numbers arrive as text ("2"); a value that does not parse stays a string so
    validate_request rejects it naming the field. `text`, `tags` and any `name[]`
    may repeat and become lists.
    """
    body: dict[str, Any] = {}
    for raw_name, values in fields.items():
        name = raw_name.removesuffix("[]")
        if name in _FORM_LISTS or raw_name.endswith("[]"):
            # The SDK sends a list as repeated `name[]` parts.
            body.setdefault(name, []).extend(values)
            continue
        if len(values) != 1:
            raise _invalid(name, f"{name} must be given once, got {len(values)} values")
        v = values[0]
        if name in _FORM_INTS:
            body[name] = _parse_number(v, int)
        elif name in _FORM_FLOATS:
            body[name] = _parse_number(v, float)
        elif name in _FORM_BOOLS:
            body[name] = {"true": True, "false": False}.get(v.strip().lower(), v)
        else:
            body[name] = v
    return body


def _parse_number(v: str, kind: type[int] | type[float]) -> Any:
    try:
        num = float(v.strip())
    except ValueError:
        return v
    if not math.isfinite(num):
        return v
    return int(num) if kind is int and num.is_integer() else num
