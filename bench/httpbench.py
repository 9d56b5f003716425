"""HTTP pieces of bench/router_images.py and bench/router_latency.py: a stand-in worker that
answers a prebuilt body at once, a load generator that counts bytes without keeping them (its own process: it must
never share an event loop with a target), a blocking client for one-at-a-time requests,
nginx and redis-server on loopback, and CPU / RSS meters of a process tree.

    python bench/httpbench.py --serve-upstream PORT --answer FILE [--lean-headers]
    python bench/httpbench.py --load PORT --path P --body FILE --ctype T --conns N --seconds S
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
import threading
import time
from pathlib import Path
from typing import Any, cast

# A request whose body starts with this (in its first 256 bytes, e.g. the prompt) gets a
# ~200-byte answer instead of the big one. In the body, not a header: the router forwards
# no client headers to workers.
SMALL_MARKER = b"bench-small-answer"


def uvloop_install() -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- upstream: answers every request at once ------------------------------------------------


# The headers a worker's answer carries: service time and batch size (what the router reads
# for the canary's service-time checks), then provenance (model, revision, cost).
LEAN_HEADERS = b"X-ModelFleet-Service-Time: 0.000100\r\nX-ModelFleet-Batch-Size: 1\r\n"
WORKER_HEADERS = (
    LEAN_HEADERS
    + b"X-ModelFleet-Model: bench-model\r\nX-ModelFleet-Revision: r1\r\n"
    + b"X-ModelFleet-Cost-USD: 0.0\r\n"
)


def _response(body: bytes, headers: bytes = WORKER_HEADERS) -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        + headers
        + b"Content-Length: "
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
                self.get = head.startswith(b"get ")
                self.first = b""
            take = min(len(view), self.remaining)
            if len(self.first) < 256:
                self.first += bytes(view[: min(take, 256 - len(self.first))])
            view = view[take:]
            self.remaining -= take
            if self.remaining == 0:
                self.remaining = -1
                if self.get:
                    self.t.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                else:
                    self.t.write(self.small if SMALL_MARKER in self.first else self.big)


def serve_upstream(port: int, answer: Path, headers: bytes = WORKER_HEADERS) -> None:
    """Answer every POST with `answer`'s bytes (small ones for SMALL_MARKER), GET with ok."""
    uvloop_install()
    _Upstream.big = _response(answer.read_bytes(), headers)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_Upstream, "127.0.0.1", port, backlog=4096)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


# -- load generator -------------------------------------------------------------------------


class Conn(asyncio.Protocol):
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


async def load(
    port: int, path: bytes, body: bytes, ctype: bytes, conns: int, seconds: float, count: int
) -> dict[str, Any]:
    """`conns` connections in a closed loop for `seconds` (or `count` requests in all)."""
    loop = asyncio.get_running_loop()
    request = raw_request(path.decode(), body, ctype.decode())
    lat: list[float] = []
    errors, sent_bytes, received = 0, 0, 0
    statuses: dict[int, int] = {}
    budget = [count]

    async def worker(deadline: float) -> None:
        nonlocal errors, sent_bytes, received
        _, conn = await loop.create_connection(Conn, "127.0.0.1", port)
        while time.perf_counter() < deadline and budget[0] != 0:
            budget[0] -= 1
            if conn.closed:
                _, conn = await loop.create_connection(Conn, "127.0.0.1", port)
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
    out = summary(lat, statuses)
    out["errors"] += errors  # connections lost mid-answer
    out["rps"] = len(lat) / elapsed
    out["mb_s"] = (sent_bytes + received) / elapsed / 1e6
    out["resp_bytes"] = received / max(len(lat), 1)
    return out


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
    return json_run(
        [__file__, "--load", str(port), "--path", path.decode(), "--body", str(body),
         "--ctype", ctype, "--conns", str(conns), "--seconds", str(seconds),
         "--count", str(count)],
        timeout_s=seconds + 120,
    )  # fmt: skip


def json_run(argv: list[str], timeout_s: float) -> dict[str, Any]:
    """Run `python ARGV...` and return the JSON object its last stdout line holds."""
    out = subprocess.run(
        [sys.executable, *argv], capture_output=True, text=True, timeout=timeout_s, check=True
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def spawn_upstream(
    answer: Path, headers: bytes = WORKER_HEADERS
) -> tuple[subprocess.Popen[bytes], int]:
    """The stand-in worker in its own process, ready; its port."""
    port = free_port()
    argv = [sys.executable, __file__, "--serve-upstream", str(port), "--answer", str(answer)]
    if headers == LEAN_HEADERS:
        argv.append("--lean-headers")
    proc = subprocess.Popen(argv)
    wait_http(port)
    return proc, port


# -- targets and meters ---------------------------------------------------------------------


def wait_http(port: int, timeout_s: float = 30) -> None:
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
    upstream_port: int, tmp: Path, name: str = "router", *args: str
) -> tuple[subprocess.Popen[bytes], int]:
    """`modelfleet router --config` with one route to `upstream_port` (admission wide
    open, client auth off), ready; its port. `args`: more router flags."""
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
         "--port", str(port), "--config", str(cfg), "--log-level", "WARNING",
         "--client-auth", "off", *args],
    )  # fmt: skip
    wait_http(port)
    return proc, port


