"""Loading a diffusers pipeline and running batches on it (torch lives here)."""

from __future__ import annotations

import gc
import inspect
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .compat import (
    Compat,
    DenoiserSpec,
    FamilyDefaults,
    VaeSpec,
    check_pairing,
    family_defaults,
    family_of,
)
from .config import WorkerConfig
from .memory import MemoryProfile

log = logging.getLogger("modelfleet_worker.pipeline")


class ModelLoadError(Exception):
    """The model cannot be served; the process must refuse to start."""


class InjectedOOMError(torch.cuda.OutOfMemoryError):
    """Raised by the OOM drill; a real OutOfMemoryError subclass so every
    handler that catches the real thing catches this too."""


@dataclass(frozen=True, eq=False)
class ItemSpec:
    prompt: str
    negative_prompt: str | None
    seed: int
    text: tuple[str, ...] = ()  # expected text; diffusers reads it from the prompt
    image: Any = None  # edits: input PIL image at the output size
    mask: Any = None  # inpainting: PIL "L" mask, 255 = repaint


@dataclass(frozen=True)
class CpuMemoryNote:
    """On CPU there is no allocator peak to read; peak RSS deltas are indicative."""

    rss_peak_delta_1: int
    rss_peak_delta_2: int


def resolve_device(cfg: WorkerConfig) -> torch.device:
    if cfg.device == "cpu":
        return torch.device("cpu")
    if cfg.device == "cuda":
        if not torch.cuda.is_available():
            raise ModelLoadError("MODELFLEET_WORKER_DEVICE=cuda but no CUDA device is visible")
        return torch.device("cuda")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_dtype(cfg: WorkerConfig, device: torch.device) -> torch.dtype:
    if device.type == "cpu" and cfg.dtype != "float32":
        # Half precision on CPU is slow or unsupported for many ops.
        log.warning("dtype %s requested but running on CPU: using float32", cfg.dtype)
        return torch.float32
    return {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[
        cfg.dtype
    ]


def is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _peak_rss_bytes() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _reset_peak_rss() -> None:
    try:  # Linux: writing 5 resets VmHWM to the current RSS.
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
    except OSError:
        pass


class LoadedModel:
    def __init__(
        self,
        cfg: WorkerConfig,
        pipe: Any,
        device: torch.device,
        compat: Compat,
        family: str = "custom",
        defaults: FamilyDefaults | None = None,
    ) -> None:
        self.cfg = cfg
        self.family = family
        fam = defaults or family_defaults(family, turbo=cfg.turbo)
        self.default_steps = fam.steps
        self.default_guidance = fam.guidance
        self.pipe = pipe
        self.device = device
        self.compat = compat
        self.default_width = compat.default_size
        self.default_height = compat.default_size
        params = inspect.signature(pipe.__call__).parameters
        self.supports_negative_prompt = "negative_prompt" in params and fam.negative_prompt
        self.profile: MemoryProfile | None = None
        self.cpu_memory: CpuMemoryNote | None = None
        self.idle_allocated_bytes = 0
        self._edit_pipes: dict[bool, Any] = {}  # inpaint? -> pipeline sharing pipe's modules
        self._edit_errors: dict[bool, str] = {}  # inpaint? -> why diffusers has no such variant

    @property
    def on_cuda(self) -> bool:
        return self.device.type == "cuda"

    def generate(
        self,
        items: Sequence[ItemSpec],
        width: int,
        height: int,
        steps: int,
        guidance_scale: float,
        inject_faults: bool = True,
    ) -> list[Any]:
        """One denoising loop for the whole batch; returns PIL images in order."""
        k = self.cfg.fault_oom_above_batch
        if inject_faults and k and len(items) > k:
            raise InjectedOOMError(
                f"injected OOM: batch of {len(items)} is above MODELFLEET_WORKER_FAULT_OOM_"
                f"ABOVE_BATCH={k}"
            )
        # One CPU generator per image: its noise does not depend on the batch it
        # lands in nor on the GPU model, so a seed reproduces the same image.
        generators = [torch.Generator(device="cpu").manual_seed(it.seed) for it in items]
        kwargs: dict[str, Any] = {
            "prompt": [it.prompt for it in items],
            "height": height,
            "width": width,
            "num_inference_steps": steps,
            "guidance_scale": guidance_scale,
            "generator": generators,
            "output_type": "pil",
        }
        if self.supports_negative_prompt and any(it.negative_prompt is not None for it in items):
            kwargs["negative_prompt"] = [it.negative_prompt or "" for it in items]
        with torch.inference_mode():
            out = self.pipe(**kwargs)
        return list(out.images)

    def prepare_edits(self) -> None:
        """Build the image-to-image and inpainting variants once, at load (load thread);
        a pipeline diffusers has no variant for is recorded, so edits answer 400."""
        import diffusers

        d: Any = diffusers
        for inpaint in (False, True):
            auto = d.AutoPipelineForInpainting if inpaint else d.AutoPipelineForImage2Image
            try:
                # from_pipe shares the loaded modules: no second copy of the weights.
                pipe = auto.from_pipe(self.pipe)
            except (ValueError, TypeError, AttributeError, KeyError) as exc:
                kind = "inpainting" if inpaint else "image-to-image"
                self._edit_errors[inpaint] = f"{type(self.pipe).__name__} has no {kind} variant"
                log.warning("edits: %s (%s)", self._edit_errors[inpaint], exc)
                continue
            if hasattr(pipe, "set_progress_bar_config"):
                pipe.set_progress_bar_config(disable=True)
            self._edit_pipes[inpaint] = pipe

    def edit_unsupported(self, inpaint: bool) -> str | None:
        """Why this model cannot run that kind of edit, or None when it can."""
        if inpaint in self._edit_pipes:
            return None
        return self._edit_errors.get(inpaint, "edit pipelines were not prepared")

    def _edit_pipe(self, inpaint: bool) -> Any:
        pipe = self._edit_pipes.get(inpaint)
        if pipe is None:
            raise RuntimeError(self.edit_unsupported(inpaint))
        return pipe

    def edit(
        self,
        items: Sequence[ItemSpec],
        width: int,
        height: int,
        steps: int,
        guidance_scale: float,
        strength: float,
        inpaint: bool,
    ) -> list[Any]:
        """Image-to-image (no mask) or inpainting for a batch of same-size edits."""
        k = self.cfg.fault_oom_above_batch
        if k and len(items) > k:
            raise InjectedOOMError(f"injected OOM: edit batch of {len(items)} is above {k}")
        pipe = self._edit_pipe(inpaint)
        generators = [torch.Generator(device="cpu").manual_seed(it.seed) for it in items]
        kwargs: dict[str, Any] = {
            "prompt": [it.prompt for it in items],
            "image": [it.image for it in items],
            "strength": strength,
            "num_inference_steps": steps,
            "guidance_scale": guidance_scale,
            "generator": generators,
            "output_type": "pil",
        }
        params = inspect.signature(pipe.__call__).parameters
        if inpaint:
            kwargs["mask_image"] = [it.mask for it in items]
        if "height" in params:  # image-to-image pipelines take the input's size
            kwargs["height"], kwargs["width"] = height, width
        # The variant's own signature: it may take fewer arguments than the base pipeline.
        if "negative_prompt" in params and any(it.negative_prompt is not None for it in items):
            kwargs["negative_prompt"] = [it.negative_prompt or "" for it in items]
        with torch.inference_mode():
            out = pipe(**kwargs)
        return list(out.images)

    def free_memory(self) -> tuple[int, int]:
        """(free, total) bytes usable for activations; (0, 0) on CPU."""
        if not self.on_cuda:
            return 0, 0
        from .gpu import device_memory

        free, total = device_memory(self.device)
        # The caching allocator keeps freed blocks reserved: NVML counts them as
        # used, but they are available to the next batch.
        cached = torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)
        return free + max(0, cached), total

    def empty_cache(self) -> None:
        gc.collect()
        if self.on_cuda:
            torch.cuda.empty_cache()

    def warm_up(self) -> None:
        """Run batches of 1 and 2 at the default size; measure peak memory of each."""
        w, h = self.default_width, self.default_height
        steps = 2
        items = [ItemSpec("warm-up", None, 0), ItemSpec("warm-up", None, 1)]
        if self.on_cuda:
            torch.cuda.synchronize()
            self.idle_allocated_bytes = torch.cuda.memory_allocated(self.device)
            peaks = []
            for n in (1, 2):
                torch.cuda.reset_peak_memory_stats(self.device)
                # The family's guidance: classifier-free guidance doubles the batch.
                self.generate(items[:n], w, h, steps, self.default_guidance, inject_faults=False)
                torch.cuda.synchronize()
                peaks.append(torch.cuda.max_memory_allocated(self.device))
            per_image = max(1, peaks[1] - peaks[0])
            fixed = max(0, peaks[0] - self.idle_allocated_bytes - per_image)
            self.profile = MemoryProfile(per_image, fixed, w * h)
            log.info(
                "peak memory: %d B at 1 image, %d B at 2 (weights %d B): %d B per image",
                peaks[0],
                peaks[1],
                self.idle_allocated_bytes,
                per_image,
            )
        else:
            deltas = []
            for n in (1, 2):
                _reset_peak_rss()
                before = _peak_rss_bytes()
                self.generate(items[:n], w, h, steps, self.default_guidance, inject_faults=False)
                deltas.append(max(0, _peak_rss_bytes() - before))
            self.cpu_memory = CpuMemoryNote(deltas[0], deltas[1])
            log.info(
                "CPU: peak RSS grew %d B at 1 image, %d B at 2 (indicative only: the "
                "batch cap on CPU is the configured max)",
                deltas[0],
                deltas[1],
            )


