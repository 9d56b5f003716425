"""SDXL, SD3(.5) and Flux pipelines with their real layout and random weights.

The component classes and config keys are those of the public repositories
(stabilityai/stable-diffusion-xl-base-1.0, stabilityai/stable-diffusion-3.5-medium,
black-forest-labs/FLUX.1-schnell); `size="real"` uses their dimensions,
`size="tiny"` shrinks widths and depths only, so the worker loads both with
the same from_pretrained code. Nothing is downloaded: tokenizers are built
offline (CLIP byte-level BPE, T5 Unigram via the `tokenizers` library).

Disk at size "real" in bfloat16 (weights only): sdxl ~7 GB, sd3 (3.5 Medium with
T5-XXL) ~16 GB, flux (schnell) ~34 GB. Never in CI.
"""

from __future__ import annotations

import contextlib
import inspect
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .tiny import write_clip_tokenizer_files

FAMILIES = ("sdxl", "sd3", "flux")
SIZES = ("tiny", "real")


@dataclass(frozen=True)
class FamilySpec:
    family: str
    size: str = "tiny"
    vae_family: str | None = None  # write another family's VAE: a bad pair
    seed: int = 0


@dataclass(frozen=True)
class ClipDims:
    hidden: int
    layers: int
    heads: int
    intermediate: int
    projection: int


# CLIP-L (openai/clip-vit-large-patch14) and OpenCLIP bigG, as in the repositories.
_CLIP_L = ClipDims(768, 12, 12, 3072, 768)
_CLIP_G = ClipDims(1280, 32, 20, 5120, 1280)
_TINY_CLIP = ClipDims(32, 2, 2, 64, 32)


