"""Ideogram backend (V_3 and the legacy V_2 family): translation, answers and errors, pure."""

from __future__ import annotations

from typing import Any

import pytest

from modelfleet_dev.standins import ideogram_api as standin
from modelfleet_worker.hosted import ideogram
from modelfleet_worker.hosted.backend import (
    HostedRequest,
    ProviderError,
    ProviderRateLimited,
    ProviderRefused,
    Size,
)
from modelfleet_worker.hosted.registry import BackendSettings, make_backend
from modelfleet_worker.hosted.translate import TranslationError, check_quality, plan_calls

SQ = Size(1024, 1024)


def req(size: Size = SQ, n: int = 1, **kw: Any) -> HostedRequest:
    return HostedRequest(prompt='a sign that says "OPEN"', n=n, size=size, **kw)


@pytest.mark.parametrize(
    ("kw", "speed"),
    [
        ({}, "DEFAULT"),
        ({"extra": {"rendering_speed": "TURBO"}}, "TURBO"),
        ({"extra": {"rendering_speed": "FLASH"}}, "FLASH"),
        ({"quality": "high"}, "QUALITY"),
        ({"quality": "low", "extra": {"rendering_speed": "QUALITY"}}, "TURBO"),  # quality wins
        ({"quality": "auto"}, "DEFAULT"),
    ],
)
def test_v3_rendering_speed(kw: dict[str, Any], speed: str) -> None:
    assert ideogram.rendering_speed(req(**kw)) == speed


def test_v3_fields() -> None:
    fields = ideogram.v3_fields(
        req(
            Size(1312, 736),
            n=3,
            seed=11,
            negative_prompt="blur",
            extra={"magic_prompt": "OFF", "style_type": "DESIGN", "background": "opaque"},
        )
    )
    assert fields == [
        ("prompt", 'a sign that says "OPEN"'),
        ("num_images", "3"),
        ("resolution", "1312x736"),
        ("rendering_speed", "DEFAULT"),
        ("seed", "11"),
        ("magic_prompt", "OFF"),
        ("style_type", "DESIGN"),
        ("negative_prompt", "blur"),
    ]  # `background` (an OpenAI field) is not Ideogram's: left out


@pytest.mark.parametrize("model", ["V_2", "V_2_TURBO", "V_2A", "V_2A_TURBO"])
def test_legacy_body(model: str) -> None:
    body = ideogram.legacy_body(
        model, req(Size(736, 1312), n=8, seed=0, extra={"magic_prompt": "ON"})
    )
    assert body == {
        "image_request": {
            "prompt": 'a sign that says "OPEN"',
            "model": model,
            "num_images": 8,
            "resolution": "RESOLUTION_736_1312",
            "seed": 0,
            "magic_prompt_option": "ON",
        }
    }


@pytest.mark.parametrize(
    ("call", "param"),
    [
        (lambda: ideogram.v3_fields(req(seed=2**31)), "seed"),
        (lambda: ideogram.v3_fields(req(extra={"rendering_speed": "fast"})), "rendering_speed"),
        (
            lambda: ideogram.v3_fields(req(extra={"style_type": "ANIME"})),
            "style_type",
        ),  # legacy only
        (lambda: ideogram.legacy_body("V_2A", req(negative_prompt="x")), "negative_prompt"),
        (lambda: ideogram.legacy_body("V_2", req(extra={"magic_prompt": "MAYBE"})), "magic_prompt"),
    ],
)
def test_invalid_fields_are_400_naming_them(call: Any, param: str) -> None:
    with pytest.raises(ProviderError) as err:
        call()
    assert (err.value.status, err.value.param) == (400, param)


def test_sizes_split_seeds_and_qualities() -> None:
    v3 = make_backend("ideogram", BackendSettings("V_3"))
    caps = v3.capabilities
    assert caps.max_n == 8 and caps.seed
    plan = plan_calls(10, "1280x800", 5, caps, "reject")
    assert (plan.size, plan.counts, plan.seeds) == (Size(1280, 800), (8, 2), (5, 13))
    # 1920x1080 is not an Ideogram resolution: rejected naming size, or its nearest shape.
    with pytest.raises(TranslationError) as err:
        plan_calls(1, "1920x1080", None, caps, "reject")
    assert err.value.param == "size"
    assert plan_calls(1, "1920x1080", None, caps, "nearest").size == Size(1312, 736)
    assert check_quality("high", caps) == "high"
    legacy = make_backend("ideogram", BackendSettings("V_2A_TURBO")).capabilities
    with pytest.raises(TranslationError):
        check_quality("high", legacy)  # the legacy models' price is the model's
    with pytest.raises(ValueError, match="V_2A_TURBO"):
        make_backend("ideogram", BackendSettings("V_4"))


def test_resolutions_are_the_ones_the_provider_renders() -> None:
    assert [(s.width, s.height) for s in ideogram.RESOLUTIONS] == list(standin.RESOLUTIONS)
    assert len(ideogram.RESOLUTIONS) == 69
    legacy = ideogram.LEGACY_RESOLUTIONS
    assert [(s.width, s.height) for s in legacy] == list(standin.LEGACY_RESOLUTIONS)
    assert len(legacy) == 78