def _denoiser_spec(pipe: Any) -> tuple[Any, DenoiserSpec]:
    den = getattr(pipe, "unet", None)
    kind = "unet"
    if den is None:
        den = getattr(pipe, "transformer", None)
        kind = "transformer"
    if den is None:
        raise ModelLoadError("pipeline has neither a unet nor a transformer")
    c = den.config
    packed = type(den).__name__.startswith("Flux")
    sample = getattr(c, "sample_size", None)  # None for Flux: the VAE's size decides
    return den, DenoiserSpec(
        kind=kind,
        in_channels=int(c.in_channels),
        sample_size=int(sample) if isinstance(sample, int) else None,
        patch_size=None if kind == "unet" else getattr(c, "patch_size", None),
        packed_2x2=packed,
    )


def _vae_spec(vae: Any) -> VaeSpec:
    c = vae.config
    sample = getattr(c, "sample_size", None)
    return VaeSpec(
        latent_channels=int(c.latent_channels),
        block_out_channels=tuple(int(x) for x in c.block_out_channels),
        sample_size=int(sample) if isinstance(sample, int) else None,
    )


def _place(cfg: WorkerConfig, pipe: Any, device: torch.device) -> Any:
    """On the device, or offloaded: each submodel moves to the GPU only while it runs
    (model_cpu_offload), and the VAE decodes in tiles / one image at a time."""
    if cfg.model_cpu_offload and device.type == "cuda":
        pipe.enable_model_cpu_offload(device=device)
    else:
        if cfg.model_cpu_offload:
            log.warning("model_cpu_offload needs CUDA; running on %s without it", device)
        pipe = pipe.to(device)
    if cfg.vae_tiling:
        pipe.vae.enable_tiling()
    if cfg.vae_slicing:
        pipe.vae.enable_slicing()
    log.info(
        "placement: cpu offload %s, vae tiling %s, vae slicing %s",
        cfg.model_cpu_offload and device.type == "cuda",
        cfg.vae_tiling,
        cfg.vae_slicing,
    )
    return pipe