def _clip(
    tok_dir: Path, dims: ClipDims, *, with_projection: bool, real: bool, act: str = "quick_gelu"
) -> tuple[Any, Any]:
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
    )

    written = write_clip_tokenizer_files(tok_dir)
    params = inspect.signature(CLIPTokenizer.__init__).parameters
    names = ("vocab", "merges") if "vocab" in params else ("vocab_file", "merges_file")
    tokenizer = CLIPTokenizer(
        model_max_length=77,
        **{names[0]: str(tok_dir / "vocab.json"), names[1]: str(tok_dir / "merges.txt")},
    )
    cfg = CLIPTextConfig(
        # The real vocab (49408) keeps the embedding at its true size; the offline
        # byte-level tokenizer only uses the first ids.
        vocab_size=49408 if real else written,
        hidden_size=dims.hidden,
        intermediate_size=dims.intermediate,
        num_attention_heads=dims.heads,
        num_hidden_layers=dims.layers,
        projection_dim=dims.projection,
        max_position_embeddings=77,
        hidden_act=act,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = CLIPTextModelWithProjection(cfg) if with_projection else CLIPTextModel(cfg)
    return tokenizer, model


def t5_tokenizer(out: Path) -> Any:
    """A T5TokenizerFast from a Unigram model over single characters (offline)."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    tf: Any = transformers  # transformers 5 exports T5TokenizerFast lazily (an alias)

    out.mkdir(parents=True, exist_ok=True)
    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    chars = [chr(c) for c in range(32, 127)]
    pieces += [("▁" + c, -1.0) for c in chars] + [(c, -2.0) for c in chars] + [("▁", -3.0)]
    tok = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    tok.normalizer = normalizers.Sequence([normalizers.Replace("  ", " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    tok.save(str(out / "tokenizer.json"))
    return tf.T5TokenizerFast(
        tokenizer_file=str(out / "tokenizer.json"),
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_ids=0,
        model_max_length=512,
    )


def _t5(tok_dir: Path, real: bool, d_model: int) -> tuple[Any, Any]:
    from transformers import T5Config, T5EncoderModel

    tokenizer = t5_tokenizer(tok_dir)
    if real:  # google/t5-v1_1-xxl encoder, as shipped in SD3 and Flux
        cfg = T5Config(
            vocab_size=32128,
            d_model=4096,
            d_kv=64,
            d_ff=10240,
            num_layers=24,
            num_heads=64,
            feed_forward_proj="gated-gelu",
            relative_attention_num_buckets=32,
            is_encoder_decoder=False,
        )
    else:
        cfg = T5Config(
            vocab_size=len(tokenizer),
            d_model=d_model,
            d_kv=16,
            d_ff=2 * d_model,
            num_layers=2,
            num_heads=2,
            feed_forward_proj="gated-gelu",
            is_encoder_decoder=False,
        )
    return tokenizer, T5EncoderModel(cfg)


@contextlib.contextmanager
def _cpu_float32() -> Iterator[None]:
    """Callers (the GPU bench) may build under a cuda device and a bf16 default dtype;
    scheduler tables must stay float32 on the CPU, as from_pretrained makes them."""
    import torch

    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        with torch.device("cpu"):
            yield
    finally:
        torch.set_default_dtype(old)


def _vae(family: str, real: bool) -> Any:
    """Four blocks (scale factor 8) at every size; only the widths shrink."""
    import diffusers

    d: Any = diffusers
    blocks = (128, 256, 512, 512) if real else (8, 8, 8, 8)
    common: dict[str, Any] = {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "block_out_channels": blocks,
        "layers_per_block": 2 if real else 1,
        "norm_num_groups": 32 if real else 4,
        "sample_size": 1024 if real else 64,
        "force_upcast": True,
    }
    if family == "sdxl":
        return d.AutoencoderKL(latent_channels=4, scaling_factor=0.13025, **common)
    shift, scale = {"sd3": (0.0609, 1.5305), "flux": (0.1159, 0.3611)}[family]
    return d.AutoencoderKL(
        latent_channels=16,
        scaling_factor=scale,
        shift_factor=shift,
        use_quant_conv=False,
        use_post_quant_conv=False,
        **common,
    )


def _sdxl(tmp: Path, real: bool) -> dict[str, Any]:
    import diffusers

    d: Any = diffusers
    c1, c2 = (_CLIP_L, _CLIP_G) if real else (_TINY_CLIP, _TINY_CLIP)
    tok1, te1 = _clip(tmp / "t1", c1, with_projection=False, real=real)
    tok2, te2 = _clip(tmp / "t2", c2, with_projection=True, real=real, act="gelu")
    time_dim = 256 if real else 8
    unet = d.UNet2DConditionModel(
        sample_size=128 if real else 8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(320, 640, 1280) if real else (32, 64),
        layers_per_block=2 if real else 1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D")
        if real
        else ("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")
        if real
        else ("CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10) if real else (1, 1),
        attention_head_dim=(5, 10, 20) if real else (2, 4),
        use_linear_projection=True,
        cross_attention_dim=c1.hidden + c2.hidden,  # penultimate states concatenated
        addition_embed_type="text_time",
        addition_time_embed_dim=time_dim,
        # pooled CLIP-G projection + 6 micro-conditioning numbers x time_dim
        projection_class_embeddings_input_dim=c2.projection + 6 * time_dim,
        norm_num_groups=32,
    )
    with _cpu_float32():  # schedulers keep float32 tables on the CPU
        scheduler = d.EulerDiscreteScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            steps_offset=1,
            timestep_spacing="leading",
            interpolation_type="linear",
        )
    return {
        "cls": d.StableDiffusionXLPipeline,
        "unet": unet,
        "text_encoder": te1,
        "tokenizer": tok1,
        "text_encoder_2": te2,
        "tokenizer_2": tok2,
        "scheduler": scheduler,
        "image_encoder": None,
        "feature_extractor": None,
        "force_zeros_for_empty_prompt": True,
        "add_watermarker": False,
    }


def _sd3(tmp: Path, real: bool) -> dict[str, Any]:
    import diffusers

    d: Any = diffusers
    c1, c2 = (_CLIP_L, _CLIP_G) if real else (_TINY_CLIP, _TINY_CLIP)
    tok1, te1 = _clip(tmp / "t1", c1, with_projection=True, real=real)
    tok2, te2 = _clip(tmp / "t2", c2, with_projection=True, real=real, act="gelu")
    # The pipeline zero-pads the concatenated CLIP states up to T5's width.
    t5_dim = 4096 if real else c1.hidden + c2.hidden
    tok3, te3 = _t5(tmp / "t3", real, t5_dim)
    if real:  # stable-diffusion-3.5-medium transformer/config.json (MMDiT-X)
        transformer = d.SD3Transformer2DModel(
            sample_size=128,
            patch_size=2,
            in_channels=16,
            out_channels=16,
            num_layers=24,
            attention_head_dim=64,
            num_attention_heads=24,
            joint_attention_dim=4096,
            caption_projection_dim=1536,
            pooled_projection_dim=2048,
            pos_embed_max_size=384,
            qk_norm="rms_norm",
            dual_attention_layers=tuple(range(13)),
        )
    else:
        transformer = d.SD3Transformer2DModel(
            sample_size=8,
            patch_size=2,
            in_channels=16,
            out_channels=16,
            num_layers=2,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=t5_dim,
            caption_projection_dim=32,
            pooled_projection_dim=c1.projection + c2.projection,
            pos_embed_max_size=16,
            qk_norm="rms_norm",
            dual_attention_layers=(0,),
        )
    with _cpu_float32():
        scheduler = d.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    return {
        "cls": d.StableDiffusion3Pipeline,
        "transformer": transformer,
        "text_encoder": te1,
        "tokenizer": tok1,
        "text_encoder_2": te2,
        "tokenizer_2": tok2,
        "text_encoder_3": te3,
        "tokenizer_3": tok3,
        "scheduler": scheduler,
        "image_encoder": None,
        "feature_extractor": None,
    }


def _flux(tmp: Path, real: bool) -> dict[str, Any]:
    import diffusers

    d: Any = diffusers
    c1 = _CLIP_L if real else _TINY_CLIP
    tok1, te1 = _clip(tmp / "t1", c1, with_projection=False, real=real)
    t5_dim = 4096 if real else 32
    tok2, te2 = _t5(tmp / "t2", real, t5_dim)
    transformer = d.FluxTransformer2DModel(  # FLUX.1-schnell transformer/config.json
        patch_size=1,
        in_channels=64,  # 16 latent channels x a packed 2x2 patch
        num_layers=19 if real else 1,
        num_single_layers=38 if real else 1,
        attention_head_dim=128 if real else 16,
        num_attention_heads=24 if real else 2,
        joint_attention_dim=t5_dim,
        pooled_projection_dim=c1.hidden,  # CLIP's pooled output (no projection)
        guidance_embeds=False,  # schnell; dev has True
        axes_dims_rope=(16, 56, 56) if real else (4, 6, 6),
    )
    with _cpu_float32():  # schedulers keep float32 tables on the CPU
        scheduler = d.FlowMatchEulerDiscreteScheduler(
            num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False
        )
    return {
        "cls": d.FluxPipeline,
        "transformer": transformer,
        "text_encoder": te1,
        "tokenizer": tok1,
        "text_encoder_2": te2,
        "tokenizer_2": tok2,
        "scheduler": scheduler,
        "image_encoder": None,
        "feature_extractor": None,
    }


_BUILDERS = {"sdxl": _sdxl, "sd3": _sd3, "flux": _flux}


def build_pipeline(spec: FamilySpec, tmp: Path) -> Any:
    """The pipeline object (tokenizer sources under `tmp`); callers may move it to a GPU."""
    import torch

    if spec.family not in _BUILDERS:
        raise ValueError(f"family must be one of {', '.join(FAMILIES)}, not {spec.family!r}")
    if spec.size not in SIZES:
        raise ValueError(f"size must be one of {', '.join(SIZES)}, not {spec.size!r}")
    torch.manual_seed(spec.seed)
    real = spec.size == "real"
    parts = _BUILDERS[spec.family](tmp, real)
    parts["vae"] = _vae(spec.vae_family or spec.family, real)
    cls = parts.pop("cls")
    return cls(**parts)


def write_family_pipeline(out: Path, spec: FamilySpec) -> Path:
    import shutil

    import torch

    tmp = out / "_tokenizer_src"
    pipe = build_pipeline(spec, tmp)
    if spec.size == "real":
        pipe.to(torch.bfloat16)  # halves the disk; the worker casts to its dtype anyway
    pipe.save_pretrained(str(out))
    shutil.rmtree(tmp, ignore_errors=True)
    # Record what was written (read by tests and the bench, ignored by diffusers).
    (out / "modelfleet_tiny.json").write_text(
        json.dumps({"family": spec.family, "size": spec.size, "vae_family": spec.vae_family}),
        encoding="utf-8",
    )
    return out
