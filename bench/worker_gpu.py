"""Full-size SD1.5-class pipeline with random weights on a GPU: batch 1 vs adaptive
batching under concurrent load, FLOPs per image, achieved TFLOP/s vs a peak.

    .venv/bin/python bench/worker_gpu.py --dtype bfloat16 --steps 25 --peak-tflops 989

Random weights run exactly the same kernels as trained ones. The worker's own
Engine (batching policy + inference thread + OOM splitter) and LoadedModel are
used in-process, so only HTTP/PNG overhead is left out. `--smoke` runs a tiny
config on CPU to check the script itself.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from modelfleet_worker.batching import BatchKey
from modelfleet_worker.compat import DenoiserSpec, VaeSpec, check_pairing
from modelfleet_worker.config import WorkerConfig
from modelfleet_worker.engine import Engine, Job
from modelfleet_worker.pipeline import ItemSpec, LoadedModel, is_oom
from modelfleet_worker.tiny import TinySpec, sd_pipeline, text_stack, write_tiny_pipeline


def build_sd15(device: torch.device, dtype: torch.dtype) -> Any:
    import diffusers

    d: Any = diffusers
    unet = d.UNet2DConditionModel(  # the SD1.5 UNet config (860M parameters)
        sample_size=64,
        in_channels=4,
        out_channels=4,
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        down_block_types=(
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ),
        up_block_types=(
            "UpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
        ),
        cross_attention_dim=768,
        attention_head_dim=8,
    )
    vae = d.AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
    )
    # CLIP ViT-L/14 text tower, as SD1.5 ships it.
    tok, text = text_stack(
        Path(tempfile.mkdtemp()),
        hidden=768,
        intermediate=3072,
        heads=12,
        layers=12,
        vocab_size=49408,
    )
    pipe = sd_pipeline(unet, vae, tok, text)
    return pipe.to(device=device, dtype=dtype)


def build_smoke(device: torch.device) -> Any:
    import diffusers

    out = Path(tempfile.mkdtemp()) / "tiny"
    write_tiny_pipeline(out, TinySpec())
    d: Any = diffusers
    return d.DiffusionPipeline.from_pretrained(str(out)).to(device)


class Hooks:
    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.ooms = 0

    def on_batch(self, size: int) -> None:
        self.sizes.append(size)

    def on_queue_waits(self, waits: Sequence[float]) -> None:
        pass

    def on_oom(self, ooms: int, splits: int) -> None:
        self.ooms += ooms

    def on_depth(self, queued: int, in_flight: int) -> None:
        pass


async def drive(
    model: LoadedModel, max_batch: int, latency_ms: int, clients: int, requests: int, key: BatchKey
) -> dict[str, float]:
    hooks = Hooks()

    def runner(k: BatchKey, jobs: Sequence[Job]) -> list[Any]:
        specs = [ItemSpec(j.prompt, None, j.seed) for j in jobs]
        images = model.generate(specs, k.width, k.height, k.steps, k.guidance_scale)
        if model.on_cuda:
            torch.cuda.synchronize()
        return images

    engine = Engine(
        runner, is_oom, model.empty_cache, lambda k: max_batch, latency_ms / 1000, 10_000, hooks
    )
    engine.start()
    latencies: list[float] = []
    counter = iter(range(requests))

    async def client() -> None:
        for i in counter:
            t0 = time.perf_counter()
            (fut,) = engine.submit(key, [Job("a photo of a lighthouse", None, i)])
            await fut
            latencies.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    wall = time.perf_counter() - t0
    await engine.close()
    latencies.sort()
    return {
        "images_per_s": requests / wall,
        "p50_s": statistics.median(latencies),
        "p95_s": latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))],
        "mean_batch": statistics.mean(hooks.sizes),
        "ooms": hooks.ooms,
    }


def count_flops(model: LoadedModel, key: BatchKey) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        model.generate(
            [ItemSpec("flops", None, 0)], key.width, key.height, key.steps, key.guidance_scale
        )
    return int(counter.get_total_flops())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dtype", default="bfloat16", choices=["float16", "bfloat16", "float32"])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=48)
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--latency-ms", type=int, default=80)
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="H100 SXM bf16 dense")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="tiny model on CPU, checks the script")
    args = ap.parse_args()

    if args.smoke:
        device, dtype, size, steps = torch.device("cpu"), torch.float32, 64, 2
        args.requests, args.clients = min(args.requests, 8), min(args.clients, 4)
        pipe = build_smoke(device)
    else:
        if not torch.cuda.is_available():
            raise SystemExit("needs a CUDA GPU (or --smoke)")
        device = torch.device("cuda")
        dtype = getattr(torch, args.dtype)
        size, steps = args.size, args.steps
        pipe = build_sd15(device, dtype)
    pipe.set_progress_bar_config(disable=True)
    if args.compile:
        pipe.unet = torch.compile(pipe.unet)
    cfg = WorkerConfig(device=device.type, dtype=str(dtype).removeprefix("torch."))
    compat = check_pairing(
        DenoiserSpec(
            "unet", pipe.unet.config.in_channels, pipe.unet.config.sample_size, None, False
        ),
        VaeSpec(pipe.vae.config.latent_channels, tuple(pipe.vae.config.block_out_channels), None),
        "custom",
    )
    model = LoadedModel(cfg, pipe, device, compat)
    model.warm_up()
    key = BatchKey(size, size, steps, 7.5, False)
    flops = count_flops(model, key)

    single = asyncio.run(drive(model, 1, 0, args.clients, args.requests, key))
    batched = asyncio.run(
        drive(model, args.max_batch, args.latency_ms, args.clients, args.requests, key)
    )
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"device {name}, {dtype}, {size}px, {steps} steps, CFG 7.5, {args.clients} clients")
    if model.profile:
        print(
            "peak memory per image (warm-up, allocator): "
            f"{model.profile.per_image_bytes / 2**20:.0f} MiB"
        )
    print(f"FLOPs per image (FlopCounterMode, whole pipeline): {flops / 1e12:.2f} TFLOP")
    print(
        f"{'case':<30}{'img/s':>8}{'p50 s':>8}{'p95 s':>8}{'batch':>7}{'TFLOP/s':>9}{'% peak':>8}"
    )
    for label, r in (("batch 1", single), (f"adaptive max {args.max_batch}", batched)):
        tflops = flops * r["images_per_s"] / 1e12
        print(
            f"{label:<30}{r['images_per_s']:>8.2f}{r['p50_s']:>8.2f}{r['p95_s']:>8.2f}"
            f"{r['mean_batch']:>7.1f}{tflops:>9.1f}{100 * tflops / args.peak_tflops:>7.1f}%"
        )
    print(
        f"throughput ratio {batched['images_per_s'] / single['images_per_s']:.2f}x, "
        f"p50 ratio {batched['p50_s'] / single['p50_s']:.2f}x"
    )


if __name__ == "__main__":
    main()