# Buffers for image-sized bodies (router_images.py): a 2 MB upload and answer stay in memory.
IMAGE_BUFFERS = """
  client_max_body_size 32m;
  client_body_buffer_size 4m;
  proxy_buffer_size 64k;
  proxy_buffers 64 64k;
  proxy_busy_buffers_size 256k;
  proxy_max_temp_file_size 0;"""


def start_nginx(
    upstream_port: int, tmp: Path, buffers: str = IMAGE_BUFFERS
) -> tuple[subprocess.Popen[bytes], int] | None:
    """nginx as a plain reverse proxy (one worker, upstream keepalive, no access log) in
    front of `upstream_port`, ready; None when nginx is not installed. `buffers`: extra
    `http` directives ("" for nginx's defaults)."""
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
  access_log off;{buffers}
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
    wait_http(port)
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
    """User+system CPU of `pid` and its direct children (nginx's worker process)."""
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


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


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
    stop(proc)
    raise RuntimeError("redis-server did not start")


# -- one request at a time ------------------------------------------------------------------


def raw_request(path: str, body: bytes, ctype: str, extra: str = "") -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {ctype}\r\n{extra}"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class SeqClient:
    """A blocking keep-alive connection: one request, its whole answer, the seconds taken."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.f = self.sock.makefile("rb")

    def send(self, request: bytes) -> tuple[int, int, float]:
        t0 = time.perf_counter()
        self.sock.sendall(request)
        status = int(self.f.readline()[9:12])
        length, chunked = 0, False
        while (line := self.f.readline().lower()) not in (b"\r\n", b""):
            if line.startswith(b"content-length:"):
                length = int(line[15:])
            elif line.startswith(b"transfer-encoding:") and b"chunked" in line:
                chunked = True
        if chunked:
            while size := int(self.f.readline().split(b";")[0], 16):
                length += len(self.f.read(size + 2)) - 2
            self.f.readline()
        else:
            self.f.read(length)
        return status, length, time.perf_counter() - t0

    def close(self) -> None:
        self.f.close()
        self.sock.close()


def round_robin(
    ports: dict[str, int], requests: dict[str, bytes] | bytes, n: int
) -> dict[str, dict[str, Any]]:
    """n requests to each target, one at a time, interleaved (the order rotates each round):
    a host whose load changes during the run slows every target alike."""
    clients = {name: SeqClient(port) for name, port in ports.items()}
    lat: dict[str, list[float]] = {name: [] for name in ports}
    statuses: dict[str, dict[int, int]] = {name: {} for name in ports}
    names = list(ports)
    try:
        for i in range(n):
            for name in names[i % len(names) :] + names[: i % len(names)]:
                req = requests if isinstance(requests, bytes) else requests[name]
                status, _, seconds = clients[name].send(req)
                lat[name].append(seconds)
                statuses[name][status] = statuses[name].get(status, 0) + 1
    finally:
        for c in clients.values():
            c.close()
    return {name: summary(lat[name], statuses[name]) for name in ports}


def summary(seconds: list[float], statuses: dict[int, int]) -> dict[str, Any]:
    lat = sorted(seconds)

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else float("nan")

    ok = statuses.get(200, 0)
    return {
        "n": len(lat),
        "ok": ok,
        "statuses": statuses,
        "errors": len(lat) - ok,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--serve-upstream", type=int)
    p.add_argument("--answer")
    p.add_argument("--lean-headers", action="store_true", help="service time and batch only")
    p.add_argument("--load", type=int)
    p.add_argument("--path")
    p.add_argument("--body")
    p.add_argument("--ctype")
    p.add_argument("--conns", type=int)
    p.add_argument("--seconds", type=float)
    p.add_argument("--count", type=int, default=-1)
    args = p.parse_args()
    if args.serve_upstream:
        headers = LEAN_HEADERS if args.lean_headers else WORKER_HEADERS
        serve_upstream(args.serve_upstream, Path(args.answer), headers)
        return 0
    uvloop_install()
    body = Path(args.body).read_bytes()
    res = asyncio.run(
        load(args.load, args.path.encode(), body, args.ctype.encode(), args.conns, args.seconds,
             args.count)
    )  # fmt: skip
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
