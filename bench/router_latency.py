"""Router latency overhead: direct vs `modelfleet router --config` vs nginx, open loop.

    .venv/bin/python bench/router_latency.py [--rates 200,500,1000] [--duration 6]

Method
- Upstream: a raw asyncio HTTP/1.1 keep-alive server (separate process) answering every
  POST with a fixed worker-shaped JSON (~220 bytes) at once, so the upstream adds ~nothing.
- Targets, each in its own process, all on 127.0.0.1: (a) the upstream directly,
  (b) the router with a one-route static config, (c) nginx as a plain reverse proxy
  (`proxy_pass`, upstream keepalive, one worker process, access log off).
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
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

REQUEST_BODY = b'{"prompt":"a lighthouse at dusk","n":1,"size":"512x512"}'
RESPONSE_BODY = (
    b'{"created":1700000000,"data":[{"b64_json":"iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwC'
    b'AAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII=","seed":1}],"timing":{"inference_ms":0}}'
)
P99_LIMIT_S = 0.050


def _uvloop() -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- upstream: a minimal keep-alive HTTP server -------------------------------------------


class _Upstream(asyncio.Protocol):
    RESPONSE = (
        # The service-time headers real workers send (the router reads them).
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        b"X-ModelFleet-Service-Time: 0.000100\r\nX-ModelFleet-Batch-Size: 1\r\nContent-Length: "
        + str(len(RESPONSE_BODY)).encode()
        + b"\r\n\r\n"
        + RESPONSE_BODY
    )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = cast(asyncio.Transport, transport)  # uvloop's is not an asyncio subclass
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].lower()
            length = 0
            i = head.find(b"content-length:")
            if i >= 0:
                length = int(head[i + 15 :].split(b"\r\n", 1)[0])
            if len(self.buf) < end + 4 + length:
                return
            self.buf = self.buf[end + 4 + length :]
            if head.startswith(b"get /readyz"):
                self.t.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            else:
                self.t.write(self.RESPONSE)


def serve_upstream(port: int) -> None:
    _uvloop()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_Upstream, "127.0.0.1", port, backlog=4096)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


# -- load generator -----------------------------------------------------------------------


class _Conn(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = b""
        self.waiter: asyncio.Future[None] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = cast(asyncio.Transport, transport)  # uvloop's is not an asyncio subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("closed"))

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buf[:end].lower()
        i = head.find(b"content-length:")
        length = int(head[i + 15 :].split(b"\r\n", 1)[0]) if i >= 0 else 0
        if len(self.buf) >= end + 4 + length:
            self.status = int(head[9:12])
            self.buf = self.buf[end + 4 + length :]
            if self.waiter and not self.waiter.done():
                self.waiter.set_result(None)


async def _load(port: int, rate: float, duration: float, warmup: float) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    request = (
        b"POST /v1/images/generations HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: "
        + str(len(REQUEST_BODY)).encode()
        + b"\r\n\r\n"
        + REQUEST_BODY
    )
    idle: list[_Conn] = []
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
                _, conn = await loop.create_connection(_Conn, "127.0.0.1", port)
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
    out = subprocess.run(
        [sys.executable, __file__, "--load", str(port), "--rate", str(rate),
         "--duration", str(duration), "--warmup", str(warmup)],
        capture_output=True, text=True, timeout=duration + warmup + 60, check=True,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


# -- targets ------------------------------------------------------------------------------


def _wait_http(port: int, path: str = "/readyz", timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"nothing ready on port {port}")


def start_router(upstream_port: int, tmp: Path) -> tuple[subprocess.Popen[bytes], int]:
    cfg = tmp / "router.yaml"
    cfg.write_text(
        "policies:\n"
        "- apiVersion: modelfleet.io/v1alpha1\n  kind: RoutingPolicy\n"
        "  metadata: {name: bench}\n"
        "  spec:\n    admission: {maxInFlight: 10000, maxQueue: 10000}\n"
        "    routes: [{name: all, pool: fast}]\n"
        f"endpoints:\n  fast: [http://127.0.0.1:{upstream_port}]\n"
    )
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelfleet.cli", "router", "--host", "127.0.0.1",
         "--port", str(port), "--config", str(cfg), "--log-level", "WARNING",
         "--client-auth", "off"],
    )  # fmt: skip
    _wait_http(port)
    return proc, port


def start_nginx(upstream_port: int, tmp: Path) -> tuple[subprocess.Popen[bytes], int] | None:
    nginx = shutil.which("nginx") or (
        "/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None
    )
    if nginx is None:
        return None
    port = free_port()
    prefix = tmp / "nginx"
    (prefix / "logs").mkdir(parents=True)
    conf = prefix / "nginx.conf"
    conf.write_text(
        f"""
daemon off;
master_process off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {prefix}/body;
  proxy_temp_path {prefix}/proxy;
  fastcgi_temp_path {prefix}/fastcgi;
  uwsgi_temp_path {prefix}/uwsgi;
  scgi_temp_path {prefix}/scgi;
  upstream fast {{ server 127.0.0.1:{upstream_port}; keepalive 256; }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{
      proxy_pass http://fast;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
"""
    )
    proc = subprocess.Popen([nginx, "-p", str(prefix), "-c", str(conf)])
    _wait_http(port)
    return proc, port


def _cpu_seconds(pid: int) -> float:
    """User+system CPU of `pid` and its direct children (nginx's worker process)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry.name) == pid or int(fields[1]) == pid:
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rates", default="200,500,1000")
    p.add_argument("--sweep", default="650,800,900,1200,1500,2000", help="router-only rates too")
    p.add_argument("--duration", type=float, default=6.0, help="measured seconds per run")
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--serve-upstream", type=int, help=argparse.SUPPRESS)
    p.add_argument("--load", type=int, help=argparse.SUPPRESS)
    p.add_argument("--rate", type=float, help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.serve_upstream:
        serve_upstream(args.serve_upstream)
        return 0
    if args.load:
        _uvloop()
        print(json.dumps(asyncio.run(_load(args.load, args.rate, args.duration, args.warmup))))
        return 0

    started = time.monotonic()
    rates = [float(r) for r in args.rates.split(",")]
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        try:
            up_port = free_port()
            procs.append(
                subprocess.Popen([sys.executable, __file__, "--serve-upstream", str(up_port)])
            )
            _wait_http(up_port)
            router, router_port = start_router(up_port, tmp)
            procs.append(router)
            targets = {"direct": up_port, "router": router_port}
            ng = start_nginx(up_port, tmp)
            if ng:
                procs.append(ng[0])
                targets["nginx"] = ng[1]
            else:
                print("nginx not found: skipping (apt-get install -y nginx)", file=sys.stderr)
            pids = {"router": router.pid, **({"nginx": ng[0].pid} if ng else {})}
            results: dict[tuple[str, float], dict[str, Any]] = {}
            for rate in rates:
                for name, port in targets.items():
                    cpu0 = _cpu_seconds(pids[name]) if name in pids else 0.0
                    results[(name, rate)] = run_load(port, rate, args.duration, args.warmup)
                    r = results[(name, rate)]
                    if name in pids:  # warm-up requests included: all of them cost CPU
                        r["cpu_us"] = (_cpu_seconds(pids[name]) - cpu0) / max(r["sent"], 1) * 1e6
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
                _stop(proc)

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
