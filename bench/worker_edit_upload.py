"""What an edit upload costs the worker before the model runs: streaming the
multipart body, decoding the PNG, converting the mask, resizing to the output size.

    .venv/bin/python bench/worker_edit_upload.py [--side 1024] [--requests 30] [--clients 4]

Serves the worker's own read_edit_form + validate_edit on a loopback aiohttp server
(the code path of POST /v1/images/edits up to the inference queue) and posts
realistic uploads: a noise PNG of side x side (about 3 MB at 1024, incompressible)
with a same-size RGBA mask. Prints client latency p50/p99, server-side upload-stage
time p50/p99 (read / decode+resize), MB/s and the server's peak RSS growth.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import resource
import statistics
import time
from typing import Any

import aiohttp
import numpy as np
from aiohttp import web
from PIL import Image

from modelfleet_worker.edits import validate_edit
from modelfleet_worker.multipart import read_edit_form
from modelfleet_worker.validation import Limits


def png(arr: np.ndarray, mode: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, format="PNG")
    return buf.getvalue()


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


async def main(side: int, requests: int, clients: int) -> None:
    limits = Limits(
        max_resolution=1024, max_steps=50, size_multiple=8, default_width=512, default_height=512
    )
    read_s: list[float] = []
    decode_s: list[float] = []

    async def handler(request: web.Request) -> web.Response:
        t0 = time.perf_counter()
        form = await read_edit_form(request, 25 * 1024 * 1024)
        t1 = time.perf_counter()
        loop = asyncio.get_running_loop()
        ed = await loop.run_in_executor(None, validate_edit, form.fields, form.files, limits)
        t2 = time.perf_counter()
        read_s.append(t1 - t0)
        decode_s.append(t2 - t1)
        return web.json_response({"size": [ed.gen.width, ed.gen.height]})

    app = web.Application()
    app.router.add_post("/v1/images/edits", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    rng = np.random.default_rng(0)
    image = png(rng.integers(0, 256, (side, side, 3), dtype=np.uint8), "RGB")
    alpha = np.full((side, side, 4), 255, np.uint8)
    alpha[: side // 2, :, 3] = 0
    mask = png(alpha, "RGBA")
    body_mb = (len(image) + len(mask)) / 1e6
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    lat: list[float] = []
    url = f"http://127.0.0.1:{port}/v1/images/edits"

    async def client(session: aiohttp.ClientSession, n: int) -> None:
        for _ in range(n):
            fd = aiohttp.FormData()
            fd.add_field("prompt", "make it blue")
            fd.add_field("image", image, filename="in.png", content_type="image/png")
            fd.add_field("mask", mask, filename="m.png", content_type="image/png")
            t = time.perf_counter()
            async with session.post(url, data=fd) as r:
                await r.read()
                assert r.status == 200, r.status
            lat.append(time.perf_counter() - t)

    async with aiohttp.ClientSession() as session:
        await client(session, 2)  # warm-up
        lat.clear()
        read_s.clear()
        decode_s.clear()
        t0 = time.perf_counter()
        per = requests // clients
        await asyncio.gather(*(client(session, per) for _ in range(clients)))
        wall = time.perf_counter() - t0
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    await runner.cleanup()
    out: dict[str, Any] = {
        "side": side,
        "image_mb": round(len(image) / 1e6, 2),
        "mask_mb": round(len(mask) / 1e6, 2),
        "requests": len(lat),
        "clients": clients,
        "client_p50_ms": round(statistics.median(lat) * 1000, 1),
        "client_p99_ms": round(pct(lat, 0.99) * 1000, 1),
        "read_p50_ms": round(statistics.median(read_s) * 1000, 1),
        "read_p99_ms": round(pct(read_s, 0.99) * 1000, 1),
        "decode_resize_p50_ms": round(statistics.median(decode_s) * 1000, 1),
        "decode_resize_p99_ms": round(pct(decode_s, 0.99) * 1000, 1),
        "upload_mb_per_s": round(body_mb * len(lat) / wall, 1),
        "peak_rss_growth_mb": round((rss1 - rss0) / 1024, 1),  # client and server share it
    }
    for k, v in out.items():
        print(f"{k:>24}: {v}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", type=int, default=1024)
    ap.add_argument("--requests", type=int, default=30)
    ap.add_argument("--clients", type=int, default=4)
    a = ap.parse_args()
    asyncio.run(main(a.side, a.requests, a.clients))
