"""Hosted adapter overhead and throughput against the OpenAI stand-in.

    .venv/bin/python bench/hosted_adapter.py [--requests 400] [--duration 8] [--cap 4]

Method
- Provider: the strict OpenAI Images stand-in (devtools/modelfleet_dev/standins/
  openai_images.py) in its own process, answering at once (gpt-image-1, 1024x1024, a cached
  PNG of ~10 KB as b64_json).
- Adapter: `modelfleet-worker serve --backend openai --provider-model gpt-image-1` in its own
  process, MAX_CONCURRENCY = --cap, no token bucket.
- Overhead: --requests sequential requests (one connection, keep-alive) straight to the
  stand-in, then the same through the adapter; added latency = adapter percentile minus
  direct percentile. CPU per request = the adapter process's user+system CPU seconds
  (/proc/PID/stat) over those requests, divided by their count.
- Throughput: --cap closed-loop clients for --duration s through the adapter (the provider's
  concurrency cap is the adapter's), requests/s and adapter CPU; then again with a provider
  that takes 200 ms (fault `slow`), where the cap bounds it at cap / 0.2 s.
All processes share this machine's cores: absolute numbers depend on the host.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp

BODY = {
    "model": "gpt-image-1",
    "prompt": "a lighthouse",
    "n": 1,
    "size": "1024x1024",
    "quality": "low",
}
KEY = "sk-bench-" + os.urandom(8).hex()
CLK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK  # utime + stime


def wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(url)


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(p / 100 * len(s)))]


async def sequential(url: str, n: int, headers: dict[str, str]) -> list[float]:
    out = []
    async with aiohttp.ClientSession() as s:
        for i in range(n + 20):
            t0 = time.perf_counter()
            async with s.post(url, json=BODY, headers=headers) as r:
                await r.read()
                assert r.status == 200, r.status
            if i >= 20:  # warm-up
                out.append(time.perf_counter() - t0)
    return out


async def closed_loop(url: str, clients: int, duration: float) -> tuple[int, int]:
    ok = bad = 0
    stop = time.monotonic() + duration

    async def client(s: aiohttp.ClientSession) -> None:
        nonlocal ok, bad
        while time.monotonic() < stop:
            async with s.post(url, json=BODY) as r:
                await r.read()
                if r.status == 200:
                    ok += 1
                else:
                    bad += 1

    async with aiohttp.ClientSession() as s:
        await asyncio.gather(*(client(s) for _ in range(clients)))
    return ok, bad


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument("--cap", type=int, default=4)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="mf-bench-hosted-"))
    keyfile = tmp / "key"
    keyfile.write_text(KEY)
    sp, ap_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELFLEET_WORKER_")}
    procs = []
    try:
        standin = subprocess.Popen(
            [sys.executable, "-m", "modelfleet_dev.standins.openai_images", "--port", str(sp),
             "--key-file", str(keyfile), "--ready-file", str(tmp / "ready")],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        procs.append(standin)
        adapter_env = {
            **env,
            "MODELFLEET_PROVIDER_API_KEY": KEY,
            "MODELFLEET_WORKER_HOST": "127.0.0.1",
            "MODELFLEET_WORKER_PORT": str(ap_port),
            "MODELFLEET_WORKER_MAX_CONCURRENCY": str(args.cap),
            "MODELFLEET_WORKER_LOG_LEVEL": "WARNING",
        }
        adapter = subprocess.Popen(
            [sys.executable, "-m", "modelfleet_worker.cli", "serve", "--backend", "openai",
             "--provider-model", "gpt-image-1", "--endpoint", f"http://127.0.0.1:{sp}/v1"],
            env=adapter_env,
        )  # fmt: skip
        procs.append(adapter)
        wait_http(f"http://127.0.0.1:{ap_port}/readyz")
        deadline = time.monotonic() + 30
        while not (tmp / "ready").exists():  # the stand-in writes it once serving
            if time.monotonic() > deadline or standin.poll() is not None:
                raise RuntimeError("the stand-in did not start")
            time.sleep(0.05)
        auth = {"Authorization": f"Bearer {KEY}"}
        direct = asyncio.run(
            sequential(f"http://127.0.0.1:{sp}/v1/images/generations", args.requests, auth)
        )
        c0 = cpu_s(adapter.pid)
        via = asyncio.run(
            sequential(f"http://127.0.0.1:{ap_port}/v1/images/generations", args.requests, {})
        )
        cpu_per = (cpu_s(adapter.pid) - c0) / args.requests
        result: dict[str, Any] = {
            "direct_p50_ms": pct(direct, 50) * 1e3,
            "direct_p99_ms": pct(direct, 99) * 1e3,
            "adapter_p50_ms": pct(via, 50) * 1e3,
            "adapter_p99_ms": pct(via, 99) * 1e3,
            "added_p50_ms": (pct(via, 50) - pct(direct, 50)) * 1e3,
            "added_p99_ms": (pct(via, 99) - pct(direct, 99)) * 1e3,
            "adapter_cpu_ms_per_request": cpu_per * 1e3,
        }
        url = f"http://127.0.0.1:{ap_port}/v1/images/generations"
        c0 = cpu_s(adapter.pid)
        ok, bad = asyncio.run(closed_loop(url, args.cap, args.duration))
        cpu = cpu_s(adapter.pid) - c0
        result.update(
            instant_rps=ok / args.duration,
            instant_errors=bad,
            instant_adapter_cpu_cores=cpu / args.duration,
        )
        fault = {"kind": "slow", "count": None, "delay_s": 0.2}
        req = urllib.request.Request(
            f"http://127.0.0.1:{sp}/_standin/faults", data=json.dumps(fault).encode(), method="POST"
        )
        req.add_header("Content-Type", "application/json")
        urllib.request.urlopen(req, timeout=5).read()
        ok, bad = asyncio.run(closed_loop(url, args.cap * 2, args.duration))
        result.update(
            slow200ms_rps=ok / args.duration,
            slow200ms_bound_rps=args.cap / 0.2,
            slow200ms_errors=bad,
        )
        print(json.dumps({k: round(v, 3) for k, v in result.items()}, indent=1))
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)


if __name__ == "__main__":
    main()
