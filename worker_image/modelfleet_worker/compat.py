"""Denoiser/VAE pairing checks and size rules derived from configs. Pure.

A wrong VAE otherwise fails only at decode time, after a full denoising run
("Expected tensor of shape (1,4,64,64) but got (1,4,128,128)"); checking the
configs at load turns that into a refusal to start with both shapes named.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class DenoiserSpec:
    kind: str  # "unet" or "transformer"
    in_channels: int
    sample_size: int | None  # latent pixels per side the denoiser was trained on
    patch_size: int | None  # transformer patchification (sd3); None for UNets
    packed_2x2: bool  # flux packs 2x2 latent patches into channels


@dataclass(frozen=True)
class VaeSpec:
    latent_channels: int
    block_out_channels: tuple[int, ...]
    sample_size: int | None  # image pixels per side


@dataclass(frozen=True)
class Compat:
    errors: tuple[str, ...]
    warnings: tuple[str, ...]
    vae_scale_factor: int
    size_multiple: int
    default_size: int


@dataclass(frozen=True)
class FamilyDefaults:
    steps: int
    guidance: float
    negative_prompt: bool  # whether the family's pipeline uses one


# Pipeline class -> family, for pools that leave MODELFLEET_WORKER_FAMILY at custom.
_PIPELINE_FAMILIES = {
    "StableDiffusionPipeline": "sd15",
    "StableDiffusionXLPipeline": "sdxl",
    "StableDiffusion3Pipeline": "sd3",
    "FluxPipeline": "flux",
}


def family_of(pipeline_class: str, declared: str) -> str:
    """The declared family, else the one the pipeline class implies, else custom."""
    if declared != "custom":
        return declared
    return _PIPELINE_FAMILIES.get(pipeline_class, "custom")


def family_defaults(family: str, *, turbo: bool, guidance_embeds: bool = True) -> FamilyDefaults:
    """Steps and guidance a request gets when it names none (the model cards' values).

    Turbo (adversarially distilled: SDXL-Turbo, SD3.5 Large Turbo) and FLUX.1-schnell
    (guidance_embeds False) run a few steps without classifier-free guidance. Flux takes a
    negative prompt only through true_cfg_scale, which doubles the work: not offered.
    """
    if family == "flux":
        if turbo or not guidance_embeds:
            return FamilyDefaults(4, 0.0, False)
        return FamilyDefaults(28, 3.5, False)  # FLUX.1-dev: embedded guidance
    if turbo:
        return FamilyDefaults(1 if family == "sdxl" else 4, 0.0, True)
    table = {
        "sdxl": FamilyDefaults(30, 5.0, True),
        "sd3": FamilyDefaults(40, 4.5, True),  # stable-diffusion-3.5-medium model card
    }
    return table.get(family, FamilyDefaults(20, 7.5, True))


def vae_scale_factor(vae: VaeSpec) -> int:
    return int(2 ** (len(vae.block_out_channels) - 1))


def check_pairing(den: DenoiserSpec, vae: VaeSpec, family: str) -> Compat:
    errors: list[str] = []
    warnings: list[str] = []
    scale = vae_scale_factor(vae)
    # Flux's transformer has no sample_size: the VAE's image size (1024 for FLUX.1) says it.
    vae_side = vae.sample_size // scale if vae.sample_size else None
    latent_side = den.sample_size or vae_side or (128 if den.packed_2x2 else 64)
    image_side = latent_side * scale
    expected_c = den.in_channels // 4 if den.packed_2x2 else den.in_channels
    vae_shape = f"(B, {vae.latent_channels}, {latent_side}, {latent_side})"
    den_shape = f"(B, {expected_c}, {latent_side}, {latent_side})"
    if vae.latent_channels != expected_c:
        errors.append(
            f"VAE/denoiser mismatch: the VAE produces latents of shape {vae_shape} for a "
            f"{image_side}x{image_side} image but the {den.kind} expects {den_shape} "
            f"(vae.latent_channels={vae.latent_channels}, "
            f"{den.kind}.in_channels={den.in_channels})"
        )
    if family in ("sd15", "sdxl", "sd3", "flux") and scale != 8:
        errors.append(
            f"VAE scale factor is {scale} (block_out_channels={list(vae.block_out_channels)}) "
            f"but family {family} expects 8: latents would be "
            f"(B, {vae.latent_channels}, {image_side // scale}, {image_side // scale}) "
            f"instead of (B, {expected_c}, {image_side // 8}, {image_side // 8})"
        )
    if vae.sample_size and den.sample_size and vae.sample_size != image_side:
        # Only a warning: fine-tuned VAEs (e.g. sd-vae-ft-mse, sample_size 256) are
        # routinely paired with 512px UNets; the size is a training hint, not a shape.
        warnings.append(
            f"VAE sample_size {vae.sample_size} differs from the denoiser's "
            f"{den.sample_size} latents x {scale} = {image_side}px"
        )
    # SD pipelines check height % 8 hard-coded; transformers need whole patches.
    multiple = math.lcm(8, scale)
    if den.patch_size:
        multiple = math.lcm(multiple, scale * den.patch_size)
    if den.packed_2x2:
        multiple = math.lcm(multiple, scale * 2)
    return Compat(
        errors=tuple(errors),
        warnings=tuple(warnings),
        vae_scale_factor=scale,
        size_multiple=multiple,
        default_size=image_side,
    )
