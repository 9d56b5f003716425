"""SD3.5 Medium, SDXL and Flux (schnell) at real size with random weights on a GPU:
images/s, seconds per image, peak GPU memory and MFU per family, batch size and
eager vs torch.compile, in one table.

    .venv/bin/python bench/worker_gpu.py                    # GPU: real size, bf16, 1024 px
    .venv/bin/python bench/worker_gpu.py --size tiny        # CPU check of the script itself

Random weights run exactly the kernels trained ones do. The pipelines are the
worker's own layouts (modelfleet_worker.tiny_families, built straight on the GPU:
nothing is written to disk) and run through the worker's LoadedModel.generate.

FLOPs: torch.utils.flop_counter.FlopCounterMode over one whole eager generation of
one image (text encoders, every denoising step with its classifier-free-guidance
copy, the VAE decode): matmuls, convolutions and attention (SDPA) counted as
2 x multiply-accumulates, elementwise ops not counted. MFU = FLOPs per image x
images/s / the GPU's dense bf16 peak (H100/H200 SXM 989 TFLOP/s; --peak-tflops).
Steps and guidance are each family's defaults (SDXL 30 steps CFG 5; SD3.5 Medium
40 steps CFG 4.5; FLUX.1-schnell 4 steps, no CFG); --steps overrides all.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from modelfleet_worker.compat import family_defaults
from modelfleet_worker.config import WorkerConfig
from modelfleet_worker.pipeline import ItemSpec, LoadedModel, _denoiser_spec, _vae_spec
from modelfleet_worker.tiny_families import FamilySpec, build_pipeline

PEAKS_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0}


@dataclass(frozen=True)
class Row:
    family: str
    mode: str
    batch: int
    images_per_s: float
    s_per_image: float
    peak_gib: float
    mfu: float


@contextlib.contextmanager
def build_context(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Parameters created on the device in the bench dtype: a 12B Flux never
    touches host memory in float32."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with device:
            yield
    finally:
        torch.set_default_dtype(old)


def load(family: str, size: str, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    from modelfleet_worker.compat import check_pairing, family_of

    with build_context(device, dtype):
        pipe = build_pipeline(FamilySpec(family, size), Path(tempfile.mkdtemp()))
    pipe = pipe.to(device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    den, den_spec = _denoiser_spec(pipe)
    compat = check_pairing(den_spec, _vae_spec(pipe.vae), family)
    assert not compat.errors, compat.errors
    fam = family_of(type(pipe).__name__, family)
    embeds = bool(getattr(den.config, "guidance_embeds", True))
    defaults = family_defaults(fam, turbo=False, guidance_embeds=embeds)
    cfg = WorkerConfig(device=device.type, dtype=str(dtype).removeprefix("torch."))
    return LoadedModel(cfg, pipe, device, compat, fam, defaults)


def sync(model: LoadedModel) -> None:
    if model.on_cuda:
        torch.cuda.synchronize()


def count_flops(model: LoadedModel, side: int, steps: int) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        model.generate([ItemSpec("flops", None, 0)], side, side, steps, model.default_guidance)
    return int(counter.get_total_flops())


def time_batch(model: LoadedModel, batch: int, side: int, steps: int, reps: int) -> float:
    """Seconds per batch: one untimed run (compiles, autotunes), then the median of reps."""
    items = [ItemSpec("a lighthouse at dusk, a sign saying OPEN", None, i) for i in range(batch)]
    g = model.default_guidance
    model.generate(items, side, side, steps, g, inject_faults=False)
    sync(model)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        model.generate(items, side, side, steps, g, inject_faults=False)
        sync(model)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def peak_tflops(arg: float | None) -> float:
    if arg:
        return arg
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        for key, v in PEAKS_TFLOPS.items():
            if key in name:
                return v
    return 0.0  # unknown (CPU): MFU is not printed


def run_family(
    family: str, args: argparse.Namespace, device: torch.device, dtype: torch.dtype, peak: float
) -> list[Row]:
    # Every family's denoiser runs through one diffusers decorator: without a reset
    # its compiled graphs (one per batch size) add up to dynamo's recompile limit.
    torch._dynamo.reset()
    torch._dynamo.config.recompile_limit = 64
    model = load(family, args.size, device, dtype)
    steps = args.steps or model.default_steps
    side = args.side or model.default_width
    flops = count_flops(model, side, steps)
    print(
        f"{family}: {type(model.pipe).__name__}, {side} px, {steps} steps, guidance "
        f"{model.default_guidance}, {flops / 1e9:.3g} GFLOP per image",
        flush=True,
    )
    rows: list[Row] = []
    for mode in args.modes:
        if mode == "compile":
            den = model.pipe.unet if hasattr(model.pipe, "unet") else model.pipe.transformer
            compiled = torch.compile(den, dynamic=False)
            if hasattr(model.pipe, "unet"):
                model.pipe.unet = compiled
            else:
                model.pipe.transformer = compiled
        for batch in args.batches:
            model.empty_cache()
            if model.on_cuda:
                torch.cuda.reset_peak_memory_stats()
            try:
                secs = time_batch(model, batch, side, steps, args.reps)
            except torch.cuda.OutOfMemoryError:
                print(f"  {mode} batch {batch}: out of memory", flush=True)
                continue
            peak_b = torch.cuda.max_memory_allocated() if model.on_cuda else 0
            ips = batch / secs
            mfu = flops * ips / (peak * 1e12) if peak else 0.0
            rows.append(Row(family, mode, batch, ips, secs / batch, peak_b / 2**30, mfu))
            print(f"  {mode} batch {batch}: {secs / batch:.3f} s/image", flush=True)
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def print_table(rows: list[Row], peak: float) -> None:
    print()
    print("| family | mode | batch | images/s | s/image | peak GPU GiB | MFU |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        mfu = f"{100 * r.mfu:.1f}%" if peak else "n/a"
        print(
            f"| {r.family} | {r.mode} | {r.batch} | {r.images_per_s:.3f} | {r.s_per_image:.3f} "
            f"| {r.peak_gib:.1f} | {mfu} |"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--families", nargs="+", default=["sd3", "sdxl", "flux"])
    ap.add_argument("--size", choices=["real", "tiny"], default="real")
    ap.add_argument("--dtype", default="bfloat16", choices=["float16", "bfloat16", "float32"])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument(
        "--modes", nargs="+", choices=["eager", "compile"], default=["eager", "compile"]
    )
    ap.add_argument("--steps", type=int, default=0, help="0: each family's default")
    ap.add_argument("--side", type=int, default=0, help="image side; 0: the family's default")
    ap.add_argument("--reps", type=int, default=2, help="timed runs per cell (median)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak")
    args = ap.parse_args()

    if args.size == "tiny":  # the CPU check: float32, few steps
        device, dtype = torch.device("cpu"), torch.float32
        args.steps = args.steps or 2
        torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    else:
        if not torch.cuda.is_available():
            raise SystemExit("--size real needs a CUDA GPU (use --size tiny on CPU)")
        device, dtype = torch.device("cuda"), getattr(torch, args.dtype)
        torch.backends.cuda.matmul.allow_tf32 = True
    peak = peak_tflops(args.peak_tflops)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"device {name}, {dtype}, size {args.size}, peak {peak or 'unknown'} TFLOP/s")
    t0 = time.perf_counter()
    rows: list[Row] = []
    for fam in args.families:
        rows += run_family(fam, args, device, dtype, peak)
    print_table(rows, peak)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
