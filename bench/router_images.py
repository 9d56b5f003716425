"""The router with image-sized bodies: direct vs `modelfleet router --config` vs nginx, and
the sticky asset lookup's cost with Redis on loopback.

    .venv/bin/python bench/router_images.py [--seconds 5] [--sequential 150] [--inflight 64]

Method
- Bodies: a 1024x1024 PNG of noise (Pillow, 3 bits a channel, fixed seed) is the image:
  ~1.4 MB, ~1.9 MB in base64 inside the worker-shaped JSON answer (with the `modelfleet`
  provenance block and headers real workers send). Edits upload a ~2.1 MB PNG of noise
  (5 bits a channel) as multipart/form-data the way the openai SDK sends it.
- Upstream: a raw asyncio HTTP/1.1 keep-alive server (separate process) that reads each
  request body and answers the prebuilt response at once, so it adds ~nothing.
- Targets, each in its own process on 127.0.0.1: (a) the upstream directly, (b) the router
  with a one-route static config, (c) nginx (Debian) as a plain reverse proxy, one worker
  process, upstream keepalive, bodies buffered in memory (client_body_buffer_size and
  proxy_buffers sized for the bodies, no temp files).
- Load: a raw asyncio HTTP/1.1 client in its own process that counts bytes without
  keeping them. Sequential: one request at a time on one connection (added latency =
  target percentile minus direct). Then `--inflight` connections closed loop for
  `--seconds`: throughput (MB/s of request + response bytes), latency at that load,
  the proxy's CPU seconds per request and its peak RSS (VmRSS sampled every 10 ms).
- Sticky: (1) RedisAssetStore.get (the router's own client, GETEX) against a
  redis-server on loopback, one at a time, records present; (2) end to end, small bodies,
  sequential requests with `asset_id` (200 assets, each used 3 times) through a router
  with --asset-store redis vs --asset-store none.
All processes share this machine's cores: absolute numbers depend on the host.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, cast

GEN_PATH = b"/v1/images/generations"
EDIT_PATH = b"/v1/images/edits"
BOUNDARY = "modelfleetbench7d1f0c"
GEN_BODY = b'{"prompt":"a lighthouse at dusk","n":1,"size":"1024x1024"}'
SMALL_HEADER = b"x-bench-small"  # the upstream answers a ~200-byte body instead


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


# -- upstream: answers every request at once ------------------------------------------------


def _response(body: bytes) -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        b"X-ModelFleet-Service-Time: 0.000100\r\nX-ModelFleet-Batch-Size: 1\r\n"
        b"X-ModelFleet-Model: bench-model\r\nX-ModelFleet-Revision: r1\r\n"
        b"X-ModelFleet-Cost-USD: 0.0\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


class _Upstream(asyncio.Protocol):
    big = b""
    small = _response(
        b'{"created":1700000000,"data":[{"b64_json":"iVBORw0KGgo="}],'
        b'"modelfleet":{"model":"bench-model","revision":"r1","seeds":[1],'
        b'"cost_usd":0.0,"images":1}}'
    )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = cast(asyncio.Transport, transport)  # uvloop's is not an asyncio subclass
        self.head = bytearray()
        self.remaining = -1  # body bytes still to come; -1: reading a head

    def data_received(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self.remaining < 0:
                self.head += view
                end = self.head.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = bytes(self.head[:end]).lower()
                view = memoryview(bytes(self.head[end + 4 :]))
                self.head = bytearray()
                i = head.find(b"content-length:")
                self.remaining = int(head[i + 15 :].split(b"\r\n", 1)[0]) if i >= 0 else 0
                self.reply = (
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                    if head.startswith(b"get ")
                    else self.small
                    if SMALL_HEADER in head
                    else self.big
                )
            take = min(len(view), self.remaining)
            view = view[take:]
            self.remaining -= take
            if self.remaining == 0:
                self.remaining = -1
                self.t.write(self.reply)


def serve_upstream(port: int, answer: Path) -> None:
    _uvloop()
    _Upstream.big = _response(answer.read_bytes())

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_Upstream, "127.0.0.1", port, backlog=4096)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


# -- load generator -------------------------------------------------------------------------


class _Conn(asyncio.Protocol):
    """One keep-alive connection; reads Content-Length or chunked answers, counting bytes."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.state = "head"
        self.remaining = 0
        self.received = 0
        self.status = 0
        self.waiter: asyncio.Future[None] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("closed"))

    def _done(self) -> None:
        self.state = "head"
        if self.waiter and not self.waiter.done():
            self.waiter.set_result(None)

    def _line(self, view: memoryview) -> tuple[bytes | None, memoryview]:
        self.buf += view
        i = self.buf.find(b"\r\n")
        if i < 0:
            return None, memoryview(b"")
        line, rest = bytes(self.buf[:i]), memoryview(bytes(self.buf[i + 2 :]))
        self.buf = bytearray()
        return line, rest

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        view = memoryview(data)
        while view:
            if self.state == "head":
                self.buf += view
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = bytes(self.buf[:end]).lower()
                view = memoryview(bytes(self.buf[end + 4 :]))
                self.buf = bytearray()
                self.status = int(head[9:12])
                if b"transfer-encoding: chunked" in head:
                    self.state = "size"
                    continue
                i = head.find(b"content-length:")
                self.remaining = int(head[i + 15 :].split(b"\r\n", 1)[0]) if i >= 0 else 0
                self.state = "body"
                if self.remaining == 0:
                    self._done()
            elif self.state in ("body", "chunk", "crlf"):
                take = min(len(view), self.remaining)
                view = view[take:]
                self.remaining -= take
                if self.remaining == 0:
                    if self.state == "body":
                        self._done()
                    elif self.state == "chunk":
                        self.state, self.remaining = "crlf", 2
                    else:
                        self.state = "size"
            elif self.state == "size":
                line, view = self._line(view)
                if line is None:
                    return
                size = int(line.split(b";")[0], 16)
                self.state, self.remaining = ("trailer", 0) if size == 0 else ("chunk", size)
            else:  # trailer: lines until an empty one
                line, view = self._line(view)
                if line is None:
                    return
                if line == b"":
                    self._done()


