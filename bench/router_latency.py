"""Router latency overhead: direct vs `modelfleet router --config` vs nginx, open loop.

    .venv/bin/python bench/router_latency.py [--rates 200,500,1000] [--duration 6]

Method
- Upstream (bench/httpbench.py, like the other router benches): a raw asyncio HTTP/1.1
  keep-alive server (separate process) answering every POST with a fixed worker-shaped
  JSON (~220 bytes) and the service-time headers at once, so the upstream adds ~nothing.
- Targets, each in its own process, all on 127.0.0.1: (a) the upstream directly,
  (b) the router with a one-route static config, (c) nginx as a plain reverse proxy
  (`proxy_pass`, upstream keepalive, one worker process, access log off,
  nginx's default buffers).
- Load: an open-loop generator in its own process (uvloop, raw HTTP/1.1 over up to 512
  keep-alive connections, no pipelining). Request i is due at t0 + i/rate whatever
  happened before; latency is measured from that due time to the last byte of the
  response, so a stall shows up as latency (no coordinated omission), the way wrk2 does.
  The first second of each run is warm-up and discarded.
- Added latency = target percentile minus direct percentile at the same rate.
- Then the router alone at rising rates until its p99 exceeds 50 ms.
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
from pathlib import Path
from typing import Any

from httpbench import (
    LEAN_HEADERS,
    Conn,
    cpu_seconds,
    json_run,
    raw_request,
    spawn_upstream,
    start_nginx,
    start_router,
    stop,
    uvloop_install,
)

REQUEST_BODY = b'{"prompt":"a lighthouse at dusk","n":1,"size":"512x512"}'
RESPONSE_BODY = (
    b'{"created":1700000000,"data":[{"b64_json":"iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwC'
    b'AAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII=","seed":1}],"timing":{"inference_ms":0}}'
)
P99_LIMIT_S = 0.050


# -- load generator: open loop ----------------------------------------------------------


async def _load(port: int, rate: float, duration: float, warmup: float) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    request = raw_request("/v1/images/generations", REQUEST_BODY, "application/json")
    idle: list[Conn] = []
    max_conns, opened = 512, 0
    slot = asyncio.Semaphore(max_conns)
    lat: list[float] = []
    errors = 0

    async def one(due: float, record: bool) -> None:
        nonlocal opened, errors
        async with slot:
            conn = None
            while idle:
                c = idle.pop()
                if not c.closed:
                    conn = c
                    break
            if conn is None:
                _, conn = await loop.create_connection(Conn, "127.0.0.1", port)
                opened += 1
            conn.waiter = loop.create_future()
            conn.t.write(request)
            try:
                await conn.waiter
                ok = conn.status == 200
            except ConnectionError:
                ok = False
            done = time.perf_counter()
            if not conn.closed:
                idle.append(conn)
        if record:
            if ok:
                lat.append(done - due)
            else:
                errors += 1

    total = int(rate * (duration + warmup))
    tasks = []
    t0 = time.perf_counter() + 0.05
    for i in range(total):
        due = t0 + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(due, i >= rate * warmup)))
    await asyncio.gather(*tasks)
    sent_rate = total / (time.perf_counter() - t0)
    lat.sort()

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else float("nan")

    return {
        "rate": rate,
        "n": len(lat),
        "errors": errors,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "max_ms": lat[-1] * 1000 if lat else float("nan"),
        "connections": opened,
        "achieved_rate": sent_rate,
        "sent": total,
    }


def run_load(port: int, rate: float, duration: float, warmup: float = 1.0) -> dict[str, Any]:
    """In a fresh process, so the generator never shares a core's loop with a target."""
    result: dict[str, Any] = json_run(
        [__file__, "--load", str(port), "--rate", str(rate), "--duration", str(duration),
         "--warmup", str(warmup)],
        timeout_s=duration + warmup + 60,
    )  # fmt: skip
    return result