@pytest.mark.parametrize(
    ("model", "size", "ok"),
    [
        ("V_3", "800x1280", True),
        ("V_2", "800x1280", False),  # not in the legacy enum
        ("V_3", "1280x720", False),
        ("V_2A_TURBO", "1280x720", True),
    ],
)
def test_each_endpoint_takes_its_own_resolutions(model: str, size: str, ok: bool) -> None:
    caps = make_backend("ideogram", BackendSettings(model)).capabilities
    if ok:
        assert str(plan_calls(1, size, None, caps, "reject").size) == size
    else:
        with pytest.raises(TranslationError):
            plan_calls(1, size, None, caps, "reject")


def _item(**kw: Any) -> dict[str, Any]:
    return {
        "url": "http://x/api/images/ephemeral/a.png",
        "seed": 3,
        "is_image_safe": True,
        "resolution": "1024x1024",
        **kw,
    }


def test_answers() -> None:
    got = ideogram.parse_answer(200, {}, {"data": [_item(), _item(seed=4)]}, 0.0, "TURBO")
    url = "http://x/api/images/ephemeral/a.png"
    assert [(i.url, i.seed) for i in got.images] == [(url, 3), (url, 4)]
    assert got.quality == "TURBO"  # priced at the speed it rendered
    unsafe = _item(is_image_safe=False)
    del unsafe["url"]
    partial = ideogram.parse_answer(200, {}, {"data": [unsafe, _item()]}, 0.0, None)
    assert len(partial.images) == 1
    with pytest.raises(ProviderRefused):
        ideogram.parse_answer(200, {}, {"data": [unsafe]}, 0.0, None)


@pytest.mark.parametrize(
    ("status", "headers", "body", "kind", "detail"),
    [
        (422, {}, {"error": "Prompt failed the safety checks"}, ProviderRefused, None),
        (429, {"Retry-After": "12"}, {"error": "Too many"}, ProviderRateLimited, 12.0),
        (429, {}, {}, ProviderRateLimited, 5.0),
        (401, {}, {"error": "bad key ideo-secret"}, ProviderError, 401),
        (400, {}, {"error": "Invalid input"}, ProviderError, 400),
        (404, {}, {}, ProviderError, 400),
        (500, {}, {"error": "boom"}, ProviderError, 500),
        (200, {}, {"data": []}, ProviderError, 502),
    ],
)
def test_errors(status: int, headers: dict[str, str], body: Any, kind: type, detail: Any) -> None:
    with pytest.raises(kind) as err:
        ideogram.parse_answer(status, headers, body, 0.0, None)
    if isinstance(err.value, ProviderRateLimited):
        assert err.value.retry_after_s == detail
    elif isinstance(err.value, ProviderError):
        assert err.value.status == detail
        assert "secret" not in err.value.message


def _png(size: tuple[int, int], mode: str = "RGBA", fill: Any = (0, 0, 0, 255)) -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new(mode, size, fill).save(out, format="PNG")
    return out.getvalue()


def test_images_api_mask_becomes_ideograms_black_and_white_mask() -> None:
    import io

    from PIL import Image

    mask = Image.new("RGBA", (8, 4), (255, 255, 255, 255))
    for x in range(4):  # the left half transparent: the part to edit
        for y in range(4):
            mask.putpixel((x, y), (0, 0, 0, 0))
    raw = io.BytesIO()
    mask.save(raw, format="PNG")
    got = Image.open(io.BytesIO(ideogram.ideogram_mask(raw.getvalue(), _png((8, 4), "RGB", 0))))
    assert got.mode == "L" and got.size == (8, 4)
    assert [got.getpixel((x, 0)) for x in range(8)] == [0] * 4 + [255] * 4


@pytest.mark.parametrize(
    ("mask", "image", "text"),
    [
        (_png((8, 8)), _png((8, 4)), "same size"),
        (_png((8, 4), "RGB", 0), _png((8, 4)), "alpha"),
        (b"not an image", _png((8, 4)), "PNG, JPEG or WebP"),
    ],
)
def test_bad_masks_are_400_naming_mask(mask: bytes, image: bytes, text: str) -> None:
    with pytest.raises(ProviderError) as err:
        ideogram.ideogram_mask(mask, image)
    assert (err.value.status, err.value.param) == (400, "mask")
    assert text in err.value.message


def test_edit_fields_and_which_models_edit() -> None:
    fields = ideogram.edit_fields(req(n=2, seed=4, quality="high", extra={"style_type": "DESIGN"}))
    assert fields == [
        ("prompt", 'a sign that says "OPEN"'),
        ("num_images", "2"),
        ("rendering_speed", "QUALITY"),
        ("seed", "4"),
    ]  # no size (the image's) and no style_type (the edit endpoint takes none)
    assert ideogram.capabilities("V_3").edits
    assert not ideogram.capabilities("V_2").edits
