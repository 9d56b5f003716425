"""SDXL, SD3 and Flux: family rules (pure tables) and the tiny pipelines through the
worker's own load_model: layout, generation, batch invariance, VAE pairing refusal."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelfleet_worker.compat import (
    DenoiserSpec,
    FamilyDefaults,
    VaeSpec,
    check_pairing,
    family_defaults,
    family_of,
)

FAMILIES = ("sdxl", "sd3", "flux")
# Alone vs batched: float32 on CPU, batched matmuls may sum in another order
# (the same tolerance as the sd15 process test).
PIXEL_TOLERANCE = 2

VAE8_4 = VaeSpec(4, (128, 256, 512, 512), 1024)  # SDXL's
VAE8_16 = VaeSpec(16, (128, 256, 512, 512), 1024)  # SD3's and Flux's
SD3 = DenoiserSpec("transformer", 16, 128, 2, False)
FLUX = DenoiserSpec("transformer", 64, None, 1, True)
SDXL = DenoiserSpec("unet", 4, 128, None, False)


@pytest.mark.parametrize(
    ("cls", "declared", "family"),
    [
        ("StableDiffusion3Pipeline", "custom", "sd3"),
        ("StableDiffusionXLPipeline", "custom", "sdxl"),
        ("FluxPipeline", "custom", "flux"),
        ("StableDiffusionPipeline", "custom", "sd15"),
        ("KandinskyPipeline", "custom", "custom"),
        ("FluxPipeline", "sd3", "sd3"),  # a declared family wins
    ],
)
def test_family_of(cls: str, declared: str, family: str) -> None:
    assert family_of(cls, declared) == family


@pytest.mark.parametrize(
    ("family", "turbo", "embeds", "want"),
    [
        ("sd15", False, True, FamilyDefaults(20, 7.5, True)),
        ("custom", False, True, FamilyDefaults(20, 7.5, True)),
        ("sdxl", False, True, FamilyDefaults(30, 5.0, True)),
        ("sdxl", True, True, FamilyDefaults(1, 0.0, True)),
        ("sd3", False, True, FamilyDefaults(40, 4.5, True)),
        ("sd3", True, True, FamilyDefaults(4, 0.0, True)),
        ("flux", False, False, FamilyDefaults(4, 0.0, False)),  # schnell
        ("flux", False, True, FamilyDefaults(28, 3.5, False)),  # dev
        ("flux", True, True, FamilyDefaults(4, 0.0, False)),
    ],
)
def test_family_defaults(family: str, turbo: bool, embeds: bool, want: FamilyDefaults) -> None:
    assert family_defaults(family, turbo=turbo, guidance_embeds=embeds) == want


@pytest.mark.parametrize(
    ("den", "vae", "family", "multiple", "side"),
    [
        (SD3, VAE8_16, "sd3", 16, 1024),  # 8 x patch 2
        (FLUX, VAE8_16, "flux", 16, 1024),  # 8 x packed 2x2; size from the VAE
        (SDXL, VAE8_4, "sdxl", 8, 1024),
    ],
)
def test_real_pairs_pass(
    den: DenoiserSpec, vae: VaeSpec, family: str, multiple: int, side: int
) -> None:
    c = check_pairing(den, vae, family)
    assert c.errors == () and c.size_multiple == multiple and c.default_size == side


def test_sd3_with_sdxl_vae_names_both_shapes() -> None:
    (err,) = check_pairing(SD3, VAE8_4, "sd3").errors
    assert "(B, 4, 128, 128)" in err and "(B, 16, 128, 128)" in err, err


def test_flux_packed_latents_checked_unpacked() -> None:
    # 64 packed channels are 16 latent channels: an SDXL VAE (4) is refused, SD3's passes.
    (err,) = check_pairing(FLUX, VAE8_4, "flux").errors
    assert "(B, 4, 128, 128)" in err and "(B, 16, 128, 128)" in err, err
    assert "transformer.in_channels=64" in err


# ----- the tiny pipelines, one per family per session ------------------------


@pytest.fixture(scope="session")
def family_dirs() -> Iterator[dict[str, Path]]:
    from modelfleet_worker.tiny import TinySpec, write_tiny_pipeline

    with tempfile.TemporaryDirectory(prefix="mf-families-") as root:
        dirs = {f: write_tiny_pipeline(Path(root) / f, TinySpec(family=f)) for f in FAMILIES}
        yield dirs


@pytest.fixture(scope="session")
def loaded(family_dirs: dict[str, Path]) -> dict[str, Any]:
    import torch

    from modelfleet_worker.config import WorkerConfig
    from modelfleet_worker.pipeline import load_model

    torch.set_num_threads(1)
    cfg = WorkerConfig(device="cpu", dtype="float32")
    return {f: load_model(cfg, d, None) for f, d in family_dirs.items()}


def _t5_tokenizer_class() -> str:
    # transformers 5 folds T5TokenizerFast into T5Tokenizer (tokenizers-backed):
    # the repositories' "T5TokenizerFast" loads as that class and is saved under its name.
    from transformers import T5TokenizerFast

    return str(T5TokenizerFast.__name__)


def _components(model_dir: Path) -> dict[str, str]:
    index = json.loads((model_dir / "model_index.json").read_text())
    return {k: v[1] for k, v in index.items() if isinstance(v, list) and v[1]}


def test_layouts_match_the_real_repositories(family_dirs: dict[str, Path]) -> None:
    sd3 = _components(family_dirs["sd3"])
    assert sd3 == {
        "transformer": "SD3Transformer2DModel",
        "text_encoder": "CLIPTextModelWithProjection",
        "text_encoder_2": "CLIPTextModelWithProjection",
        "text_encoder_3": "T5EncoderModel",
        "tokenizer": "CLIPTokenizer",
        "tokenizer_2": "CLIPTokenizer",
        "tokenizer_3": _t5_tokenizer_class(),
        "vae": "AutoencoderKL",
        "scheduler": "FlowMatchEulerDiscreteScheduler",
    }
    assert _components(family_dirs["sdxl"]) == {
        "unet": "UNet2DConditionModel",
        "text_encoder": "CLIPTextModel",
        "text_encoder_2": "CLIPTextModelWithProjection",
        "tokenizer": "CLIPTokenizer",
        "tokenizer_2": "CLIPTokenizer",
        "vae": "AutoencoderKL",
        "scheduler": "EulerDiscreteScheduler",
    }
    assert _components(family_dirs["flux"]) == {
        "transformer": "FluxTransformer2DModel",
        "text_encoder": "CLIPTextModel",
        "text_encoder_2": "T5EncoderModel",
        "tokenizer": "CLIPTokenizer",
        "tokenizer_2": _t5_tokenizer_class(),
        "vae": "AutoencoderKL",
        "scheduler": "FlowMatchEulerDiscreteScheduler",
    }
    for fam in ("sd3", "flux"):
        vae = json.loads((family_dirs[fam] / "vae" / "config.json").read_text())
        assert vae["latent_channels"] == 16 and len(vae["block_out_channels"]) == 4
        assert vae["shift_factor"] and vae["scaling_factor"] and not vae["use_quant_conv"]
    unet = json.loads((family_dirs["sdxl"] / "unet" / "config.json").read_text())
    assert unet["addition_embed_type"] == "text_time"
    flux = json.loads((family_dirs["flux"] / "transformer" / "config.json").read_text())
    assert flux["in_channels"] == 64 and flux["guidance_embeds"] is False


def test_t5_tokenizer_is_offline_and_real(loaded: dict[str, Any]) -> None:
    tok = loaded["sd3"].pipe.tokenizer_3
    ids = tok("a red sign").input_ids
    assert ids[-1] == tok.eos_token_id == 1 and tok.unk_token_id not in ids
    assert tok.decode(ids, skip_special_tokens=True) == "a red sign"


@pytest.mark.parametrize(
    ("family", "steps", "guidance", "negative", "multiple"),
    [("sdxl", 30, 5.0, True, 8), ("sd3", 40, 4.5, True, 16), ("flux", 4, 0.0, False, 16)],
)
def test_loaded_family_rules(
    loaded: dict[str, Any],
    family: str,
    steps: int,
    guidance: float,
    negative: bool,
    multiple: int,
) -> None:
    m = loaded[family]
    assert m.family == family
    assert (m.default_steps, m.default_guidance) == (steps, guidance)
    assert m.supports_negative_prompt is negative
    assert m.compat.size_multiple == multiple
    assert (m.default_width, m.default_height) == (64, 64)  # 8 latents x VAE scale 8


def _px(img: Any) -> np.ndarray:
    return np.asarray(img.convert("RGB")).astype(np.int16)


@pytest.mark.parametrize("family", FAMILIES)
def test_alone_vs_batched_within_tolerance(loaded: dict[str, Any], family: str) -> None:
    from modelfleet_worker.pipeline import ItemSpec

    m = loaded[family]
    neg = "blurry" if m.supports_negative_prompt else None
    items = [ItemSpec("a red cube", neg, s) for s in (100, 101, 102)]
    batched = m.generate(items, 64, 48, 2, m.default_guidance or 3.0)
    alone = m.generate(items[1:2], 64, 48, 2, m.default_guidance or 3.0)
    assert batched[0].size == (64, 48)
    diff = int(np.abs(_px(alone[0]) - _px(batched[1])).max())
    assert diff <= PIXEL_TOLERANCE, diff
    # The seeds matter: a check that cannot fail would pass with identical images.
    assert int(np.abs(_px(batched[0]) - _px(batched[1])).max()) > 10 * PIXEL_TOLERANCE


@pytest.mark.parametrize(("family", "vae_family"), [("sd3", "sdxl"), ("flux", "sdxl")])
def test_foreign_vae_refused_at_load(
    family_dirs: dict[str, Path], family: str, vae_family: str
) -> None:
    from modelfleet_worker.config import WorkerConfig
    from modelfleet_worker.pipeline import ModelLoadError, load_model

    cfg = WorkerConfig(device="cpu", dtype="float32", family=family)
    with pytest.raises(ModelLoadError) as err:
        load_model(cfg, family_dirs[family], family_dirs[vae_family])
    msg = str(err.value)
    assert "(B, 4, 8, 8)" in msg and "(B, 16, 8, 8)" in msg, msg


def test_sd3_takes_flux_vae_shape(family_dirs: dict[str, Path]) -> None:
    # Same latent shape (16 channels, scale 8): the pairing check lets it load.
    from modelfleet_worker.config import WorkerConfig
    from modelfleet_worker.pipeline import load_model

    cfg = WorkerConfig(device="cpu", dtype="float32", family="sd3")
    m = load_model(cfg, family_dirs["sd3"], family_dirs["flux"])
    assert m.pipe.vae.config.shift_factor == pytest.approx(0.1159)


@pytest.mark.parametrize(
    ("family", "component", "billions"),
    [
        ("sdxl", "unet", 2.567),  # SDXL base UNet
        ("sdxl", "text_encoder_2", 0.695),  # OpenCLIP bigG text tower
        ("sd3", "transformer", 2.243),  # SD3.5 Medium MMDiT-X
        ("sd3", "text_encoder_3", 4.762),  # T5-v1.1-XXL encoder
        ("flux", "transformer", 11.891),  # FLUX.1 transformer ("12B")
    ],
)
def test_real_size_dimensions(family: str, component: str, billions: float) -> None:
    """--size real built on the meta device: the real parameter counts, no memory used."""
    import torch

    from modelfleet_worker.tiny_families import FamilySpec, build_pipeline

    with tempfile.TemporaryDirectory() as tmp, torch.device("meta"):
        pipe = build_pipeline(FamilySpec(family, "real"), Path(tmp))
    n = sum(p.numel() for p in getattr(pipe, component).parameters())
    assert n / 1e9 == pytest.approx(billions, abs=0.001)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("inpaint", [False, True])
def test_edit_variants_per_family(loaded: dict[str, Any], family: str, inpaint: bool) -> None:
    from PIL import Image

    from modelfleet_worker.pipeline import ItemSpec

    m = loaded[family]
    assert m.edit_unsupported(inpaint) is None
    img = Image.new("RGB", (64, 48), (200, 10, 10))
    mask = Image.new("L", (64, 48), 255) if inpaint else None
    item = ItemSpec("a sign", None, 1, image=img, mask=mask)
    (out,) = m.edit([item], 64, 48, 2, m.default_guidance or 3.0, 0.8, inpaint)
    assert out.size == (64, 48)
