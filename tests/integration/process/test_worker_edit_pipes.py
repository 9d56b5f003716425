"""Models that cannot edit, on a real WorkerServer on loopback. A pipeline diffusers
has no image-to-image or inpainting variant for (a tiny DDPM one): the worker records
it at load and answers edits 400 naming the reason, instead of a 500 from the
inference thread. A backend without edits at all (the text-drawing one): 400 too."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer
from PIL import Image

from modelfleet_worker.compat import Compat
from modelfleet_worker.config import WorkerConfig
from modelfleet_worker.pipeline import LoadedModel
from modelfleet_worker.server import WorkerServer


def ddpm_model(cfg: WorkerConfig) -> LoadedModel:
    import diffusers
    import torch

    d: Any = diffusers
    torch.manual_seed(0)
    unet = d.UNet2DModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 8),
        norm_num_groups=4,
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
    )
    pipe = d.DDPMPipeline(unet=unet, scheduler=d.DDPMScheduler())
    model = LoadedModel(cfg, pipe, torch.device("cpu"), Compat((), (), 1, 8, 8))
    model.prepare_edits()
    return model


@pytest.fixture
async def client() -> AsyncIterator[TestClient[Any, Any]]:
    cfg = WorkerConfig(device="cpu", verify=False, max_resolution=64)
    server = WorkerServer(cfg)
    server.attach_model(ddpm_model(cfg))
    server.state = "ready"
    async with TestClient(TestServer(server.app(), host="127.0.0.1")) as c:
        yield c
    assert server.engine is not None
    await server.engine.close()


def upload(with_mask: bool) -> aiohttp.FormData:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 4), np.uint8), "RGBA").save(buf, format="PNG")
    fd = aiohttp.FormData()
    fd.add_field("prompt", "x")
    fd.add_field("image", buf.getvalue(), filename="a.png", content_type="image/png")
    if with_mask:
        fd.add_field("mask", buf.getvalue(), filename="m.png", content_type="image/png")
    return fd


@pytest.mark.parametrize(
    ("with_mask", "param", "kind"),
    [(False, "image", "image-to-image"), (True, "mask", "inpainting")],
)
async def test_edit_without_a_variant_is_400(
    client: TestClient[Any, Any], with_mask: bool, param: str, kind: str
) -> None:
    async with client.post("/v1/images/edits", data=upload(with_mask)) as r:
        body = await r.json()
        assert r.status == 400, body
    err = body["error"]
    assert err["code"] == "unsupported_edit" and err["param"] == param
    assert "DDPMPipeline" in err["message"] and kind in err["message"]
    async with client.get("/metrics") as m:
        text = await m.text()
    assert 'modelfleet_worker_requests_total{endpoint="edits",outcome="invalid"} 1.0' in text
    assert 'modelfleet_worker_requests_total{endpoint="edits",outcome="error"} 0.0' in text


async def test_backend_without_edits_says_so() -> None:
    from modelfleet_dev.textrender import TextRenderModel

    cfg = WorkerConfig(device="cpu", verify=False)
    server = WorkerServer(cfg)
    server.attach_model(TextRenderModel(0.0, 64, 64))
    server.state = "ready"
    try:
        async with (
            TestClient(TestServer(server.app(), host="127.0.0.1")) as c,
            c.post("/v1/images/edits", data=upload(False)) as r,
        ):
            body = await r.json()
            assert r.status == 400, body
    finally:
        assert server.engine is not None
        await server.engine.close()
    assert body["error"]["code"] == "unsupported_endpoint"
    assert "does not support edits" in body["error"]["message"]
