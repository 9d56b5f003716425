"""A client's fields checked against the provider model (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from modelfleet_worker.hosted.backend import Size
from modelfleet_worker.hosted.openai import capabilities_for
from modelfleet_worker.hosted.request import parse_client_request
from modelfleet_worker.hosted.translate import TranslationError

DALLE3 = capabilities_for("dall-e-3")[0]


def test_defaults_fill_what_the_client_left_out_and_the_client_wins() -> None:
    defaults = {"quality": "hd", "style": "natural", "negative_prompt": "blur"}
    r = parse_client_request({"prompt": "p", "n": 3}, DALLE3, defaults, "reject")
    assert r.quality == "hd" and r.extra["style"] == "natural" and r.negative_prompt == "blur"
    assert r.plan.counts == (1, 1, 1) and r.plan.size == Size(1024, 1024)
    r2 = parse_client_request({"prompt": "p", "quality": "standard", "style": "vivid"}, DALLE3,
                              defaults, "reject")  # fmt: skip
    assert r2.quality == "standard" and r2.extra["style"] == "vivid"


def test_router_and_unknown_fields_are_ignored() -> None:
    body = {"prompt": "p", "model": "sd3.5", "asset_id": "a", "tier": "gold", "tags": ["x"],
            "guidance_scale": 7.0}  # fmt: skip
    r = parse_client_request(body, DALLE3, {}, "reject")
    assert "asset_id" not in r.extra and "model" not in r.extra


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": 5}, "prompt"),
        ({"prompt": "x" * 4001}, "prompt"),
        ({"prompt": "p", "n": 11}, "n"),
        ({"prompt": "p", "n": "two"}, "n"),
        ({"prompt": "p", "n": True}, "n"),
        ({"prompt": "p", "seed": -1}, "seed"),
        ({"prompt": "p", "size": "640x480"}, "size"),
        ({"prompt": "p", "quality": "ultra"}, "quality"),
        ({"prompt": "p", "response_format": "url"}, "response_format"),
        ({"prompt": "p", "style": {"a": 1}}, "style"),
    ],
)
def test_rejections_name_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(TranslationError) as err:
        parse_client_request(body, DALLE3, {}, "reject")
    assert err.value.param == param


def test_multipart_text_numbers_are_taken() -> None:
    r = parse_client_request({"prompt": "p", "n": "2", "size": "1024x1024"},
                             capabilities_for("gpt-image-1")[0], {}, "reject")  # fmt: skip
    assert r.n == 2 and r.plan.counts == (2,)


def test_a_pool_default_quality_the_model_does_not_take_is_dropped() -> None:
    no_quality = capabilities_for("gpt-image-1")[0].__class__(
        sizes=(Size(1024, 1024),), default_size=Size(1024, 1024), max_n=4, seed=True, edits=False
    )
    r = parse_client_request({"prompt": "p"}, no_quality, {"quality": "hd"}, "reject")
    assert r.quality is None
    r = parse_client_request({"prompt": "p"}, DALLE3, {"quality": "high"}, "reject")
    assert r.quality is None  # dall-e-3 takes standard|hd
    with pytest.raises(TranslationError):  # the client's own value is still checked
        parse_client_request({"prompt": "p", "quality": "hd"}, no_quality, {}, "reject")
