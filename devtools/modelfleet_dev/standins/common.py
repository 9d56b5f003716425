"""What the hosted-API stand-ins share: solid-band PNGs of the size a provider renders,
a script of faults to answer next, the `/_standin/*` control routes, and running one
in-process (`await s.start()`) or as a process (`python -m modelfleet_dev.standins.X`).

Faults (`kind`): `rate_limit` (429, the provider's own body and headers), `quota`
(quota exhausted, where the provider has one), `refuse` (the provider's safety
refusal of the request), `unsafe` (the answer's first image flagged by the provider's
filter, the rest delivered), `error` (a 5xx, `status`), `slow` (answer normally after
`delay_s`), `slow_url` (an image URL answers after `delay_s`, where a provider returns
URLs). Each is
answered `count` times (None: until cleared), in the order they were added. A prompt
holding one of `blocked_words` is refused as the provider would, without a fault.
A fault naming a `model` answers only requests for that provider model.
Control over HTTP: `POST /_standin/faults {"kind", "count", "delay_s", "retry_after_s",
"status", "model"}`, `DELETE /_standin/faults`, `GET /_standin/calls` (what was asked of it)."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

FAULT_KINDS = ("rate_limit", "quota", "refuse", "unsafe", "error", "slow", "slow_url")
BLOCKED_WORDS = ("forbidden-content",)


@dataclass
class Fault:
    kind: str
    count: int | None = 1  # answers left; None = until cleared
    delay_s: float = 0.0  # `slow`; also before any other fault's answer
    retry_after_s: float = 2.0  # `rate_limit` / `quota`
    status: int = 500  # `error`
    model: str | None = None  # only requests for this provider model (quotas are per model)

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"fault kind must be one of {', '.join(FAULT_KINDS)}")


@dataclass
class Call:
    """One request the stand-in received: where, what it asked (the parsed fields, never
    the auth header), and what it answered."""

    path: str
    fields: dict[str, Any]
    status: int = 0
    at: float = field(default_factory=time.time)


def png(width: int, height: int, seed: int) -> bytes:
    """A valid RGB PNG of exactly width x height: horizontal bands whose colours follow
    `seed`, so the same seed draws the same image and another seed another one."""
    rows = []
    for band in range(8):
        digest = hashlib.sha256(f"{seed}:{band}".encode()).digest()
        rows.append(b"\x00" + bytes(digest[:3]) * width)
    band_h = max(1, height // 8)
    raw = b"".join(rows[min(7, y // band_h)] for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 1))
        + chunk(b"IEND", b"")
    )


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's header; tests read what a stand-in drew with it."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def random_seed() -> int:
    return int.from_bytes(os.urandom(4), "big") & 0x7FFFFFFF


class StandIn:
    """Base of a provider stand-in: the key it requires, the fault script, the calls it
    saw, the control routes and the server's lifecycle. Subclasses add their routes."""

    def __init__(self, api_key: str, host: str = "127.0.0.1", port: int = 0) -> None:
        self.api_key = api_key
        self.host = host
        self.port = port
        self.faults: list[Fault] = []
        self.calls: list[Call] = []
        self.blocked_words: tuple[str, ...] = BLOCKED_WORDS
        self.in_flight = 0
        self.max_in_flight = 0
        self._runner: web.AppRunner | None = None
        # Tests set faults from their own thread while the server's loop takes them.
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def add_fault(self, kind: str, count: int | None = 1, **kw: Any) -> Fault:
        fault = Fault(kind, count, **kw)
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()
            self.calls.clear()

    def take_fault(
        self, kinds: tuple[str, ...] = FAULT_KINDS[:-1], model: str | None = None
    ) -> Fault | None:
        """The first fault of `kinds` (and of `model`, for a fault that names one) this
        request answers, if any (consumes one of its answers). Generation requests take
        every kind but `slow_url`, downloads only it."""
        with self._lock:
            self.faults[:] = [f for f in self.faults if f.count is None or f.count > 0]
            for fault in self.faults:
                if fault.kind not in kinds or fault.model not in (None, model):
                    continue
                if fault.count is not None:
                    fault.count -= 1
                return fault
            return None

    def blocked(self, prompt: str) -> bool:
        low = prompt.lower()
        return any(w in low for w in self.blocked_words)

    def calls_to(self, suffix: str) -> list[Call]:
        return [c for c in self.calls if c.path.endswith(suffix)]

    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/_standin/faults", self._post_fault)
        app.router.add_delete("/_standin/faults", self._clear_faults)
        app.router.add_get("/_standin/calls", self._get_calls)
        self.routes(app)
        return app

    async def _post_fault(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            fault = self.add_fault(**body)
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(asdict(fault))

    async def _clear_faults(self, request: web.Request) -> web.Response:
        self.clear()
        return web.json_response({"faults": []})

    async def _get_calls(self, request: web.Request) -> web.Response:
        return web.json_response({"calls": [asdict(c) for c in self.calls]})

    async def tracked(self, call: Call, answer: Callable[[], Any]) -> web.StreamResponse:
        """Run one provider request, counting concurrency and recording its status."""
        self.calls.append(call)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            resp: web.StreamResponse = await answer()
        finally:
            self.in_flight -= 1
        call.status = resp.status
        return resp

    @staticmethod
    async def delay(fault: Fault | None) -> None:
        if fault is not None and fault.delay_s > 0:
            await asyncio.sleep(fault.delay_s)

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self.port == 0:
            self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


@contextmanager
def in_thread(standin: StandIn, timeout: float = 10.0) -> Iterator[StandIn]:
    """Serve `standin` from its own event loop in a background thread, so blocking test
    code (and adapter subprocesses) can talk to it while it answers."""
    loop = asyncio.new_event_loop()
    started = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(standin.start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=run, name=f"standin-{type(standin).__name__}", daemon=True)
    thread.start()
    if not started.wait(timeout):
        raise RuntimeError("stand-in did not start")
    try:
        yield standin
    finally:
        asyncio.run_coroutine_threadsafe(standin.stop(), loop).result(timeout)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        loop.close()


def main(factory: Callable[[str, str, int], StandIn], description: str) -> None:
    """Run a stand-in as a process: the key from --key-file or the environment variable
    MODELFLEET_STANDIN_API_KEY (never an argument, which `ps` would show)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--key-file", type=Path)
    parser.add_argument("--ready-file", type=Path, help="written with the port once serving")
    args = parser.parse_args()
    key = (
        args.key_file.read_text().strip()
        if args.key_file
        else os.environ.get("MODELFLEET_STANDIN_API_KEY", "")
    )
    if not key:
        parser.error("give the key with --key-file or MODELFLEET_STANDIN_API_KEY")

    async def serve() -> None:
        standin = factory(key, args.host, args.port)
        await standin.start()
        print(json.dumps({"url": standin.url}), flush=True)
        if args.ready_file:
            args.ready_file.write_text(str(standin.port))
        await asyncio.Event().wait()

    asyncio.run(serve())