# -- targets ------------------------------------------------------------------------------


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rates", default="200,500,1000")
    p.add_argument("--sweep", default="650,800,900,1200,1500,2000", help="router-only rates too")
    p.add_argument("--duration", type=float, default=6.0, help="measured seconds per run")
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--load", type=int, help=argparse.SUPPRESS)
    p.add_argument("--rate", type=float, help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.load:
        uvloop_install()
        print(json.dumps(asyncio.run(_load(args.load, args.rate, args.duration, args.warmup))))
        return 0

    started = time.monotonic()
    rates = [float(r) for r in args.rates.split(",")]
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        try:
            answer = tmp / "answer.json"
            answer.write_bytes(RESPONSE_BODY)
            upstream, up_port = spawn_upstream(answer, LEAN_HEADERS)
            procs.append(upstream)
            router, router_port = start_router(up_port, tmp)
            procs.append(router)
            targets = {"direct": up_port, "router": router_port}
            ng = start_nginx(up_port, tmp, buffers="")
            if ng:
                procs.append(ng[0])
                targets["nginx"] = ng[1]
            else:
                print("nginx not found: skipping (apt-get install -y nginx)", file=sys.stderr)
            pids = {"router": router.pid, **({"nginx": ng[0].pid} if ng else {})}
            results: dict[tuple[str, float], dict[str, Any]] = {}
            for rate in rates:
                for name, port in targets.items():
                    cpu0 = cpu_seconds(pids[name]) if name in pids else 0.0
                    results[(name, rate)] = run_load(port, rate, args.duration, args.warmup)
                    r = results[(name, rate)]
                    if name in pids:  # warm-up requests included: all of them cost CPU
                        r["cpu_us"] = (cpu_seconds(pids[name]) - cpu0) / max(r["sent"], 1) * 1e6
                    print(
                        f"  {name:7s} {rate:6.0f}/s  p50 {r['p50_ms']:7.2f} ms  "
                        f"p99 {r['p99_ms']:7.2f} ms  errors {r['errors']}",
                        file=sys.stderr,
                    )
            max_ok = None
            sweep_rows = []
            for rate in sorted({*rates, *(float(r) for r in args.sweep.split(",") if r)}):
                r = results.get(("router", rate)) or run_load(
                    router_port, rate, args.duration, args.warmup
                )
                sweep_rows.append(r)
                if (
                    r["p99_ms"] > P99_LIMIT_S * 1000
                    or r["errors"]
                    or r["achieved_rate"] < 0.95 * rate
                ):
                    break
                max_ok = rate
        finally:
            for proc in reversed(procs):
                stop(proc)

    print(f"\n### Router latency overhead (open loop, {args.duration:g} s per run, 127.0.0.1)\n")
    print(
        "| rate (req/s) | direct p50 / p99 (ms) | router p50 / p99 (ms) | nginx p50 / p99 (ms) "
        "| router added p50 / p99 | nginx added p50 / p99 | router/nginx added p99 |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for rate in rates:
        d, r = results[("direct", rate)], results[("router", rate)]
        n = results.get(("nginx", rate))
        ra50, ra99 = r["p50_ms"] - d["p50_ms"], r["p99_ms"] - d["p99_ms"]
        if n:
            na50, na99 = n["p50_ms"] - d["p50_ms"], n["p99_ms"] - d["p99_ms"]
            ncol = f"{n['p50_ms']:.2f} / {n['p99_ms']:.2f}"
            nadd = f"{na50:+.2f} / {na99:+.2f}"
            ratio = f"{ra99 / na99:.1f}x" if na99 > 0.01 else "n/a (nginx added ~0)"
        else:
            ncol = nadd = ratio = "n/a"
        print(
            f"| {rate:.0f} | {d['p50_ms']:.2f} / {d['p99_ms']:.2f} | {r['p50_ms']:.2f} / "
            f"{r['p99_ms']:.2f} | {ncol} | {ra50:+.2f} / {ra99:+.2f} | {nadd} | {ratio} |"
        )
    print("\n| rate (req/s) | router CPU / request | nginx CPU / request | ratio |")
    print("|---:|---:|---:|---:|")
    for rate in rates:
        rc = results[("router", rate)].get("cpu_us")
        nc = (results.get(("nginx", rate)) or {}).get("cpu_us")
        print(
            f"| {rate:.0f} | {rc:.0f} us | "
            + (f"{nc:.0f} us | {rc / nc:.1f}x |" if nc else "n/a | n/a |")
        )
    print("\n| router rate (req/s) | achieved | p50 (ms) | p99 (ms) | errors |")
    print("|---:|---:|---:|---:|---:|")
    for r in sweep_rows:
        print(
            f"| {r['rate']:.0f} | {r['achieved_rate']:.0f} | {r['p50_ms']:.2f} | "
            f"{r['p99_ms']:.2f} | {r['errors']} |"
        )
    print(
        f"\nMax rate tried with router p99 <= {P99_LIMIT_S * 1000:.0f} ms: {max_ok:.0f} req/s"
        if max_ok
        else "\nRouter p99 > 50 ms at every rate tried"
    )
    errs = sum(r["errors"] for r in results.values())
    print(
        f"\nErrors: {errs}. Cores: {os.cpu_count()}. Total bench time: "
        f"{time.monotonic() - started:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
