"""The official `openai` SDK through a real router process to a real worker on a tiny
randomly initialised diffusers pipeline (CPU): the images a client gets are the worker's,
byte for byte, with their provenance; edits with and without a mask; the worker's 400s
arrive as the SDK's BadRequestError naming the field. Routing itself is tested against
stand-in workers in test_openai_sdk.py."""

from __future__ import annotations

import base64
import io
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest
import yaml
from PIL import Image

from modelfleet_dev.routerproc import RouterProcess, policy

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from worker_fixtures import Worker, decode_png, running_worker, tiny_model_dir

pytestmark = pytest.mark.timeout(300)

MODEL = "sd-tiny"
REVISION = "r-42"
STEPS = {"steps": 2}


@pytest.fixture(scope="module")
def worker() -> Iterator[Worker]:
    with running_worker(
        tiny_model_dir(),
        max_batch_size=1,
        max_latency_ms=1,
        max_resolution=128,
        max_steps=4,
        gpu_hour_price=3.6,
        revision=REVISION,
    ) as w:
        yield w


@pytest.fixture(scope="module")
def router(worker: Worker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProcess]:
    routes = [
        {"name": "fast", "match": {"tiers": ["preview"]}, "pool": "tiny-preview"},
        {"name": "all", "pool": "tiny"},
    ]
    doc = {
        "policies": [policy(routes)],
        "endpoints": {"tiny": [worker.url], "tiny-preview": [worker.url]},
        "modelNames": {"tiny": [MODEL], "tiny-preview": ["sd-tiny-preview"]},
    }
    cfg = tmp_path_factory.mktemp("router") / "router.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    with RouterProcess(cfg) as r:
        yield r


@pytest.fixture(scope="module")
def client(router: RouterProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=router.url + "/v1", api_key="sk-unused", max_retries=0) as c:
        yield c


@pytest.fixture(scope="module")
def direct(worker: Worker) -> Iterator[openai.OpenAI]:
    """The same SDK straight at the worker: what the router must pass through unchanged."""
    with openai.OpenAI(base_url=worker.url + "/v1", api_key="sk-unused", max_retries=0) as c:
        yield c


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def noise(w: int = 64, h: int = 64, seed: int = 0) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return png_bytes(Image.fromarray(arr, "RGB"))