def load_model(cfg: WorkerConfig, model_dir: Path, vae_dir: Path | None) -> LoadedModel:
    import diffusers

    d: Any = diffusers  # untyped constructors

    device = resolve_device(cfg)
    dtype = resolve_dtype(cfg, device)
    if not (model_dir / "model_index.json").is_file():
        raise ModelLoadError(f"{model_dir} is not a diffusers pipeline (no model_index.json)")
    kwargs: dict[str, Any] = {"torch_dtype": dtype}
    if vae_dir is not None:
        sub = vae_dir / "vae" if (vae_dir / "vae" / "config.json").is_file() else vae_dir
        kwargs["vae"] = d.AutoencoderKL.from_pretrained(str(sub), torch_dtype=dtype)
    pipe = d.DiffusionPipeline.from_pretrained(str(model_dir), **kwargs)
    den, den_spec = _denoiser_spec(pipe)
    family = family_of(type(pipe).__name__, cfg.family)
    defaults = family_defaults(
        family,
        turbo=cfg.turbo,
        guidance_embeds=bool(getattr(den.config, "guidance_embeds", True)),
    )
    # The scale-factor rule applies to a declared family only: the tiny sd15 test
    # models are two-block (scale 2) VAEs and leave the family at custom.
    compat = check_pairing(den_spec, _vae_spec(pipe.vae), cfg.family)
    for w in compat.warnings:
        log.warning("%s", w)
    if compat.errors:
        raise ModelLoadError("; ".join(compat.errors))
    pipe = _place(cfg, pipe, device)
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    if cfg.channels_last:
        den.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    procs = {type(p).__name__ for p in getattr(den, "attn_processors", {}).values()}
    log.info("attention processors: %s", ", ".join(sorted(procs)) or "n/a")
    if cfg.compile:
        # dynamic=False: one graph per batch size; warm-up compiles sizes 1 and 2,
        # larger ones compile on first use.
        compiled = torch.compile(den, dynamic=False)
        if hasattr(pipe, "unet"):
            pipe.unet = compiled
        else:
            pipe.transformer = compiled
    log.info(
        "family %s (%s): default %d steps, guidance %.1f",
        family,
        type(pipe).__name__,
        defaults.steps,
        defaults.guidance,
    )
    model = LoadedModel(cfg, pipe, device, compat, family, defaults)
    model.prepare_edits()
    return model


def configure_torch(cfg: WorkerConfig) -> None:
    if cfg.cpu_threads > 0:
        # Oversubscribed OpenMP threads spin against each other on small/shared CPUs.
        torch.set_num_threads(cfg.cpu_threads)
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
