"""The router with image-sized bodies: direct vs `modelfleet router --config` vs nginx, and
the sticky asset lookup's cost with Redis on loopback (issue 14 item 7).

    .venv/bin/python bench/router_images.py [--seconds 5] [--sequential 150] [--inflight 64]

Method
- Bodies: a 1024x1024 PNG of noise (Pillow, 3 bits a channel, fixed seed) is the image:
  ~1.4 MB, ~1.9 MB in base64 inside the worker-shaped JSON answer (with the `modelfleet`
  provenance block and headers real workers send). Edits upload a ~2.1 MB PNG of noise
  (5 bits a channel) as multipart/form-data the way the openai SDK sends it.
- Upstream (bench/httpbench.py): a raw asyncio HTTP/1.1 keep-alive server, its own process,
  that reads each request body and answers the prebuilt response at once.
- Targets, each in its own process on 127.0.0.1: (a) the upstream directly, (b) the router
  with a one-route static config, (c) nginx (Debian) as a plain reverse proxy, one worker
  process, upstream keepalive, bodies buffered in memory (client_body_buffer_size and
  proxy_buffers sized for the bodies, no temp files).
- Sequential: `--sequential` requests to each target one at a time, interleaved target by
  target (a busy host slows all alike); added latency = target percentile minus direct.
- Then `--inflight` connections in a closed loop for `--seconds` per target, from a raw
  asyncio client in its own process that counts bytes without keeping them: throughput
  (MB/s of request + response bytes), latency at that load, the proxy's CPU seconds per
  request (user+system from /proc) and its peak RSS (VmRSS sampled every 10 ms).
- Sticky: (1) the router's per-request call, StickyAssets.lookup on a RedisAssetStore
  (pipelined GET+TTL, decode, sticky_choice) against a redis-server on loopback, one at a
  time, records present; (2) end to end, small answers (httpbench.SMALL_MARKER):
  200 assets, each used 4 times, through a router with --asset-store redis and one with
  --asset-store none, interleaved; the first use records and is not counted.
All processes share this machine's cores: absolute numbers depend on the host.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from httpbench import (
    SMALL_MARKER,
    RssSampler,
    SeqClient,
    cpu_seconds,
    raw_request,
    round_robin,
    rss_mb,
    run_load,
    spawn_upstream,
    start_nginx,
    start_redis,
    start_router,
    stop,
)

GEN_PATH = "/v1/images/generations"
EDIT_PATH = "/v1/images/edits"
BOUNDARY = "modelfleetbench7d1f0c"
GEN_BODY = b'{"prompt":"a lighthouse at dusk","n":1,"size":"1024x1024"}'


# -- bodies -------------------------------------------------------------------------------


def noise_png(bits: int, seed: int) -> bytes:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    px = rng.integers(0, 2**bits, (1024, 1024, 3), dtype=np.uint8) << (8 - bits)
    buf = io.BytesIO()
    Image.fromarray(px).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def write_bodies(tmp: Path) -> dict[str, Path]:
    image = noise_png(3, 1)
    answer = {
        "created": 1700000000,
        "data": [{"b64_json": base64.b64encode(image).decode(), "revised_prompt": None}],
        "modelfleet": {
            "model": "bench-model",
            "revision": "r1",
            "seeds": [1],
            "cost_usd": 0.0,
            "images": 1,
        },
        "timing": {"inference_ms": 0},
    }
    upload = noise_png(5, 2)
    parts = []
    for name, value in (("prompt", "make the sky red"), ("n", "1"), ("size", "1024x1024")):
        parts.append(
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
            f"{value}\r\n".encode()
        )
    parts.append(
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="in.png"'
        "\r\nContent-Type: image/png\r\n\r\n".encode()
        + upload
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )
    files = {
        "answer": json.dumps(answer, separators=(",", ":")).encode(),
        "edit": b"".join(parts),
        "generation": GEN_BODY,
    }
    out = {}
    for name, data in files.items():
        out[name] = tmp / f"{name}.body"
        out[name].write_bytes(data)
    return out


# -- sticky ---------------------------------------------------------------------------------


async def store_lookups(url: str, n: int) -> dict[str, float]:
    """What the router does per request with an asset id, alone: StickyAssets.lookup on
    Redis (one pipelined GET+TTL, the record's decode, sticky_choice), records present."""
    from prometheus_client import CollectorRegistry

    from modelfleet.router.assets import RedisAssetStore, StickyAssets
    from modelfleet.routing.sticky import AssetRecord

    store = RedisAssetStore(url)
    sticky = StickyAssets(store, CollectorRegistry())
    rec = AssetRecord("fast", "bench-model", "r1", "ab" * 32, 1, time.time())
    try:
        for i in range(200):
            await store.put("bench", f"asset-{i}", rec)
        lat = []
        ladder, live = ("other", "fast"), {"other", "fast"}
        for i in range(n):
            t0 = time.perf_counter()
            # The weights chose "other"; the record puts the asset's pool first.
            ticket = await sticky.lookup("bench", f"asset-{i % 200}", ladder, live)
            lat.append(time.perf_counter() - t0)
            if not (ticket.lookup_ok and ticket.ladder[0] == "fast"):
                raise RuntimeError(f"lookup missed: {ticket}")
    finally:
        await sticky.close()
    lat.sort()
    return {
        "p50_ms": lat[len(lat) // 2] * 1000,
        "p99_ms": lat[int(len(lat) * 0.99)] * 1000,
        "n": float(n),
    }


def redis_keys(port: int) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(b"DBSIZE\r\n")
        return int(s.recv(64).strip().lstrip(b":"))


def histogram_quantile(metrics_text: str, name: str, q: float, **labels: str) -> float:
    """Prometheus-style quantile of a histogram (linear within the bucket), in ms."""
    from prometheus_client.parser import text_string_to_metric_families

    buckets = []
    for fam in text_string_to_metric_families(metrics_text):
        for smp in fam.samples:
            want = all(smp.labels.get(k) == v for k, v in labels.items())
            if smp.name == name + "_bucket" and want:
                buckets.append((float(smp.labels["le"]), smp.value))
    buckets.sort()
    total = buckets[-1][1]
    rank, prev_le, prev_n = q * total, 0.0, 0.0
    for le, n in buckets:
        if n >= rank:
            frac = (rank - prev_n) / (n - prev_n) if n > prev_n else 0.0
            return (prev_le + (le - prev_le) * frac) * 1000
        prev_le, prev_n = le, n
    return float("nan")


def sticky_end_to_end(
    up_port: int, tmp: Path, redis_port: int, assets: int, uses: int
) -> dict[str, dict[str, Any]]:
    """Small-body requests carrying asset_id, one at a time, to a router with Redis and one
    without a store, interleaved; each asset's first use (the record) is not counted."""
    procs = {
        "none": start_router(up_port, tmp, "sticky-none", "--asset-store", "none"),
        "redis": start_router(
            up_port, tmp, "sticky-redis", "--asset-store", f"redis://127.0.0.1:{redis_port}/0"
        ),
    }
    ports = {name: port for name, (_, port) in procs.items()}

    def batch(i: int) -> bytes:
        body = json.dumps({"prompt": SMALL_MARKER.decode(), "asset_id": f"asset-{i}"}).encode()
        return raw_request(GEN_PATH, body, "application/json")

    clients = {name: SeqClient(port) for name, port in ports.items()}
    lat: dict[str, list[float]] = {"none": [], "redis": []}
    keys0 = redis_keys(redis_port)
    try:
        for use in range(uses):
            for i in range(assets):
                order = ["none", "redis"] if (use + i) % 2 else ["redis", "none"]
                for name in order:
                    status, _, seconds = clients[name].send(batch(i))
                    if status != 200:
                        raise RuntimeError(f"sticky request to {name} answered {status}")
                    if use > 0:  # the first use writes the record; later ones look it up
                        lat[name].append(seconds * 1000)
        # The router's own measure of its lookups (FailOpenStore's histogram).
        with urllib.request.urlopen(f"http://127.0.0.1:{ports['redis']}/metrics") as resp:
            text = resp.read().decode()
        inside = {
            f"p{int(q * 100)}_ms": histogram_quantile(
                text, "modelfleet_router_asset_store_seconds", q, op="get"
            )
            for q in (0.5, 0.99)
        }
    finally:
        for c in clients.values():
            c.close()
        for proc, _ in procs.values():
            stop(proc)
    # Every asset got its record from the Redis router: the lookups measured were hits.
    if redis_keys(redis_port) - keys0 != assets:
        raise RuntimeError(
            f"expected {assets} asset records in Redis, got {redis_keys(redis_port)}"
        )
    out = {}
    for name, values in lat.items():
        values.sort()
        out[name] = {
            "p50_ms": values[len(values) // 2],
            "p99_ms": values[int(len(values) * 0.99)],
        }
    diffs = sorted(r - n for r, n in zip(lat["redis"], lat["none"], strict=True))
    out["paired"] = {"p50_ms": diffs[len(diffs) // 2]}
    out["inside"] = inside
    return out


# -- main -----------------------------------------------------------------------------------


def measure(
    targets: dict[str, int], pids: dict[str, int], kind: str, req: tuple[str, Path, str], args: Any
) -> dict[tuple[str, str], dict[str, Any]]:
    """One request kind: warm-up, interleaved sequential requests, then each target alone
    under `--inflight` connections with its CPU and RSS metered."""
    path, body, ctype = req
    for port in targets.values():  # warm-up: connections, buffers, first-call costs
        run_load(port, path.encode(), body, ctype, 4, 2.0, 40)
    request = raw_request(path, body.read_bytes(), ctype)
    seq = round_robin(targets, request, args.sequential)
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for name, port in targets.items():
        pid = pids.get(name)
        cpu0 = cpu_seconds(pid) if pid else 0.0
        if pid:
            idle = rss_mb(pid)
            with RssSampler(pid) as rss:
                par = run_load(port, path.encode(), body, ctype, args.inflight, args.seconds)
            par["rss_mb"], par["rss_idle_mb"] = rss.peak, idle
            par["cpu_ms"] = (cpu_seconds(pid) - cpu0) / max(par["n"], 1) * 1000
        else:
            par = run_load(port, path.encode(), body, ctype, args.inflight, args.seconds)
        out[(name, "seq")], out[(name, "par")] = seq[name], par
        print(
            f"  {kind:10s} {name:7s} seq p50 {seq[name]['p50_ms']:6.2f} ms  "
            f"x{args.inflight}: {par['rps']:6.1f}/s {par['mb_s']:6.1f} MB/s "
            f"p99 {par['p99_ms']:7.1f} ms  statuses {seq[name]['statuses']} {par['statuses']}",
            file=sys.stderr,
        )
    return out


def print_tables(
    rows: dict[tuple[str, str, str], dict[str, Any]],
    sticky: dict[str, Any],
    targets: list[str],
    sizes: dict[str, float],
    args: Any,
) -> None:
    print(
        f"\n### Router with image bodies (answer {sizes['answer'] / 1e6:.2f} MB, edit upload "
        f"{sizes['edit'] / 1e6:.2f} MB; {args.sequential} sequential requests each, then "
        f"{args.inflight} in flight for {args.seconds:g} s; 127.0.0.1, {os.cpu_count()} cores)\n"
    )
    print(
        "| request | target | sequential p50 / p99 (ms) | added p50 / p99 (ms) | "
        f"x{args.inflight} p50 / p99 (ms) | req/s | MB/s | CPU / request | peak RSS (idle) | errors |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for kind in ("generation", "edit"):
        d = rows[(kind, "direct", "seq")]
        for name in targets:
            s, q = rows[(kind, name, "seq")], rows[(kind, name, "par")]
            if not s["ok"]:
                print(f"| {kind} | {name} | not served: {s['statuses']} | | | | | | | |")
                continue
            added = (
                "-"
                if name == "direct"
                else f"{s['p50_ms'] - d['p50_ms']:+.2f} / {s['p99_ms'] - d['p99_ms']:+.2f}"
            )
            cpu = f"{q['cpu_ms']:.2f} ms" if "cpu_ms" in q else "-"
            rss = f"{q['rss_mb']:.0f} MB ({q['rss_idle_mb']:.0f})" if "rss_mb" in q else "-"
            print(
                f"| {kind} | {name} | {s['p50_ms']:.2f} / {s['p99_ms']:.2f} | {added} | "
                f"{q['p50_ms']:.1f} / {q['p99_ms']:.1f} | {q['rps']:.0f} | {q['mb_s']:.0f} | "
                f"{cpu} | {rss} | {s['errors'] + q['errors']} |"
            )
    if "nginx" in targets:
        print(
            "\n| request | router / nginx: added p50 | CPU / request | MB/s at "
            f"x{args.inflight} | peak RSS |"
        )
        print("|---|---:|---:|---:|---:|")
        for kind in ("generation", "edit"):
            d = rows[(kind, "direct", "seq")]
            r, n = rows[(kind, "router", "seq")], rows[(kind, "nginx", "seq")]
            rq, nq = rows[(kind, "router", "par")], rows[(kind, "nginx", "par")]
            if not r["ok"]:
                continue
            ra, na = r["p50_ms"] - d["p50_ms"], n["p50_ms"] - d["p50_ms"]
            ratio = f"{ra / na:.1f}x" if na > 0.01 else "n/a (nginx added ~0)"
            print(
                f"| {kind} | {ratio} | {rq['cpu_ms'] / nq['cpu_ms']:.1f}x | "
                f"{rq['mb_s'] / nq['mb_s']:.2f}x | {rq['rss_mb'] / nq['rss_mb']:.1f}x |"
            )
    if sticky:
        st, none, red = sticky["store"], sticky["none"], sticky["redis"]
        print("\n| sticky lookup (Redis on loopback) | p50 (ms) | p99 (ms) |")
        print("|---|---:|---:|")
        print(
            f"| StickyAssets.lookup on Redis (GET+TTL, decode, choice), {st['n']:.0f} one at "
            f"a time | "
            f"{st['p50_ms']:.3f} | {st['p99_ms']:.3f} |"
        )
        print(
            f"| router, --asset-store none, small answers | {none['p50_ms']:.3f} | "
            f"{none['p99_ms']:.3f} |"
        )
        print(
            f"| router, --asset-store redis, same requests | {red['p50_ms']:.3f} | "
            f"{red['p99_ms']:.3f} |"
        )
        print(
            "| added by the Redis lookup, end to end: difference of the percentiles | "
            f"{red['p50_ms'] - none['p50_ms']:+.3f} | {red['p99_ms'] - none['p99_ms']:+.3f} |"
        )
        print(
            "| added by the Redis lookup, end to end: median of paired differences | "
            f"{sticky['paired']['p50_ms']:+.3f} | |"
        )
        inside = sticky["inside"]
        print(
            "| the lookup inside the router (its modelfleet_router_asset_store_seconds{op=get}, "
            f"interpolated in buckets) | {inside['p50_ms']:.3f} | {inside['p99_ms']:.3f} |"
        )
        print("\nGoal: sticky lookup p50 <= 0.3 ms.")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seconds", type=float, default=5.0, help="closed-loop seconds per target")
    p.add_argument("--sequential", type=int, default=150, help="one-at-a-time requests each")
    p.add_argument("--inflight", type=int, default=64)
    p.add_argument("--assets", type=int, default=200, help="sticky: assets, each used 4 times")
    args = p.parse_args()

    started = time.monotonic()
    procs: list[subprocess.Popen[bytes]] = []
    rows: dict[tuple[str, str, str], dict[str, Any]] = {}
    sticky: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        bodies = write_bodies(tmp)
        sizes = {k: float(v.stat().st_size) for k, v in bodies.items()}
        try:
            upstream, up_port = spawn_upstream(bodies["answer"])
            procs.append(upstream)
            router, router_port = start_router(up_port, tmp, "router", "--asset-store", "none")
            procs.append(router)
            targets = {"direct": up_port, "router": router_port}
            pids = {"router": router.pid}
            ng = start_nginx(up_port, tmp)
            if ng:
                procs.append(ng[0])
                targets["nginx"], pids["nginx"] = ng[1], ng[0].pid
            else:
                print("nginx not found: skipping (apt-get install -y nginx)", file=sys.stderr)
            kinds = {
                "generation": (GEN_PATH, bodies["generation"], "application/json"),
                "edit": (EDIT_PATH, bodies["edit"], f"multipart/form-data; boundary={BOUNDARY}"),
            }
            for kind, req in kinds.items():
                for (name, phase), r in measure(targets, pids, kind, req, args).items():
                    rows[(kind, name, phase)] = r
            rd = start_redis(tmp)
            if rd is None:
                print("redis-server not found: skipping the sticky part", file=sys.stderr)
            else:
                procs.append(rd[0])
                url = f"redis://127.0.0.1:{rd[1]}/0"
                sticky["store"] = asyncio.run(store_lookups(url, 2000))
                sticky.update(sticky_end_to_end(up_port, tmp, rd[1], args.assets, 4))
        finally:
            for proc in reversed(procs):
                stop(proc)
    print_tables(rows, sticky, list(targets), sizes, args)
    print(f"\nTotal bench time: {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