def left_half_mask(w: int = 64, h: int = 64) -> bytes:
    arr = np.full((h, w, 4), 255, np.uint8)
    arr[:, : w // 2, 3] = 0  # transparent: edit here (OpenAI's semantics)
    return png_bytes(Image.fromarray(arr, "RGBA"))


def pixels(b64: str | None) -> np.ndarray:
    assert b64 is not None
    return np.asarray(decode_png(b64).convert("RGB")).astype(np.int16)


def test_generate_is_the_workers_image_with_provenance(
    client: openai.OpenAI, direct: openai.OpenAI
) -> None:
    kw: dict[str, Any] = {"prompt": "a red cube", "n": 2, "size": "64x32"}
    raw = client.images.with_raw_response.generate(
        model=MODEL, user="u-1", quality="high", extra_body={**STEPS, "seed": 5}, **kw
    )
    out = raw.parse()
    assert raw.headers["X-ModelFleet-Pool"] == "tiny"
    assert [decode_png(d.b64_json or "").size for d in out.data or []] == [(64, 32)] * 2
    prov = (out.model_extra or {})["modelfleet"]
    assert prov["seeds"] == [5, 6] and prov["images"] == 2 and prov["revision"] == REVISION
    assert prov["cost_usd"] > 0
    assert raw.headers["X-ModelFleet-Revision"] == REVISION
    assert raw.headers["X-ModelFleet-Model"] == prov["model"]
    assert float(raw.headers["X-ModelFleet-Cost-USD"]) == pytest.approx(prov["cost_usd"])
    # The router passes the worker's pixels through: same seed, same bytes as direct.
    alone = direct.images.generate(extra_body={**STEPS, "seed": 5}, **kw)
    assert [d.b64_json for d in out.data or []] == [d.b64_json for d in alone.data or []]
    # Without model, intent routing reaches the other pool; the seed still decides.
    raw = client.images.with_raw_response.generate(
        extra_body={**STEPS, "seed": 5, "tier": "preview"}, **kw
    )
    assert raw.headers["X-ModelFleet-Pool"] == "tiny-preview"
    assert raw.parse().data[0].b64_json == out.data[0].b64_json  # type: ignore[index]


def test_null_fields_mean_the_defaults(client: openai.OpenAI) -> None:
    """The SDK sends None as JSON null; router and worker read it as "not given"."""
    nulls = dict.fromkeys(
        ("n", "size", "quality", "style", "response_format", "output_format", "user")
    ) | dict.fromkeys(("output_compression", "background", "moderation", "partial_images"))
    out = client.images.generate(model=MODEL, prompt="x", extra_body={**STEPS, "seed": 2}, **nulls)
    plain = client.images.generate(model=MODEL, prompt="x", extra_body={**STEPS, "seed": 2})
    assert len(out.data or []) == 1
    assert out.data[0].b64_json == plain.data[0].b64_json  # type: ignore[index]


@pytest.mark.parametrize(("fmt", "magic"), [("jpeg", b"\xff\xd8\xff"), ("webp", b"RIFF")])
def test_output_format_honoured_through_the_router(
    client: openai.OpenAI, fmt: Any, magic: bytes
) -> None:
    def image(compression: int) -> bytes:
        out = client.images.generate(
            model=MODEL,
            prompt="a red cube",
            output_format=fmt,
            output_compression=compression,
            extra_body={**STEPS, "seed": 1},
        )
        return base64.b64decode(out.data[0].b64_json or "")  # type: ignore[index]

    light, heavy = image(0), image(95)
    assert light.startswith(magic) and heavy.startswith(magic)
    assert len(heavy) < len(light)  # compression is the encoder's, not ignored


def test_edit_without_mask_is_image_to_image(client: openai.OpenAI, direct: openai.OpenAI) -> None:
    kw: dict[str, Any] = {"prompt": "a red cube", "extra_body": {**STEPS, "seed": 3}}
    raw = client.images.with_raw_response.edit(
        model=MODEL, image=("in.png", noise(), "image/png"), **kw
    )
    out = raw.parse()
    assert raw.headers["X-ModelFleet-Pool"] == "tiny"
    assert decode_png(out.data[0].b64_json or "").size == (64, 64)  # type: ignore[index]
    assert (out.model_extra or {})["modelfleet"]["seeds"] == [3]
    same = direct.images.edit(image=("in.png", noise(), "image/png"), **kw)
    assert same.data[0].b64_json == out.data[0].b64_json  # type: ignore[index]
    # The upload matters: another input image, another result.
    other = client.images.edit(model=MODEL, image=("b.png", noise(seed=1), "image/png"), **kw)
    assert other.data[0].b64_json != out.data[0].b64_json  # type: ignore[index]


def test_edit_with_mask_repaints_the_transparent_area(
    client: openai.OpenAI, direct: openai.OpenAI
) -> None:
    def inpaint(c: openai.OpenAI, seed: int) -> np.ndarray:
        out = c.images.edit(
            image=("in.png", noise(), "image/png"),
            mask=("mask.png", left_half_mask(), "image/png"),
            prompt="a window",
            extra_body={**STEPS, "seed": seed},
        )
        return pixels(out.data[0].b64_json)  # type: ignore[index]

    a, b = inpaint(client, 1), inpaint(client, 2)
    d = np.abs(a - b)
    edited, kept = d[:, :32].mean(), d[:, 32:].mean()
    assert edited > 4 * kept, (edited, kept)  # the seed repaints the left half only
    assert (inpaint(direct, 1) == a).all()


BAD: list[tuple[str, dict[str, Any], str]] = [
    ("not an image", {"image": ("a.png", b"hello, not a picture", "image/png")}, "image"),
    ("mask size", {"mask": ("m.png", left_half_mask(32, 64), "image/png")}, "mask"),
]


@pytest.mark.parametrize(("why", "kw", "param"), BAD, ids=[b[0] for b in BAD])
def test_the_workers_400_is_a_bad_request_error(
    client: openai.OpenAI, why: str, kw: dict[str, Any], param: str
) -> None:
    kw = {"image": ("in.png", noise(), "image/png"), **kw}
    with pytest.raises(openai.BadRequestError) as info:
        client.images.edit(model=MODEL, prompt="x", extra_body=STEPS, **kw)
    assert info.value.param == param, info.value.body


def test_a_format_the_pool_cannot_make_is_the_workers_400(client: openai.OpenAI) -> None:
    # The router accepts gif (hosted pools may make it); the diffusers worker refuses it.
    with pytest.raises(openai.BadRequestError) as info:
        client.images.generate(model=MODEL, prompt="x", output_format="gif")
    assert info.value.param == "output_format", info.value.body
