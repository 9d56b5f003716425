"""A real worker on a tiny CPU model, driven by the official openai SDK: edits
(image-to-image, inpainting), the provenance object and headers, upload checks."""

from __future__ import annotations

import base64
import contextlib
import io
import socket
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from worker_fixtures import Worker, decode_png, running_worker, tiny_model_dir

UPLOAD_LIMIT = 100_000
MAX_LATENCY_MS = 200  # long enough for two concurrent edits to share a batch
PIXEL_TOLERANCE = 2  # alone vs batched, float32 on CPU (as for generations)
GPU_HOUR_PRICE = 3.6  # USD: 0.001 per second of service time


@pytest.fixture(scope="module")
def worker() -> Iterator[Worker]:
    with running_worker(
        tiny_model_dir(),
        max_batch_size=4,
        max_latency_ms=MAX_LATENCY_MS,
        max_resolution=128,
        max_steps=4,
        max_upload_bytes=UPLOAD_LIMIT,
        gpu_hour_price=GPU_HOUR_PRICE,
        gpus=2,
        revision="r-7",
    ) as w:
        yield w


@pytest.fixture(scope="module")
def client(worker: Worker) -> openai.OpenAI:
    return openai.OpenAI(base_url=worker.url + "/v1", api_key="unused", max_retries=0)


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def noise(w: int = 64, h: int = 64, seed: int = 0) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return png(Image.fromarray(arr, "RGB"))