async def _load(
    port: int, path: bytes, body: bytes, ctype: bytes, conns: int, seconds: float, count: int
) -> dict[str, Any]:
    """`conns` connections in a closed loop for `seconds` (or `count` requests in all)."""
    loop = asyncio.get_running_loop()
    request = (
        b"POST " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: " + ctype + b"\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    lat: list[float] = []
    errors, sent_bytes, received = 0, 0, 0
    statuses: dict[int, int] = {}
    budget = [count]

    async def worker(deadline: float) -> None:
        nonlocal errors, sent_bytes, received
        _, conn = await loop.create_connection(_Conn, "127.0.0.1", port)
        while time.perf_counter() < deadline and budget[0] != 0:
            budget[0] -= 1
            if conn.closed:
                _, conn = await loop.create_connection(_Conn, "127.0.0.1", port)
            conn.waiter = loop.create_future()
            before = conn.received
            t0 = time.perf_counter()
            conn.t.write(request)
            try:
                await conn.waiter
            except ConnectionError:
                errors += 1
                continue
            lat.append(time.perf_counter() - t0)
            statuses[conn.status] = statuses.get(conn.status, 0) + 1
            sent_bytes += len(request)
            received += conn.received - before
        conn.t.close()

    t0 = time.perf_counter()
    deadline = t0 + seconds
    await asyncio.gather(*(worker(deadline) for _ in range(conns)))
    elapsed = time.perf_counter() - t0
    lat.sort()

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else float("nan")

    ok = statuses.get(200, 0)
    return {
        "n": len(lat),
        "ok": ok,
        "statuses": statuses,
        "errors": errors + len(lat) - ok,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "rps": len(lat) / elapsed,
        "mb_s": (sent_bytes + received) / elapsed / 1e6,
        "resp_bytes": received / max(len(lat), 1),
    }


def run_load(
    port: int,
    path: bytes,
    body: Path,
    ctype: str,
    conns: int,
    seconds: float,
    count: int = -1,
) -> dict[str, Any]:
    """In a fresh process, so the generator never shares a loop with a target."""
    out = subprocess.run(
        [sys.executable, __file__, "--load", str(port), "--path", path.decode(),
         "--body", str(body), "--ctype", ctype, "--conns", str(conns),
         "--seconds", str(seconds), "--count", str(count)],
        capture_output=True, text=True, timeout=seconds + 120, check=True,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


# -- targets --------------------------------------------------------------------------------


def _wait_http(port: int, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"nothing ready on port {port}")


def start_router(
    upstream_port: int, tmp: Path, name: str, *args: str
) -> tuple[subprocess.Popen[bytes], int]:
    cfg = tmp / f"{name}.yaml"
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
         "--port", str(port), "--config", str(cfg), "--log-level", "WARNING", *args],
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
  client_max_body_size 32m;
  client_body_buffer_size 4m;
  proxy_buffer_size 64k;
  proxy_buffers 64 64k;
  proxy_busy_buffers_size 256k;
  proxy_max_temp_file_size 0;
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


def _proc_pids(pid: int) -> list[int]:
    """`pid` and its direct children."""
    out = [pid]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry.name))
    return out


