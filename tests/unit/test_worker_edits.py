"""Edit request checks (pure): file sniffing, mask conversion, output size, form fields."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from modelfleet_worker.edits import (
    DEFAULT_INPAINT_STRENGTH,
    DEFAULT_STRENGTH,
    output_size,
    repaint_mask,
    sniff_format,
    validate_edit,
)
from modelfleet_worker.validation import Limits, RequestError, form_to_body, validate_request

LIMITS = Limits(
    max_resolution=128, max_steps=8, size_multiple=8, default_width=64, default_height=64
)


def encoded(img: Image.Image, fmt: str) -> io.BytesIO:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    buf.seek(0)
    return buf


def noise(w: int, h: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    ch = {"RGB": 3, "RGBA": 4}[mode]
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, ch), dtype=np.uint8)
    return Image.fromarray(arr, mode)


def half_mask(w: int, h: int) -> Image.Image:
    """Opaque except the left half, which is fully transparent (= edit there)."""
    arr = np.full((h, w, 4), 255, np.uint8)
    arr[:, : w // 2, 3] = 0
    return Image.fromarray(arr, "RGBA")


@pytest.mark.parametrize(
    ("fmt", "expected"), [("PNG", "PNG"), ("JPEG", "JPEG"), ("WEBP", "WEBP"), ("GIF", None)]
)
def test_sniff_format_by_magic_bytes(fmt: str, expected: str | None) -> None:
    head = encoded(noise(8, 8), fmt).getvalue()[:16]
    assert sniff_format(head) == expected


@pytest.mark.parametrize(
    "head", [b"", b"hello world, not an image", b"RIFF\x00\x00\x00\x00WAVEfmt ", b"\x89PNG"]
)
def test_sniff_rejects_other_bytes(head: bytes) -> None:
    assert sniff_format(head) is None


def test_repaint_mask_inverts_alpha() -> None:
    arr = np.zeros((2, 3, 4), np.uint8)
    arr[..., 3] = [[0, 128, 255], [255, 0, 10]]
    out = np.asarray(repaint_mask(Image.fromarray(arr, "RGBA")))
    assert out.tolist() == [[255, 127, 0], [0, 255, 245]]


def test_repaint_mask_needs_alpha() -> None:
    with pytest.raises(RequestError) as e:
        repaint_mask(noise(4, 4))
    assert (e.value.status, e.value.param) == (400, "mask")


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((64, 64), (64, 64)),
        ((64, 40), (64, 40)),
        ((70, 33), (64, 32)),  # rounded down to the multiple of 8
        ((256, 128), (128, 64)),  # scaled to fit max_resolution 128
        ((1000, 10), (128, 8)),  # never below one multiple
        ((3, 3), (8, 8)),
    ],
)
def test_output_size(size: tuple[int, int], expected: tuple[int, int]) -> None:
    assert output_size(size, LIMITS) == expected


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"n": ["2"], "seed": ["7"]}, {"n": 2, "seed": 7}),
        (
            {"guidance_scale": ["3.5"], "strength": ["0.5"]},
            {"guidance_scale": 3.5, "strength": 0.5},
        ),
        ({"n": ["two"]}, {"n": "two"}),  # left as text: validation names it
        ({"n": ["1.5"]}, {"n": 1.5}),
        ({"seed": ["nan"]}, {"seed": "nan"}),
        ({"stream": ["false"]}, {"stream": False}),
        ({"text[]": ["A", "B"]}, {"text": ["A", "B"]}),
        ({"tags[]": ["a", "b"], "tags": ["c"]}, {"tags": ["a", "b", "c"]}),
        (
            {"model": ["sd"], "user": ["u"], "tags": ["x"]},
            {"model": "sd", "user": "u", "tags": ["x"]},
        ),
    ],
)
def test_form_to_body(fields: dict[str, list[str]], expected: dict[str, Any]) -> None:
    assert form_to_body(fields) == expected


def test_form_field_given_twice_is_named() -> None:
    with pytest.raises(RequestError) as e:
        form_to_body({"n": ["1", "2"]})
    assert e.value.param == "n"


def form(**kw: str) -> dict[str, list[str]]:
    return {"prompt": ["edit it"], "steps": ["4"], **{k: [v] for k, v in kw.items()}}


def files(image: io.BytesIO | None = None, mask: io.BytesIO | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"image": [image or encoded(noise(64, 64), "PNG")]}
    if mask is not None:
        out["mask"] = [mask]
    return out


BAD_EDITS: list[tuple[str, Any, Any, str]] = [
    ("no image", form(), {}, "image"),
    (
        "two images",
        form(),
        {"image": [encoded(noise(64, 64), "PNG"), encoded(noise(64, 64), "PNG")]},
        "image",
    ),
    ("text as image", form(), files(io.BytesIO(b"not an image at all")), "image"),
    ("gif", form(), files(encoded(noise(64, 64), "GIF")), "image"),
    (
        "truncated png",
        form(),
        files(io.BytesIO(encoded(noise(64, 64), "PNG").getvalue()[:60])),
        "image",
    ),
    ("mask other size", form(), files(mask=encoded(half_mask(32, 64), "PNG")), "mask"),
    ("mask without alpha", form(), files(mask=encoded(noise(64, 64), "PNG")), "mask"),
    ("mask not an image", form(), files(mask=io.BytesIO(b"GIF89a......")), "mask"),
    ("strength 0", form(strength="0"), files(), "strength"),
    ("strength 1.5", form(strength="1.5"), files(), "strength"),
    ("steps x strength < 1", form(strength="0.2"), files(), "strength"),
    ("n text", form(n="two"), files(), "n"),
    ("size not a multiple", form(size="60x64"), files(), "size"),
    ("no prompt", {"steps": ["2"]}, files(), "prompt"),
    ("url", form(response_format="url"), files(), "response_format"),
]


@pytest.mark.parametrize(
    ("why", "fields", "uploads", "param"), BAD_EDITS, ids=[b[0] for b in BAD_EDITS]
)
def test_bad_edits_name_the_field(why: str, fields: Any, uploads: Any, param: str) -> None:
    with pytest.raises(RequestError) as e:
        validate_edit(fields, uploads, LIMITS)
    assert (e.value.status, e.value.param) == (400, param), e.value.message


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_every_accepted_format_decodes(fmt: str) -> None:
    ed = validate_edit(form(), files(encoded(noise(64, 48), fmt)), LIMITS)
    assert ed.image.mode == "RGB" and ed.image.size == (64, 48)
    assert (ed.gen.width, ed.gen.height) == (64, 48)  # no size: the input's
    assert ed.mask is None and ed.strength == DEFAULT_STRENGTH


def test_exif_rotation_is_applied() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    buf = io.BytesIO()
    noise(64, 32).save(buf, format="JPEG", exif=exif)
    buf.seek(0)
    ed = validate_edit(form(), files(buf), LIMITS)
    assert ed.image.size == (32, 64)


def test_large_jpeg_decodes_at_a_reduced_scale() -> None:
    from modelfleet_worker.edits import decode_upload_scaled

    big = encoded(noise(1024, 768), "JPEG")
    img, size = decode_upload_scaled(big, "image", 128)
    assert size == (1024, 768)  # the upload's own size, for the mask check
    assert img.size == (256, 192)  # 1/4: the smallest scale still >= 128 on both sides
    big.seek(0)
    full, _ = decode_upload_scaled(big, "image", None)
    assert full.size == (1024, 768)
    # The edit still sees the full size: mask check and output size use it.
    mask = encoded(half_mask(1024, 768), "PNG")
    big.seek(0)
    ed = validate_edit(form(), files(big, mask), LIMITS)
    assert ed.image.size == ed.mask.size == (128, 96)
    with pytest.raises(RequestError) as e:
        big.seek(0)
        validate_edit(form(), files(big, encoded(half_mask(256, 192), "PNG")), LIMITS)
    assert e.value.param == "mask"


def test_mask_is_converted_and_resized_with_the_image() -> None:
    ed = validate_edit(
        form(size="32x32"),
        files(encoded(noise(64, 64), "PNG"), encoded(half_mask(64, 64), "PNG")),
        LIMITS,
    )
    assert ed.image.size == ed.mask.size == (32, 32)
    m = np.asarray(ed.mask)
    assert (m[:, :16] == 255).all() and (m[:, 16:] == 0).all()  # left half repaints
    assert ed.strength == DEFAULT_INPAINT_STRENGTH


def test_edit_fields_reach_the_generation_request() -> None:
    ed = validate_edit(
        form(
            n="3",
            seed="11",
            guidance_scale="2",
            strength="0.5",
            negative_prompt="blur",
            output_format="webp",
            model="sd",
            user="u",
            quality="high",
            input_fidelity="low",
            background="auto",
            asset_id="a1",
        ),
        files(),
        LIMITS,
    )
    g = ed.gen
    assert (g.n, g.seed, g.guidance_scale, g.negative_prompt) == (3, 11, 2.0, "blur")
    assert g.output_format == "webp" and ed.strength == 0.5


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"output_format": "gif"}, "output_format"),
        ({"output_format": "svg"}, "output_format"),
        ({"output_format": 1}, "output_format"),
        ({"output_format": "jpeg", "output_compression": 101}, "output_compression"),
        ({"output_format": "jpeg", "output_compression": "50"}, "output_compression"),
        ({"output_compression": 50}, "output_compression"),  # png has no compression level
        ({"stream": True}, "stream"),
    ],
)
def test_generation_output_fields(body: dict[str, Any], param: str) -> None:
    with pytest.raises(RequestError) as e:
        validate_request({"prompt": "p", **body}, LIMITS)
    assert e.value.param == param


def test_generation_accepts_openai_and_router_fields() -> None:
    req = validate_request(
        {
            "prompt": "p",
            "model": "sd3.5-medium",
            "user": "u-1",
            "quality": "high",
            "style": "vivid",
            "background": "auto",
            "moderation": "low",
            "output_format": "jpeg",
            "output_compression": 30,
            "size": "auto",
            "stream": False,
            "partial_images": 0,
            "safety_identifier": "s",
            "asset_id": "a1",
            "tier": "gold",
            "tags": ["x"],
        },
        LIMITS,
    )
    assert (req.width, req.height) == (64, 64)
    assert (req.output_format, req.output_compression) == ("jpeg", 30)


@pytest.mark.parametrize(
    ("path", "label"),
    [
        ("/v1/images/generations", "generations"),
        ("/v1/images/edits", "edits"),
        ("/edits", "other"),
        ("/v1/images/variations", "other"),
        ("/healthz", "other"),
    ],
)
def test_endpoint_label(path: str, label: str) -> None:
    from modelfleet_worker.metrics import endpoint_of

    assert endpoint_of(path) == label


@pytest.mark.parametrize(
    ("model", "revision", "expected"),
    [
        ("hf://org/name@abc123", "", "abc123"),
        ("hf://org/name@abc123", "def", "abc123"),  # the URI's pin wins, as fetch does
        ("hf://org/name", "def", "def"),
        ("hf://org/name", "", None),
        ("file:///models/x", "", None),
        ("file:///models/x", "v2", "v2"),  # a label the operator may set for any scheme
        ("", "", None),
        ("", "v3", "v3"),
    ],
)
def test_model_revision(model: str, revision: str, expected: str | None) -> None:
    from modelfleet_worker.response import model_revision

    assert model_revision(model, revision) == expected


def test_provenance_object_and_headers() -> None:
    from modelfleet_worker.response import provenance, provenance_headers, service_cost_usd

    cost = service_cost_usd(per_image_s=0.5, images=4, gpu_hour_price=3.6)
    assert cost == pytest.approx(0.002)  # 2 GPU-seconds at 0.001 USD/s
    assert service_cost_usd(0.5, 4, 0.0) == 0.0
    assert service_cost_usd(0.5, 4, 3.6, gpus=2) == pytest.approx(0.004)  # 2 GPUs held
    assert service_cost_usd(0.5, 4, 3.6, gpus=0) == 0.0  # a CPU-only pool
    assert provenance("m", None, [None, 3], 0.0)["seeds"] == [None, 3]
    prov = provenance("hf://org/m@r1", "r1", [5, 6, 7, 8], cost)
    assert prov == {
        "model": "hf://org/m@r1",
        "revision": "r1",
        "seeds": [5, 6, 7, 8],
        "cost_usd": 0.002,
        "images": 4,
    }
    assert provenance_headers(prov) == {
        "X-ModelFleet-Model": "hf://org/m@r1",
        "X-ModelFleet-Revision": "r1",
        "X-ModelFleet-Cost-USD": "0.002000000",
    }
    unnamed = provenance("file:///m/\u00e9t\u00e9\n", None, [1], 0.0)
    headers = provenance_headers(unnamed)
    assert "X-ModelFleet-Revision" not in headers
    assert headers["X-ModelFleet-Model"] == "file:///m/?t??"  # header-safe ASCII


_NAMES = [
    "prompt",
    "n",
    "size",
    "seed",
    "steps",
    "guidance_scale",
    "strength",
    "negative_prompt",
    "output_format",
    "output_compression",
    "response_format",
    "stream",
    "text",
    "tags[]",
    "min_word_accuracy",
    "model",
]
_VALUES = st.one_of(
    st.sampled_from(
        [
            "",
            "1",
            "0",
            "-1",
            "2.5",
            "1e400",
            "nan",
            "inf",
            "64x64",
            "auto",
            "true",
            "jpeg",
            "b64_json",
            "url",
            "999999999999999999999",
            "0.0001",
            "x" * 5000,
        ]
    ),
    st.text(max_size=12),
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(_NAMES), st.lists(_VALUES, min_size=1, max_size=2)))
def test_any_form_is_an_edit_or_a_named_400(fields: dict[str, list[str]]) -> None:
    try:
        ed = validate_edit(fields, files(), LIMITS)
    except RequestError as exc:
        assert exc.status == 400 and exc.param, exc.message
    else:
        assert ed.image.size == (ed.gen.width, ed.gen.height)
        assert 0 < ed.strength <= 1 and int(ed.gen.steps * ed.strength) >= 1
