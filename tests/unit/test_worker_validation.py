"""Request validation table: every bad input -> status + the param it names."""

from __future__ import annotations

import json
from typing import Any

import pytest

from modelfleet_worker.validation import (
    MAX_BODY_BYTES,
    Limits,
    RequestError,
    parse_body,
    validate_request,
)

LIMITS = Limits(
    max_resolution=256, max_steps=8, size_multiple=8, default_width=64, default_height=64
)
OK: dict[str, Any] = {"prompt": "a cat"}

BAD: list[tuple[Any, str]] = [
    ({}, "prompt"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": "   "}, "prompt"),
    ({"prompt": 5}, "prompt"),
    ({"prompt": ["a"]}, "prompt"),
    ({"prompt": "x" * 4001}, "prompt"),
    ({**OK, "n": 0}, "n"),
    ({**OK, "n": 9}, "n"),
    ({**OK, "n": "2"}, "n"),
    ({**OK, "n": 1.5}, "n"),
    ({**OK, "n": True}, "n"),
    ({**OK, "size": "64"}, "size"),
    ({**OK, "size": "64x"}, "size"),
    ({**OK, "size": "x64"}, "size"),
    ({**OK, "size": "64X64"}, "size"),
    ({**OK, "size": "-64x64"}, "size"),
    ({**OK, "size": "0x64"}, "size"),
    ({**OK, "size": 64}, "size"),
    ({**OK, "size": "65x64"}, "size"),  # not a multiple of the VAE scale factor
    ({**OK, "size": "64x60"}, "size"),
    ({**OK, "size": "512x64"}, "size"),  # above max_resolution
    ({**OK, "size": "99999999x64"}, "size"),
    ({**OK, "response_format": "url"}, "response_format"),
    ({**OK, "response_format": "png"}, "response_format"),
    ({**OK, "seed": -1}, "seed"),
    ({**OK, "seed": 2**32}, "seed"),
    ({**OK, "seed": "1"}, "seed"),
    ({**OK, "steps": 0}, "steps"),
    ({**OK, "steps": 9}, "steps"),
    ({**OK, "steps": None, "n": []}, "n"),
    ({**OK, "guidance_scale": -0.1}, "guidance_scale"),
    ({**OK, "guidance_scale": 30.5}, "guidance_scale"),
    ({**OK, "guidance_scale": "7"}, "guidance_scale"),
    ({**OK, "guidance_scale": False}, "guidance_scale"),
    ({**OK, "negative_prompt": 1}, "negative_prompt"),
    ({**OK, "negative_prompt": "x" * 4001}, "negative_prompt"),
    ([OK], "body"),
    ("a cat", "body"),
    (None, "body"),
]


@pytest.mark.parametrize(("body", "param"), BAD)
def test_bad_requests_name_the_param(body: Any, param: str) -> None:
    with pytest.raises(RequestError) as info:
        validate_request(body, LIMITS)
    assert info.value.status == 400
    assert info.value.param == param
    assert info.value.body()["error"]["param"] == param
    assert info.value.message


def test_url_format_explains() -> None:
    with pytest.raises(RequestError, match="b64_json"):
        validate_request({**OK, "response_format": "url"}, LIMITS)


def test_defaults() -> None:
    r = validate_request(OK, LIMITS)
    assert (r.width, r.height, r.n, r.seed, r.steps) == (64, 64, 1, None, 8)
    assert r.negative_prompt is None


def test_full_valid_request() -> None:
    body = {
        "prompt": "a cat",
        "n": 8,
        "size": "256x128",
        "response_format": "b64_json",
        "seed": 2**32 - 1,
        "steps": 8,
        "guidance_scale": 0,
        "negative_prompt": "blurry",
        "model": "ignored",
        "some_router_field": {"x": 1},
    }
    r = validate_request(body, LIMITS)
    assert (r.width, r.height, r.n, r.steps, r.guidance_scale) == (256, 128, 8, 8, 0.0)
    assert validate_request({**OK, "n": 2.0}, LIMITS).n == 2


def test_negative_prompt_refused_when_family_has_none() -> None:
    limits = Limits(256, 8, 16, 64, 64, supports_negative_prompt=False)
    with pytest.raises(RequestError) as info:
        validate_request({**OK, "negative_prompt": "x"}, limits)
    assert info.value.param == "negative_prompt"


@pytest.mark.parametrize(
    "raw", [b"", b"{", b"not json", b"\xff\xfe", b'{"prompt": NaN}', b"[" * 100000]
)
def test_parse_body_rejects_non_json(raw: bytes) -> None:
    with pytest.raises(RequestError) as info:
        parse_body(raw)
    assert info.value.status == 400


def test_parse_body_too_large() -> None:
    raw = json.dumps({"prompt": "x" * MAX_BODY_BYTES}).encode()
    with pytest.raises(RequestError) as info:
        parse_body(raw)
    assert info.value.status == 413
