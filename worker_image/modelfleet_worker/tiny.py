"""Write a tiny, randomly initialised but complete StableDiffusionPipeline
(sdxl, sd3 and flux: tiny_families.py).

Built from configs only (no downloads), saved with save_pretrained, so the
worker loads it with exactly the from_pretrained code it uses for real models.
"""

from __future__ import annotations

import inspect
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class TinySpec:
    family: str = "sd15"
    latent_channels: int = 4
    vae_latent_channels: int | None = None  # set to differ from latent_channels: a bad pair
    channels: int = 32  # base UNet width; the bench raises it so batching can pay off
    sample_size: int = 32  # latent side; image side = sample_size * 2 (VAE scale factor 2)
    text_hidden: int = 32
    seed: int = 0
    size: str = "tiny"  # sdxl/sd3/flux only: "real" writes the real dimensions
    vae_family: str | None = None  # sdxl/sd3/flux only: pair with that family's VAE


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte-to-printable map (same table the CLIP tokenizer uses)."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))


def write_clip_tokenizer_files(out: Path) -> int:
    """A byte-level CLIP vocab with no merges: every character is a token.

    Returns the vocab size. Tiny but real: CLIPTokenizer loads it like any other.
    """
    out.mkdir(parents=True, exist_ok=True)
    chars = list(bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for c in chars:
        vocab[c] = len(vocab)
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    return len(vocab)


def write_tiny_pipeline(out_dir: str | os.PathLike[str], spec: TinySpec) -> Path:
    # Heavy imports stay local so `--help` and the pure modules load fast.
    import diffusers
    import torch

    d: Any = diffusers  # diffusers ships no type hints for its constructors

    out = Path(out_dir)
    if spec.family != "sd15":
        from .tiny_families import FamilySpec, write_family_pipeline

        fam = FamilySpec(spec.family, spec.size, spec.vae_family, spec.seed)
        return write_family_pipeline(out, fam)
    torch.manual_seed(spec.seed)
    c = spec.channels
    unet = d.UNet2DConditionModel(
        sample_size=spec.sample_size,
        in_channels=spec.latent_channels,
        out_channels=spec.latent_channels,
        block_out_channels=(c, 2 * c),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=spec.text_hidden,
        attention_head_dim=max(1, c // 16),
        # Any width works (the canary bench's "slower model" is a wider UNet, e.g. 40).
        norm_num_groups=min(32, c) if c <= 32 or c % 32 == 0 else math.gcd(32, c),
    )
    vae_latents = spec.vae_latent_channels or spec.latent_channels
    vae = d.AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(16, 32),
        layers_per_block=1,
        latent_channels=vae_latents,
        norm_num_groups=16,
        sample_size=spec.sample_size * 2,
    )
    tok_dir = out / "_tokenizer_src"
    tokenizer, text_encoder = text_stack(
        tok_dir,
        hidden=spec.text_hidden,
        intermediate=2 * spec.text_hidden,
        heads=2,
        layers=2,
    )
    pipe = sd_pipeline(unet, vae, tokenizer, text_encoder)
    pipe.save_pretrained(str(out))
    for f in tok_dir.iterdir():
        f.unlink()
    tok_dir.rmdir()
    return out


def text_stack(
    tok_dir: Path,
    *,
    hidden: int,
    intermediate: int,
    heads: int,
    layers: int,
    vocab_size: int | None = None,
) -> tuple[Any, Any]:
    """A CLIP tokenizer written into `tok_dir` plus a randomly initialised text encoder."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    written = write_clip_tokenizer_files(tok_dir)
    # transformers 5 names the file arguments vocab/merges; 4.x vocab_file/merges_file.
    params = inspect.signature(CLIPTokenizer.__init__).parameters
    names = ("vocab", "merges") if "vocab" in params else ("vocab_file", "merges_file")
    tok_kwargs: dict[str, Any] = {
        names[0]: str(tok_dir / "vocab.json"),
        names[1]: str(tok_dir / "merges.txt"),
    }
    tokenizer = CLIPTokenizer(model_max_length=77, **tok_kwargs)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size or written,
            hidden_size=hidden,
            intermediate_size=intermediate,
            num_attention_heads=heads,
            num_hidden_layers=layers,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    return tokenizer, text_encoder


def sd_pipeline(unet: Any, vae: Any, tokenizer: Any, text_encoder: Any) -> Any:
    """An SD1.5-layout pipeline (DDIM scheduler, no safety checker) from given parts."""
    import diffusers

    d: Any = diffusers
    scheduler = d.DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return d.StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