def cpu_seconds(pid: int) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for p in _proc_pids(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def rss_mb(pid: int) -> float:
    total = 0
    for p in _proc_pids(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


class RssSampler:
    """Peak RSS of a process tree while a run lasts, sampled every 10 ms."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = rss_mb(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, rss_mb(self.pid))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def router_has(flag: str) -> bool:
    out = subprocess.run(
        [sys.executable, "-m", "modelfleet.cli", "router", "--help"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return flag in out.stdout


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# -- sticky ---------------------------------------------------------------------------------


def start_redis(tmp: Path) -> tuple[subprocess.Popen[bytes], int] | None:
    exe = shutil.which("redis-server")
    if exe is None:
        return None
    port = free_port()
    proc = subprocess.Popen(
        [exe, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(tmp), "--save", "",
         "--appendonly", "no", "--daemonize", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return proc, port
        except OSError:
            time.sleep(0.02)
    _stop(proc)
    raise RuntimeError("redis-server did not start")


async def store_lookups(url: str, n: int) -> dict[str, float]:
    """The router's own Redis client: GETEX of present records, one at a time."""
    from modelfleet.router.assets import RedisAssetStore
    from modelfleet.routing.sticky import AssetRecord

    store = RedisAssetStore(url)
    rec = AssetRecord("fast", "bench-model", "r1", "ab" * 32, 1, time.time())
    try:
        for i in range(200):
            await store.put("bench", f"asset-{i}", rec)
        lat = []
        for i in range(n):
            t0 = time.perf_counter()
            got = await store.get("bench", f"asset-{i % 200}")
            lat.append(time.perf_counter() - t0)
            assert got == rec
    finally:
        await store.close()
    lat.sort()
    return {
        "p50_ms": lat[len(lat) // 2] * 1000,
        "p99_ms": lat[int(len(lat) * 0.99)] * 1000,
        "n": float(n),
    }


def sticky_end_to_end(
    up_port: int, tmp: Path, redis_url: str | None, assets: int, uses: int
) -> dict[str, Any]:
    """Sequential small-body requests carrying asset_id through a router whose store is
    Redis (or none), each asset used `uses` times."""
    store = redis_url or "none"
    name = "sticky-redis" if redis_url else "sticky-none"
    proc, port = start_router(up_port, tmp, name, "--asset-store", store)
    lat = []
    try:
        with socket.create_connection(("127.0.0.1", port)) as s:
            f = s.makefile("rb")
            for round_ in range(uses):
                for i in range(assets):
                    body = json.dumps({"prompt": "x", "asset_id": f"a{i}"}).encode()
                    req = (
                        b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\n"
                        b"Content-Type: application/json\r\nX-Bench-Small: 1\r\n"
                        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
                    )
                    t0 = time.perf_counter()
                    s.sendall(req)
                    status = f.readline()
                    length = 0
                    while (line := f.readline()) not in (b"\r\n", b""):
                        if line.lower().startswith(b"content-length:"):
                            length = int(line.split(b":")[1])
                    f.read(length)
                    if round_ > 0:  # first uses record; later ones are the lookups measured
                        lat.append(time.perf_counter() - t0)
                    if b" 200 " not in status:
                        raise RuntimeError(f"sticky request answered {status!r}")
    finally:
        _stop(proc)
    lat.sort()
    return {"p50_ms": lat[len(lat) // 2] * 1000, "p99_ms": lat[int(len(lat) * 0.99)] * 1000}


# -- main -----------------------------------------------------------------------------------


def _fmt(v: float) -> str:
    return f"{v:.2f}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seconds", type=float, default=5.0, help="closed-loop seconds per target")
    p.add_argument("--sequential", type=int, default=150, help="one-at-a-time requests")
    p.add_argument("--inflight", type=int, default=64)
    p.add_argument("--serve-upstream", type=int, help=argparse.SUPPRESS)
    p.add_argument("--answer", help=argparse.SUPPRESS)
    p.add_argument("--load", type=int, help=argparse.SUPPRESS)
    p.add_argument("--path", help=argparse.SUPPRESS)
    p.add_argument("--body", help=argparse.SUPPRESS)
    p.add_argument("--ctype", help=argparse.SUPPRESS)
    p.add_argument("--conns", type=int, help=argparse.SUPPRESS)
    p.add_argument("--count", type=int, default=-1, help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.serve_upstream:
        serve_upstream(args.serve_upstream, Path(args.answer))
        return 0
    if args.load:
        _uvloop()
        body = Path(args.body).read_bytes()
        res = asyncio.run(
            _load(
                args.load, args.path.encode(), body, args.ctype.encode(), args.conns,
                args.seconds, args.count,
            )
        )  # fmt: skip
        print(json.dumps(res))
        return 0

    started = time.monotonic()
    procs: list[subprocess.Popen[bytes]] = []
    rows: dict[tuple[str, str, str], dict[str, Any]] = {}
    sticky: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        bodies = write_bodies(tmp)
        sizes = {k: v.stat().st_size for k, v in bodies.items()}
        store_flags = ["--asset-store", "none"] if router_has("--asset-store") else []
        try:
            up_port = free_port()
            procs.append(
                subprocess.Popen(
                    [sys.executable, __file__, "--serve-upstream", str(up_port),
                     "--answer", str(bodies["answer"])]
                )
            )  # fmt: skip
            _wait_http(up_port)
            router, router_port = start_router(up_port, tmp, "router", *store_flags)
            procs.append(router)
            targets = {"direct": up_port, "router": router_port}
            pids = {"router": router.pid}
            ng = start_nginx(up_port, tmp)
            if ng:
                procs.append(ng[0])
                targets["nginx"] = ng[1]
                pids["nginx"] = ng[0].pid
            else:
                print("nginx not found: skipping (apt-get install -y nginx)", file=sys.stderr)
            kinds = {
                "generation": (GEN_PATH, bodies["generation"], "application/json"),
                "edit": (EDIT_PATH, bodies["edit"], f"multipart/form-data; boundary={BOUNDARY}"),
            }
            for kind, (path, body, ctype) in kinds.items():
                for name, port in targets.items():
                    run_load(port, path, body, ctype, 4, 1.0, 40)  # warm-up: connections, JIT
                    seq = run_load(port, path, body, ctype, 1, 60.0, args.sequential)
                    pid = pids.get(name)
                    cpu0 = cpu_seconds(pid) if pid else 0.0
                    if pid:
                        with RssSampler(pid) as rss:
                            par = run_load(port, path, body, ctype, args.inflight, args.seconds)
                        par["rss_mb"] = rss.peak
                        par["cpu_ms"] = (cpu_seconds(pid) - cpu0) / max(par["n"], 1) * 1000
                    else:
                        par = run_load(port, path, body, ctype, args.inflight, args.seconds)
                    rows[(kind, name, "seq")], rows[(kind, name, "par")] = seq, par
                    print(
                        f"  {kind:10s} {name:7s} seq p50 {seq['p50_ms']:6.2f} ms  "
                        f"x{args.inflight}: {par['rps']:6.1f}/s {par['mb_s']:6.1f} MB/s "
                        f"p99 {par['p99_ms']:7.1f} ms  statuses {seq['statuses']} "
                        f"{par['statuses']} errors {seq['errors'] + par['errors']}",
                        file=sys.stderr,
                    )
            rd = start_redis(tmp) if store_flags else None
            if not store_flags:
                print("router has no --asset-store: skipping the sticky part", file=sys.stderr)
            elif rd is None:
                print("redis-server not found: skipping the sticky part", file=sys.stderr)
            else:
                procs.append(rd[0])
                url = f"redis://127.0.0.1:{rd[1]}/0"
                sticky["store"] = asyncio.run(store_lookups(url, 2000))
                sticky["none"] = sticky_end_to_end(up_port, tmp, None, 200, 3)
                sticky["redis"] = sticky_end_to_end(up_port, tmp, url, 200, 3)
        finally:
            for proc in reversed(procs):
                _stop(proc)

    resp = rows[("generation", "direct", "par")]["resp_bytes"]
    print(
        f"\n### Router with image bodies (answer {resp / 1e6:.2f} MB incl. headers, "
        f"edit upload {sizes['edit'] / 1e6:.2f} MB; "
        f"{args.sequential} sequential requests, then {args.inflight} in flight for "
        f"{args.seconds:g} s; 127.0.0.1, {os.cpu_count()} cores)\n"
    )
    print(
        "| request | target | sequential p50 / p99 (ms) | added p50 / p99 (ms) | "
        f"x{args.inflight} p50 / p99 (ms) | req/s | MB/s | CPU / request | peak RSS | errors |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for kind in ("generation", "edit"):
        d = rows[(kind, "direct", "seq")]
        for name in targets:
            s, q = rows[(kind, name, "seq")], rows[(kind, name, "par")]
            added = (
                "-"
                if name == "direct"
                else f"{s['p50_ms'] - d['p50_ms']:+.2f} / {s['p99_ms'] - d['p99_ms']:+.2f}"
            )
            if not s["ok"]:
                print(f"| {kind} | {name} | not served: {s['statuses']} | | | | | | | |")
                continue
            cpu = f"{q['cpu_ms']:.2f} ms" if "cpu_ms" in q else "-"
            rss = f"{q['rss_mb']:.0f} MB" if "rss_mb" in q else "-"
            print(
                f"| {kind} | {name} | {_fmt(s['p50_ms'])} / {_fmt(s['p99_ms'])} | {added} | "
                f"{q['p50_ms']:.1f} / {q['p99_ms']:.1f} | {q['rps']:.0f} | {q['mb_s']:.0f} | "
                f"{cpu} | {rss} | {s['errors'] + q['errors']} |"
            )
    if "nginx" in targets:
        print("\n| request | router/nginx added p50 | CPU / request | MB/s at x64 |")
        print("|---|---:|---:|---:|")
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
                f"{rq['mb_s'] / nq['mb_s']:.2f}x |"
            )
    if sticky:
        st, none, red = sticky["store"], sticky["none"], sticky["redis"]
        print("\n| sticky lookup (Redis on loopback) | p50 (ms) | p99 (ms) |")
        print("|---|---:|---:|")
        print(f"| RedisAssetStore.get (GETEX), {st['n']:.0f} lookups | "
              f"{st['p50_ms']:.3f} | {st['p99_ms']:.3f} |")  # fmt: skip
        print(f"| router, --asset-store none, small bodies | {none['p50_ms']:.3f} | "
              f"{none['p99_ms']:.3f} |")  # fmt: skip
        print(f"| router, --asset-store redis, same requests | {red['p50_ms']:.3f} | "
              f"{red['p99_ms']:.3f} |")  # fmt: skip
        print(
            f"| added by the Redis lookup (goal p50 <= 0.3 ms) | "
            f"{red['p50_ms'] - none['p50_ms']:+.3f} | {red['p99_ms'] - none['p99_ms']:+.3f} |"
        )
    print(f"\nTotal bench time: {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
