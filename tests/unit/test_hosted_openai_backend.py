"""The openai backend's pure parts: capabilities, request bodies, answer mapping;
and the stand-in's own strictness (what the adapter is tested against)."""

from __future__ import annotations

from typing import Any

import pytest

from modelfleet_dev.standins.openai_images import InvalidRequest, validate
from modelfleet_worker.hosted.backend import (
    HostedRequest,
    ProviderError,
    ProviderQuotaExhausted,
    ProviderRateLimited,
    ProviderRefused,
    Size,
)
from modelfleet_worker.hosted.openai import parse_response
from modelfleet_worker.hosted.registry import BackendSettings, UnknownBackend, make_backend


def _backend(model: str, kind: str = "openai") -> Any:
    return make_backend(kind, BackendSettings(model))


@pytest.mark.parametrize(
    ("model", "max_n", "edits", "sizes"),
    [
        ("dall-e-3", 1, False, {"1024x1024", "1792x1024", "1024x1792"}),
        ("gpt-image-1", 10, True, {"1024x1024", "1536x1024", "1024x1536"}),
        ("dall-e-2", 10, True, {"256x256", "512x512", "1024x1024"}),
    ],
)
def test_capabilities(model: str, max_n: int, edits: bool, sizes: set[str]) -> None:
    caps = _backend(model).capabilities
    assert (caps.max_n, caps.edits, caps.seed) == (max_n, edits, False)
    assert {str(s) for s in caps.sizes} == sizes


def test_unknown_model_and_backend_refused() -> None:
    with pytest.raises(ValueError, match="openai-compatible"):
        _backend("dall-e-9")
    with pytest.raises(UnknownBackend):
        make_backend("nope", BackendSettings("x"))


def test_every_generation_body_passes_the_strict_stand_in() -> None:
    req = HostedRequest(
        "a cat", 1, Size(1792, 1024), quality="hd",
        extra={"style": "natural", "background": "opaque", "user": "u1", "rendering_speed": "TURBO"},
    )  # fmt: skip
    body3 = _backend("dall-e-3").generation_body(req)
    assert body3 == {
        "model": "dall-e-3", "prompt": "a cat", "n": 1, "size": "1792x1024", "quality": "hd",
        "response_format": "b64_json", "style": "natural", "user": "u1",
    }  # fmt: skip
    validate(body3)
    gpt = HostedRequest("a cat", 3, Size(1536, 1024), "high", extra=req.extra)
    body1 = _backend("gpt-image-1").generation_body(gpt)
    assert "response_format" not in body1 and "style" not in body1
    assert body1["background"] == "opaque"
    validate(body1)


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"prompt": "x", "seed": 1}, "seed", "unknown_parameter"),
        ({"prompt": "x", "n": "2"}, "n", "invalid_type"),
        ({"prompt": "x", "n": True}, "n", "invalid_type"),
        ({"prompt": "x", "model": "dall-e-3", "n": 2}, "n", "invalid_value"),
        ({"prompt": "x", "model": "dall-e-3", "size": "512x512"}, "size", "invalid_value"),
        ({"prompt": "x", "model": "gpt-image-1", "response_format": "url"}, "response_format",
         "unknown_parameter"),
        ({"prompt": "x", "model": "dall-e-3", "quality": "high"}, "quality", "invalid_value"),
        ({"model": "dall-e-3"}, "prompt", "missing_required_parameter"),
    ],
)  # fmt: skip
def test_stand_in_is_strict(body: dict[str, Any], param: str, code: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        validate(body)
    assert (err.value.param, err.value.code) == (param, code)


def _err(code: str, message: str = "m", kind: str = "invalid_request_error") -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "type": kind, "param": None}}


def test_ok_answer_with_b64_and_url_images() -> None:
    doc = {
        "created": 1,
        "data": [{"b64_json": "QUJD", "revised_prompt": "r"}, {"url": "http://x/1"}],
    }
    result = parse_response(200, {}, {**doc, "quality": "medium"}, 0.0)
    assert result.images[0].b64_json == "QUJD" and result.images[0].revised_prompt == "r"
    assert result.images[1].url == "http://x/1" and result.images[1].b64_json is None
    assert result.quality == "medium"


@pytest.mark.parametrize(
    ("status", "headers", "doc", "kind"),
    [
        (400, {}, _err("content_policy_violation"), ProviderRefused),
        (400, {}, _err("moderation_blocked"), ProviderRefused),
        (429, {"retry-after": "12"}, _err("rate_limit_exceeded"), ProviderRateLimited),
        (429, {}, _err("insufficient_quota"), ProviderQuotaExhausted),
        (400, {}, _err("invalid_value"), ProviderError),
        (401, {}, _err("invalid_api_key"), ProviderError),
        (500, {}, _err("", kind="server_error"), ProviderError),
        (200, {}, {"data": []}, ProviderError),
        (502, {}, None, ProviderError),
    ],
)
def test_failures(status: int, headers: dict[str, str], doc: Any, kind: type) -> None:
    with pytest.raises(kind):
        parse_response(status, headers, doc, 1000.0)


def test_rate_limit_wait_and_quota_reset_come_from_the_answer() -> None:
    with pytest.raises(ProviderRateLimited) as rl:
        parse_response(429, {"Retry-After": "12"}, _err("rate_limit_exceeded"), 0.0)
    assert rl.value.retry_after_s == 12.0
    with pytest.raises(ProviderQuotaExhausted) as q:
        parse_response(429, {}, _err("insufficient_quota"), 1000.0)
    assert q.value.until == 1000.0 + 3600.0


def test_auth_failure_never_repeats_the_providers_message() -> None:
    # OpenAI's 401 quotes part of the key; the adapter says only that it was refused.
    doc = _err("invalid_api_key", "Incorrect API key provided: sk-ab***wxyz.")
    with pytest.raises(ProviderError) as err:
        parse_response(401, {}, doc, 0.0)
    assert "sk-" not in err.value.message and "wxyz" not in err.value.message
    assert err.value.status == 401


def test_provider_400_keeps_its_message_and_param() -> None:
    doc = {"error": {"code": "invalid_value", "message": "bad size", "param": "size"}}
    with pytest.raises(ProviderError) as err:
        parse_response(400, {}, doc, 0.0)
    assert err.value.status == 400 and err.value.param == "size" and "bad size" in err.value.message


def test_a_200_that_spent_the_last_request_pauses_the_adapter() -> None:
    doc = {"created": 1, "data": [{"b64_json": "QUJD"}]}
    spent = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1m30s"}
    assert parse_response(200, spent, doc, 0.0).pause_s == 90.0
    left = {"x-ratelimit-remaining-requests": "4", "x-ratelimit-reset-requests": "1m30s"}
    assert parse_response(200, left, doc, 0.0).pause_s is None
