"""A stand-in worker for tests and benchmarks: worker-shaped answers, no GPU, and faults on
demand (500, 429, 400, hang, connection reset, garbage 200, delay).

In-process: `FakeWorker(name)`, `await w.start()`, `w.url`, `w.mode = "fail"`.
As a process: `python -m modelfleet_dev.fakeworker --port 8081 [--name a]`; the mode
can then be set with `POST /_control {"mode": ..., "delay_ms": ...}`."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from aiohttp import web

from modelfleet_common.errors import error_body

MODES = ("ok", "fail", "busy", "bad_request", "hang", "reset", "garbage")
# 1x1 transparent PNG: keeps the answer the size of a fixed small JSON.
TINY_PNG_B64 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII="
)


def _err(status: int, code: str, message: str) -> web.Response:
    return web.json_response(error_body(code, message), status=status)


class FakeWorker:
    def __init__(self, name: str = "fake", host: str = "127.0.0.1", port: int = 0) -> None:
        self.name = name
        self.host = host
        self.port = port
        self.mode = "ok"
        self.delay_s = 0.0
        self.requests = 0  # generation requests received (any mode)
        self.bodies: list[dict[str, Any]] = []
        self.keep_bodies = True
        self._runner: web.AppRunner | None = None
        self._hung: asyncio.Event = asyncio.Event()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/images/generations", self.generate)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_post("/_control", self.control)
        return app

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self.port == 0:
            server = site._server
            assert server is not None
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    async def stop(self) -> None:
        """Close the listener and every connection: the port refuses from now on."""
        self._hung.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def readyz(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ready"})

    async def control(self, request: web.Request) -> web.Response:
        doc = await request.json()
        self.mode = doc.get("mode", self.mode)
        self.delay_s = float(doc.get("delay_ms", self.delay_s * 1000)) / 1000.0
        return web.json_response({"mode": self.mode, "delay_ms": self.delay_s * 1000})

    async def generate(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        raw = await request.read()
        body = json.loads(raw) if raw else {}
        if self.keep_bodies:
            self.bodies.append(body)
        mode = self.mode
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if mode == "fail":
            return _err(500, "internal", f"{self.name} failing on purpose")
        if mode == "busy":
            return _err(429, "queue_full", f"{self.name} queue full")
        if mode == "bad_request":
            return _err(400, "invalid_request", f"{self.name} refuses this request")
        if mode == "hang":
            await self._hung.wait()
            return _err(500, "internal", "stopped while hanging")
        if mode == "reset":
            transport = request.transport
            if transport is not None:
                transport.abort()
            return web.Response(status=500)
        if mode == "garbage":
            return web.Response(status=200, body=b"\x00not json{", content_type="application/json")
        n = int(body.get("n", 1))
        seed = body.get("seed")
        return web.json_response(
            {
                "created": int(time.time()),
                "data": [{"b64_json": TINY_PNG_B64, "seed": (seed or 0) + i} for i in range(n)],
                "timing": {"queue_ms": 0.0, "inference_ms": self.delay_s * 1000},
                "worker": self.name,
            },
            headers={"X-Fake-Worker": self.name},
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--name", default="fake")
    p.add_argument("--mode", default="ok", choices=MODES)
    p.add_argument("--delay-ms", type=float, default=0.0)
    args = p.parse_args()

    async def run() -> None:
        w = FakeWorker(args.name, args.host, args.port)
        w.mode, w.delay_s, w.keep_bodies = args.mode, args.delay_ms / 1000.0, False
        await w.start()
        print(f"fake worker {args.name} on {w.url}", flush=True)
        await asyncio.Event().wait()

    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(run())


if __name__ == "__main__":
    main()
