"""Edits on every family the worker knows (tiny SDXL, SD3, Flux pipelines, loaded by
the worker's own load_model): both variants exist (from_pipe), run at the requested
size, and are reproducible per seed. In-process: the HTTP side is the sd15 tests'."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from modelfleet_worker.config import WorkerConfig
from modelfleet_worker.pipeline import ItemSpec, LoadedModel, load_model
from modelfleet_worker.tiny import TinySpec, write_tiny_pipeline

FAMILIES = ("sdxl", "sd3", "flux")


@pytest.fixture(scope="module")
def models() -> Iterator[dict[str, LoadedModel]]:
    import torch

    torch.set_num_threads(1)  # 2 shared cores: avoid OpenMP spinning
    with tempfile.TemporaryDirectory(prefix="mf-edit-families-") as root:
        out = {}
        for f in FAMILIES:
            d = write_tiny_pipeline(Path(root) / f, TinySpec(family=f))
            out[f] = load_model(WorkerConfig(device="cpu", dtype="float32", family=f), d, None)
        yield out


def run(model: LoadedModel, seed: int, inpaint: bool, negative: str | None = None) -> Any:
    w = h = model.default_width
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8))
    mask = np.zeros((h, w), np.uint8)
    mask[:, : w // 2] = 255  # repaint the left half
    item = ItemSpec("a cat", negative, seed, image=img, mask=Image.fromarray(mask, "L"))
    return model.edit([item], w, h, 2, 3.0, 1.0 if inpaint else 0.8, inpaint)[0]


@pytest.mark.parametrize("inpaint", [False, True], ids=["image2image", "inpaint"])
@pytest.mark.parametrize("family", FAMILIES)
def test_family_edits(models: dict[str, LoadedModel], family: str, inpaint: bool) -> None:
    model = models[family]
    assert model.edit_unsupported(inpaint) is None
    a, again, other = (run(model, s, inpaint) for s in (1, 1, 2))
    assert a.size == (model.default_width, model.default_height)
    assert np.array_equal(np.asarray(a), np.asarray(again))  # a seed reproduces its edit
    assert not np.array_equal(np.asarray(a), np.asarray(other))
    if model.supports_negative_prompt:  # the variant takes it as the base pipeline does
        assert run(model, 1, inpaint, negative="blurry").size == a.size