def left_half_mask(w: int = 64, h: int = 64) -> bytes:
    arr = np.full((h, w, 4), 255, np.uint8)
    arr[:, : w // 2, 3] = 0  # transparent = edit here (OpenAI's semantics)
    return png(Image.fromarray(arr, "RGBA"))


def pixels(b64: str | None) -> np.ndarray:
    assert b64 is not None
    return np.asarray(decode_png(b64).convert("RGB")).astype(np.int16)


EXTRA = {"steps": 2}


def edit(client: openai.OpenAI, seed: int, **kw: Any) -> Any:
    kw.setdefault("image", ("in.png", noise(), "image/png"))
    return client.images.edit(prompt="a red cube", extra_body={**EXTRA, "seed": seed}, **kw)


def test_image_to_image_is_seeded_and_uses_the_input(client: openai.OpenAI) -> None:
    raw = client.images.with_raw_response.edit(
        image=("in.png", noise(), "image/png"),
        prompt="a red cube",
        n=2,
        size="64x32",
        model="sd-tiny",
        user="u-1",
        quality="high",
        input_fidelity="low",
        extra_body={**EXTRA, "seed": 5, "asset_id": "asset-1", "tier": "gold"},
    )
    out = raw.parse()
    assert len(out.data) == 2
    assert {decode_png(d.b64_json).size for d in out.data} == {(64, 32)}
    prov = (out.model_extra or {})["modelfleet"]
    assert prov["seeds"] == [5, 6] and prov["images"] == 2 and prov["revision"] == "r-7"
    assert raw.headers["X-ModelFleet-Revision"] == "r-7"
    timing = (out.model_extra or {})["timing"]  # int(2 steps x strength 0.8) = 1 step ran
    assert timing["per_step_ms"] == timing["inference_ms"]
    assert raw.headers["X-ModelFleet-Model"] == prov["model"] and prov["model"].startswith(
        "file://"
    )
    # Same seed and input: same bytes; another input image: another result.
    again = edit(client, 5, size="64x32")
    assert again.data[0].b64_json == out.data[0].b64_json
    other = edit(client, 5, size="64x32", image=("b.png", noise(seed=1), "image/png"))
    assert other.data[0].b64_json != out.data[0].b64_json


def test_inpainting_repaints_only_the_transparent_area(client: openai.OpenAI) -> None:
    mask = ("m.png", left_half_mask(), "image/png")
    a, b = (pixels(edit(client, s, mask=mask).data[0].b64_json) for s in (1, 2))
    d = np.abs(a - b)
    edited, kept = d[:, :32].mean(), d[:, 32:].mean()
    # Seeds change the repainted (left) half; the kept half moves only through the VAE.
    assert edited > 4 * kept, (edited, kept)
    # A single-element image list goes as image[] and is the same edit.
    listed = edit(client, 1, mask=mask, image=[("in.png", noise(), "image/png")])
    assert (pixels(listed.data[0].b64_json) == a).all()
    # Without the mask it is image-to-image: a different result for the same seed.
    assert not (pixels(edit(client, 1).data[0].b64_json) == a).all()


def test_concurrent_edits_batch_and_each_keeps_its_own_image(client: openai.OpenAI) -> None:
    masks = [("m.png", left_half_mask(), "image/png"), None]

    def one(i: int) -> Any:
        kw: dict[str, Any] = {"image": ("in.png", noise(seed=10 + i), "image/png")}
        if masks[i % 2] is not None:
            kw["mask"] = masks[i % 2]
        return client.images.with_raw_response.edit(
            prompt=f"prompt {i}", extra_body={**EXTRA, "seed": 40 + i}, **kw
        )

    # 0 and 2 inpaint, 1 and 3 image-to-image: two batches of two, never one of four.
    with ThreadPoolExecutor(4) as pool:
        batched = list(pool.map(one, range(4)))
    assert [r.headers["X-ModelFleet-Batch-Size"] for r in batched] == ["2"] * 4
    for i, r in enumerate(batched):
        alone = one(i)
        assert alone.headers["X-ModelFleet-Batch-Size"] == "1"
        a, b = (pixels(x.parse().data[0].b64_json) for x in (r, alone))
        assert np.abs(a - b).max() <= PIXEL_TOLERANCE, i


def test_cost_is_service_time_times_price(worker: Worker, client: openai.OpenAI) -> None:
    raw = client.images.with_raw_response.edit(
        image=("in.png", noise(), "image/png"), prompt="x", n=2, extra_body={**EXTRA, "seed": 3}
    )
    prov = (raw.parse().model_extra or {})["modelfleet"]
    service = float(raw.headers["X-ModelFleet-Service-Time"])
    expected = service * 2 * 2 * GPU_HOUR_PRICE / 3600.0  # 2 images x 2 GPUs
    assert prov["cost_usd"] > 0
    assert prov["cost_usd"] == pytest.approx(expected, rel=1e-3)
    assert float(raw.headers["X-ModelFleet-Cost-USD"]) == pytest.approx(prov["cost_usd"])
    # Generations carry the same object.
    status, headers, body = worker.request(
        "POST",
        "/v1/images/generations",
        body={"prompt": "p", "steps": 2, "seed": 9, "model": "m", "user": "u", "style": "vivid"},
    )
    assert status == 200
    assert float(headers["X-ModelFleet-Cost-USD"]) > 0
    assert b'"modelfleet": {"model": "file://' in body and b'"seeds": [9]' in body


def test_sdk_generate_with_every_openai_field(client: openai.OpenAI) -> None:
    out = client.images.generate(
        prompt="a red cube",
        model="sd3.5-medium",
        n=2,
        size="64x32",
        quality="high",
        style="vivid",
        response_format="b64_json",
        output_format="jpeg",
        output_compression=20,
        background="opaque",
        moderation="low",
        user="u-1",
        safety_identifier="s-1",
        partial_images=0,
        extra_body={"steps": 2, "seed": 21, "asset_id": "a-9", "tier": "gold", "tags": ["x"]},
    )
    assert len(out.data) == 2 and out.output_format == "jpeg"
    assert all(base64.b64decode(d.b64_json or "").startswith(b"\xff\xd8\xff") for d in out.data)
    assert (out.model_extra or {})["modelfleet"]["seeds"] == [21, 22]
    with pytest.raises(openai.BadRequestError) as e:
        client.images.generate(prompt="x", output_format="gif", extra_body={"steps": 1})
    assert (e.value.body or {})["param"] == "output_format"  # type: ignore[index]


@pytest.mark.parametrize(("fmt", "magic"), [("jpeg", b"\xff\xd8\xff"), ("webp", b"RIFF")])
def test_output_format(client: openai.OpenAI, fmt: Any, magic: bytes) -> None:
    out = edit(client, 1, output_format=fmt, output_compression=40)
    assert base64.b64decode(out.data[0].b64_json or "").startswith(magic)


BAD: list[tuple[str, dict[str, Any], str]] = [
    ("text file", {"image": ("a.png", b"hello, not a picture", "image/png")}, "image"),
    ("gif", {"image": ("a.gif", b"GIF89a" + b"\x00" * 64, "image/gif")}, "image"),
    ("mask size", {"mask": ("m.png", left_half_mask(32, 64), "image/png")}, "mask"),
    ("mask no alpha", {"mask": ("m.png", noise(), "image/png")}, "mask"),
    ("two images", {"image": [("a.png", noise(), "image/png")] * 2}, "image"),
    ("response_format url", {"response_format": "url"}, "response_format"),
]


@pytest.mark.parametrize(("why", "kw", "param"), BAD, ids=[b[0] for b in BAD])
def test_bad_uploads_are_400_naming_the_field(
    client: openai.OpenAI, why: str, kw: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        edit(client, 1, **kw)
    assert e.value.status_code == 400
    body: Any = e.value.body
    assert body["param"] == param, body


def test_upload_over_the_limit_is_413_naming_the_part(client: openai.OpenAI) -> None:
    big = noise(200, 200)  # ~120 kB of noise: over the 100 kB limit
    assert len(big) > UPLOAD_LIMIT
    with pytest.raises(openai.APIStatusError) as e:
        edit(client, 1, image=("big.png", big, "image/png"))
    assert e.value.status_code == 413
    body: Any = e.value.body
    assert body["param"] == "image" and body["code"] == "body_too_large"


def test_limit_is_enforced_while_streaming(worker: Worker) -> None:
    # Declares 50 MB but sends the limit plus a few read chunks (aiohttp's part reader
    # looks one chunk ahead for the boundary): a worker that buffered the declared body
    # before checking would never answer.
    boundary = "b0undary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="prompt"\r\n\r\nx\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    request = (
        "POST /v1/images/edits HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {50 * 1024 * 1024}\r\n\r\n"
    ).encode()
    payload = request + head + b"\x89PNG\r\n\x1a\n" + b"\x00" * (UPLOAD_LIMIT + 4 * 65536)
    with socket.create_connection(("127.0.0.1", worker.port), timeout=20) as s:
        # Sent from a thread: once the worker stops reading, a blocking send could stall.
        sender = threading.Thread(target=_send_quietly, args=(s, payload), daemon=True)
        sender.start()
        reply = b""
        while b"\r\n\r\n" not in reply:
            chunk = s.recv(4096)
            assert chunk, "connection closed without a response"
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]


def _send_quietly(s: socket.socket, payload: bytes) -> None:
    with contextlib.suppress(OSError):  # the worker may close once it has answered
        s.sendall(payload)


def test_edit_metrics_by_endpoint(worker: Worker, client: openai.OpenAI) -> None:
    def value(endpoint: str, outcome: str) -> float:
        return worker.metric(
            f'modelfleet_worker_requests_total{{endpoint="{endpoint}",outcome="{outcome}"}}'
        )

    ok, bad, gen_ok = value("edits", "ok"), value("edits", "invalid"), value("generations", "ok")
    edit(client, 1)
    with pytest.raises(openai.BadRequestError):
        edit(client, 1, image=("a.png", b"nope", "image/png"))
    assert value("edits", "ok") == ok + 1
    assert value("edits", "invalid") == bad + 1
    assert value("generations", "ok") == gen_ok
    assert worker.metric('modelfleet_worker_images_generated_total{endpoint="edits"}') >= 1
    assert worker.metric("modelfleet_worker_cost_usd_total") > 0


def test_json_body_on_edits_is_400(worker: Worker) -> None:
    status, _, body = worker.request("POST", "/v1/images/edits", body={"prompt": "x"})
    assert status == 400 and b"multipart/form-data" in body
