"""Request parsing: every field's shape, router-only fields stripped, tier precedence, and
an edit's multipart text fields."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelfleet.routing.intent import (
    ROUTER_FIELDS,
    WORKER_FIELDS,
    RequestError,
    parse_edit_form,
    parse_request,
)


def _parse(body: Any, headers: dict[str, str] | None = None) -> Any:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return parse_request(raw, headers or {})


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        (b"not json", None, "invalid_json"),
        (b"[1, 2]", None, "invalid_json"),
        (b'{"prompt": NaN}', None, "invalid_json"),
        (b'{"prompt": "x", "guidance_scale": Infinity}', None, "invalid_json"),
        ({}, "prompt", "invalid_request"),
        ({"prompt": ""}, "prompt", "invalid_request"),
        ({"prompt": "   "}, "prompt", "invalid_request"),
        ({"prompt": 3}, "prompt", "invalid_request"),
        ({"prompt": "x" * 4001}, "prompt", "invalid_request"),
        ({"prompt": "x", "n": 0}, "n", "invalid_request"),
        ({"prompt": "x", "n": 9}, "n", "invalid_request"),
        ({"prompt": "x", "n": True}, "n", "invalid_request"),
        ({"prompt": "x", "n": 1.5}, "n", "invalid_request"),
        ({"prompt": "x", "size": "1024"}, "size", "invalid_request"),
        ({"prompt": "x", "size": "0x512"}, "size", "invalid_request"),
        ({"prompt": "x", "response_format": "url"}, "response_format", "invalid_request"),
        ({"prompt": "x", "seed": -1}, "seed", "invalid_request"),
        ({"prompt": "x", "seed": "7"}, "seed", "invalid_request"),
        ({"prompt": "x", "steps": 0}, "steps", "invalid_request"),
        ({"prompt": "x", "guidance_scale": "7"}, "guidance_scale", "invalid_request"),
        ({"prompt": "x", "guidance_scale": -1}, "guidance_scale", "invalid_request"),
        ({"prompt": "x", "negative_prompt": 1}, "negative_prompt", "invalid_request"),
        ({"prompt": "x", "tier": "Gold!"}, "tier", "invalid_request"),
        ({"prompt": "x", "tier": 1}, "tier", "invalid_request"),
        ({"prompt": "x", "tier": "a" * 64}, "tier", "invalid_request"),
        ({"prompt": "x", "tags": "a"}, "tags", "invalid_request"),
        ({"prompt": "x", "tags": [1]}, "tags", "invalid_request"),
        ({"prompt": "x", "tags": [""]}, "tags", "invalid_request"),
        ({"prompt": "x", "model": ""}, "model", "invalid_request"),
        ({"prompt": "x", "model": 3}, "model", "invalid_request"),
        ({"prompt": "x", "quality": "ultra"}, "quality", "invalid_request"),
        ({"prompt": "x", "style": "bold"}, "style", "invalid_request"),
        ({"prompt": "x", "output_format": "bmp"}, "output_format", "invalid_request"),
        ({"prompt": "x", "output_compression": 101}, "output_compression", "invalid_request"),
        ({"prompt": "x", "background": "green"}, "background", "invalid_request"),
        ({"prompt": "x", "moderation": "high"}, "moderation", "invalid_request"),
        ({"prompt": "x", "user": 7}, "user", "invalid_request"),
        ({"prompt": "x", "safety_identifier": ["a"]}, "safety_identifier", "invalid_request"),
        ({"prompt": "x", "partial_images": 4}, "partial_images", "invalid_request"),
        ({"prompt": "x", "stream": True}, "stream", "invalid_request"),
        ({"prompt": "x", "complexity": "extreme"}, "complexity", "invalid_request"),
        ({"prompt": "x", "frame_count": 1}, "frame_count", "invalid_request"),
        ({"prompt": "x", "svg": "yes"}, "svg", "invalid_request"),
        ({"prompt": "x", "asset_id": "has space"}, "asset_id", "invalid_request"),
        ({"prompt": "x", "strength": 0.5}, "strength", "invalid_request"),  # edits only
        ({"prompt": "x", "frobnicate": 1}, "frobnicate", "invalid_request"),
    ],
)
def test_rejects(body: Any, param: str | None, code: str) -> None:
    with pytest.raises(RequestError) as err:
        _parse(body)
    assert err.value.status == 400
    assert err.value.code == code
    assert err.value.param == param
    assert set(err.value.body()["error"]) == {"code", "message", "param"}


def test_response_format_url_says_why() -> None:
    with pytest.raises(RequestError) as err:
        _parse({"prompt": "x", "response_format": "url"})
    assert "b64_json" in err.value.message and "url" in err.value.message


# Every field the official SDK's images.generate sends, in one request (the values are
# the SDK's Literal types); each is accepted.
SDK_FIELDS: dict[str, Any] = {
    "prompt": "a red fox",
    "background": "transparent",
    "complexity": "high",
    "frame_count": 9,
    "frame_duration_ms": 200,
    "model": "sd3.5-medium",
    "moderation": "low",
    "n": 2,
    "output_compression": 80,
    "output_format": "webp",
    "partial_images": 0,
    "quality": "high",
    "response_format": "b64_json",
    "safety_identifier": "hash-of-user",
    "size": "auto",
    "stream": False,
    "style": "natural",
    "svg": {"model": "author"},
    "user": "user-1",
}


def test_every_sdk_field_is_accepted() -> None:
    p = _parse(SDK_FIELDS)
    assert p.model == "sd3.5-medium"
    assert p.forward == {k: v for k, v in SDK_FIELDS.items() if k != "model"}


@pytest.mark.parametrize("name", sorted(WORKER_FIELDS - {"prompt"}))
def test_null_means_default(name: str) -> None:
    assert _parse({"prompt": "x", name: None}).forward[name] is None


def test_model_and_asset_are_router_fields() -> None:
    p = _parse({"prompt": "x", "model": "flux-schnell", "asset_id": "cat-1"})
    assert (p.model, p.asset_id) == ("flux-schnell", "cat-1")
    assert p.forward == {"prompt": "x"} and p.forward_raw is None
    assert {"model", "asset_id", "tier", "tags"} <= ROUTER_FIELDS


def test_asset_header_when_the_body_has_none() -> None:
    assert _parse({"prompt": "x"}, {"x-modelfleet-asset": "h-1"}).asset_id == "h-1"
    assert _parse({"prompt": "x", "asset_id": "b"}, {"x-modelfleet-asset": "h"}).asset_id == "b"
    assert _parse({"prompt": "x"}).model is None


def _edit(fields: dict[str, list[str]], files: dict[str, int] | None = None) -> Any:
    return parse_edit_form(fields, {"image": 1} if files is None else files, {})


def test_edit_form_fields_as_the_sdk_sends_them() -> None:
    p = _edit(
        {
            "prompt": ["make it night"],
            "model": ["sd3.5-medium"],
            "n": ["2"],
            "size": ["512x512"],
            "tags[]": ["photoreal", "animals"],
            "tier": ["preview"],
            "strength": ["0.6"],
            "input_fidelity": ["high"],
            "seed": ["7"],
            "svg[model]": ["author"],
            "svg[reasoning][effort]": ["low"],
        },
        {"image[]": 2, "mask": 1},
    )
    assert p.model == "sd3.5-medium"
    assert p.intent.tier == "preview" and p.intent.tags == {"photoreal", "animals"}
    assert p.forward["n"] == 2 and p.forward["strength"] == 0.6 and p.forward["seed"] == 7
    assert p.forward_raw is None  # the multipart body itself is what is forwarded


@pytest.mark.parametrize(
    ("fields", "files", "param"),
    [
        ({"prompt": ["x"]}, {}, "image"),
        ({"prompt": ["x"]}, {"image": 1, "mask": 2}, "mask"),
        ({"prompt": ["x"]}, {"image": 1, "photo": 1}, "photo"),
        ({"prompt": ["x"], "image": ["not a file"]}, {}, "image"),
        ({"prompt": ["x"], "n": ["two"]}, None, "n"),
        ({"prompt": ["x"], "n": ["1", "2"]}, None, "n"),
        ({"prompt": ["x"], "strength": ["1.5"]}, None, "strength"),
        ({"prompt": ["x"], "bogus": ["1"]}, None, "bogus"),
        ({"prompt": ["x"], "stream": ["true"]}, None, "stream"),
        ({"n": ["1"]}, None, "prompt"),
        ({"prompt": ["x"], "model": [""]}, None, "model"),
    ],
)
def test_edit_form_rejects(
    fields: dict[str, list[str]], files: dict[str, int] | None, param: str
) -> None:
    with pytest.raises(RequestError) as err:
        _edit(fields, files)
    assert (err.value.status, err.value.param) == (400, param)


def test_forwards_worker_fields_and_strips_router_fields() -> None:
    body = {
        "prompt": "a red fox",
        "n": 2,
        "size": "512x768",
        "response_format": "b64_json",
        "seed": 42,
        "steps": 30,
        "guidance_scale": 7.5,
        "negative_prompt": "blurry",
        "tier": "preview",
        "tags": ["photoreal", "animals"],
    }
    p = _parse(body)
    assert p.forward == {k: v for k, v in body.items() if k not in ("tier", "tags")}
    assert p.intent.tier == "preview"
    assert p.intent.tags == frozenset({"photoreal", "animals"})
    assert p.intent.prompt == "a red fox"
    assert p.forward_raw is None, "router fields must not reach the worker"


@pytest.mark.parametrize(
    ("raw", "forwarded_as_is"),
    [
        (b'{"prompt": "fox", "n": 1}', True),
        (b'{"prompt": "fox", "tier": "preview"}', False),
        (b'{"prompt": "fox", "tags": []}', False),
    ],
)
def test_body_without_router_fields_is_forwarded_byte_for_byte(
    raw: bytes, forwarded_as_is: bool
) -> None:
    p = parse_request(raw, {})
    assert (p.forward_raw == raw) is forwarded_as_is
    assert json.loads(p.forward_raw or json.dumps(p.forward)) == p.forward


@pytest.mark.parametrize(
    ("body_tier", "header", "expected"),
    [
        (None, None, "production"),
        (None, "preview", "preview"),
        (None, " Preview ", "preview"),
        ("production", "preview", "production"),  # the body is more specific
        ("preview", None, "preview"),
    ],
)
def test_tier_precedence(body_tier: str | None, header: str | None, expected: str) -> None:
    body: dict[str, Any] = {"prompt": "x"}
    if body_tier:
        body["tier"] = body_tier
    headers = {"x-modelfleet-tier": header} if header else {}
    assert _parse(body, headers).intent.tier == expected


def test_bad_tier_header_names_the_header() -> None:
    with pytest.raises(RequestError) as err:
        _parse({"prompt": "x"}, {"x-modelfleet-tier": "gold tier"})
    assert err.value.param == "X-ModelFleet-Tier"


def test_any_tier_name_parses_and_says_where_it_came_from() -> None:
    # Which tiers exist is the policy's business (routing.tiers.resolve_tier).
    assert _parse({"prompt": "x", "tier": "gold"}).tier_param == "tier"
    assert _parse({"prompt": "x"}, {"x-modelfleet-tier": "gold"}).tier_param == "X-ModelFleet-Tier"
    assert _parse({"prompt": "x"}).tier_param is None


def test_null_seed_is_allowed() -> None:
    assert _parse({"prompt": "x", "seed": None}).forward["seed"] is None


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=8,
)
_fields = st.sampled_from(
    ["prompt", "n", "size", "response_format", "seed", "steps", "guidance_scale",
     "negative_prompt", "tier", "tags", "model", "quality", "asset_id", "other"]
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_fields, _json, max_size=6) | _json, st.binary(max_size=64))
def test_fuzz_only_request_errors(doc: Any, junk: bytes) -> None:
    """Whatever arrives, the parser answers with a result or a 400, nothing else."""
    for raw in (json.dumps(doc).encode(), junk):
        try:
            p = parse_request(raw, {})
        except RequestError as exc:
            assert exc.status == 400
        else:
            json.dumps(p.forward)  # what we forward is always serialisable
            assert not ROUTER_FIELDS & set(p.forward)
