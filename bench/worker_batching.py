"""Micro-batching vs batch size 1 on a tiny CPU model, through the real HTTP server.

    .venv/bin/python bench/worker_batching.py [--clients 8] [--requests 64]

Starts the worker twice (max batch 1, then adaptive batching), drives each with
N concurrent closed-loop clients, and prints images/s and p50/p95 latency side
by side. The tiny model is shaped so per-call overhead (text encoder, scheduler,
Python, small kernels) dominates, which is what batching amortises on a GPU too.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def post(url: str, body: dict[str, object]) -> float:
    t0 = time.perf_counter()
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(req, timeout=300) as r:
        r.read()
        if r.status != 200:
            raise RuntimeError(r.status)
    return time.perf_counter() - t0


def run_case(
    model: Path, batch: int, latency_ms: int, clients: int, requests: int, threads: int
) -> dict[str, float]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELFLEET_WORKER_")}
    env.update(
        MODELFLEET_WORKER_MODEL=str(model),
        MODELFLEET_WORKER_HOST="127.0.0.1",
        MODELFLEET_WORKER_PORT=str(port),
        MODELFLEET_WORKER_MAX_BATCH_SIZE=str(batch),
        MODELFLEET_WORKER_MAX_LATENCY_MS=str(latency_ms),
        MODELFLEET_WORKER_MAX_QUEUE="256",
        MODELFLEET_WORKER_CPU_THREADS=str(threads),
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelfleet_worker.cli", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(base + "/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("worker did not become ready")
            time.sleep(0.1)
        url = base + "/v1/images/generations"
        body: dict[str, object] = {"prompt": "a lighthouse at dusk", "steps": 4}
        for i in range(2):  # warm caches outside the timed window
            post(url, {**body, "seed": i})
        t0 = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            lat = list(pool.map(lambda i: post(url, {**body, "seed": i}), range(requests)))
        wall = time.perf_counter() - t0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    lat.sort()
    return {
        "images_per_s": requests / wall,
        "p50_s": statistics.median(lat),
        "p95_s": lat[min(len(lat) - 1, int(0.95 * len(lat)))],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=48)
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--latency-ms", type=int, default=80)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads in the worker")
    ap.add_argument("--channels", type=int, default=32)
    ap.add_argument("--sample-size", type=int, default=8, help="latent side; image = 2x")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "tiny"
        subprocess.run(
            [
                sys.executable, "-m", "modelfleet_worker.cli", "tiny-model", "--out", str(model),
                "--channels", str(args.channels), "--sample-size", str(args.sample_size),
            ],
            check=True,
            capture_output=True,
        )  # fmt: skip
        single = run_case(model, 1, 0, args.clients, args.requests, args.threads)
        batched = run_case(
            model, args.max_batch, args.latency_ms, args.clients, args.requests, args.threads
        )

    print(
        f"tiny model: channels={args.channels}, image {2 * args.sample_size}px, 4 steps, "
        f"{args.clients} clients, {args.requests} requests, {args.threads} torch thread(s)"
    )
    print(f"{'case':<28}{'images/s':>10}{'p50 ms':>10}{'p95 ms':>10}")
    for name, r in (
        ("max_batch_size=1", single),
        (f"adaptive (max {args.max_batch}, {args.latency_ms} ms)", batched),
    ):
        print(
            f"{name:<28}{r['images_per_s']:>10.2f}"
            f"{r['p50_s'] * 1000:>10.0f}{r['p95_s'] * 1000:>10.0f}"
        )
    print(
        f"throughput ratio {batched['images_per_s'] / single['images_per_s']:.2f}x, "
        f"p50 ratio {batched['p50_s'] / single['p50_s']:.2f}x, "
        f"p95 ratio {batched['p95_s'] / single['p95_s']:.2f}x"
    )


if __name__ == "__main__":
    main()
