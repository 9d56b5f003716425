"""A stand-in worker for tests and benchmarks: worker-shaped answers, no GPU, and faults on
demand (500, 429, 400, hang, connection reset, garbage 200, delay), and text
verification results on demand (the `modelfleet` block a worker with OCR returns).

In-process: `FakeWorker(name)`, `await w.start()`, `w.url`, `w.mode = "fail"`.
Edits (multipart) are answered like a generation of their text fields.
As a process: `python -m modelfleet_dev.fakeworker --port 8081 [--name a]`; the mode
can then be set with `POST /_control {"mode": ..., "delay_ms": ...}`.

Verification: each image of a request with expected text (field `text` or quoted
spans, as the worker reads them) takes the next entry of `w.scores` (a word
accuracy in [0, 1], or "unreadable"), then `w.default_score` once they run out;
None there means no block, as from a worker with verification off. The block is
judged at the request's `min_word_accuracy` (default 1.0), like the worker's.
Also `POST /_control {"scores": [...], "default_score": ...}`, `--score`, `--scores`."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from aiohttp import web

from modelfleet_common.errors import error_body
from modelfleet_common.expected_text import ExpectedTextError, expected_text

MODES = ("ok", "fail", "busy", "bad_request", "hang", "reset", "garbage")
# 1x1 transparent PNG: keeps the answer the size of a fixed small JSON.
TINY_PNG_B64 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII="
)


_FORM_NUMBERS: dict[str, Any] = {
    "n": int,
    "seed": int,
    "steps": int,
    "guidance_scale": float,
    "min_word_accuracy": float,
    "strength": float,
}


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
        self.bodies: list[dict[str, Any]] = []  # generations' JSON, edits' text fields
        self.edit_files: list[list[str]] = []  # each edit's file part names, in order
        self.keep_bodies = True
        self.scores: list[float | str] = []  # per image, consumed in order
        self.default_score: float | str | None = None  # after scores: None = no block
        self.verified = 0  # images that got a block
        self.in_flight = 0  # generation requests being answered now
        self.max_in_flight = 0  # the most at once since start
        self.cost_usd: float | None = None  # per image, sent as X-ModelFleet-Cost-USD
        self._runner: web.AppRunner | None = None
        self._hung: asyncio.Event = asyncio.Event()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/images/generations", self.generate)
        app.router.add_post("/v1/images/edits", self.edit)
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
        if "scores" in doc:
            self.scores = list(doc["scores"])
        if "default_score" in doc:
            self.default_score = doc["default_score"]
        return web.json_response(
            {
                "mode": self.mode,
                "delay_ms": self.delay_s * 1000,
                "scores": self.scores,
                "default_score": self.default_score,
            }
        )

    def _block(self, expected: tuple[str, ...], threshold: float) -> dict[str, Any] | None:
        score = self.scores.pop(0) if self.scores else self.default_score
        if score is None:
            return None
        self.verified += 1
        common = {"verified": True, "expected": list(expected), "engine": "fake", "ocr_ms": 0.0}
        if score == "unreadable":
            return {**common, "verified": False, "status": "unreadable", "reason": "no text found"}
        wa = float(score)
        passed = wa >= threshold
        return {
            **common,
            "status": "passed" if passed else "failed",
            "read": " ".join(expected) if wa >= 1.0 else f"{self.name} misspelt this",
            "word_accuracy": wa,
            "ned": wa,
            "exact": wa >= 1.0,
            "passed": passed,
            "min_word_accuracy": threshold,
        }

    async def generate(self, request: web.Request) -> web.StreamResponse:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            raw = await request.read()
            return await self._generate(request, json.loads(raw) if raw else {})
        finally:
            self.in_flight -= 1

    async def edit(self, request: web.Request) -> web.StreamResponse:
        """An edit answers like a generation of its text fields (numbers parsed, `text`
        and `text[]` a list); the file parts are only named in `edit_files`."""
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            body: dict[str, Any] = {}
            files: list[str] = []
            for name, value in (await request.post()).items():
                if isinstance(value, web.FileField):
                    files.append(name)
                elif name.removesuffix("[]") == "text":
                    body.setdefault("text", []).append(str(value))
                else:
                    body[name] = _FORM_NUMBERS.get(name, str)(str(value))
            if self.keep_bodies:
                self.edit_files.append(files)
            return await self._generate(request, body)
        finally:
            self.in_flight -= 1

    async def _generate(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        self.requests += 1
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
        n = int(body.get("n") or 1)  # JSON null means the default, as for the real worker
        seed = body.get("seed")
        data: list[dict[str, Any]] = [
            {"b64_json": TINY_PNG_B64, "seed": (seed or 0) + i} for i in range(n)
        ]
        try:
            expected = expected_text(str(body.get("prompt", "")), body.get("text"))
        except ExpectedTextError as exc:
            return _err(400, "invalid_request", str(exc))
        if expected:
            threshold = float(body.get("min_word_accuracy", 1.0))
            for item in data:
                block = self._block(expected, threshold)
                if block is not None:
                    item["modelfleet"] = block
        return web.json_response(
            {
                "created": int(time.time()),
                "data": data,
                "timing": {"queue_ms": 0.0, "inference_ms": self.delay_s * 1000},
                "worker": self.name,
            },
            headers={
                "X-Fake-Worker": self.name,
                **(
                    {}
                    if self.cost_usd is None
                    else {"X-ModelFleet-Cost-USD": repr(self.cost_usd * n)}
                ),
            },
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--name", default="fake")
    p.add_argument("--mode", default="ok", choices=MODES)
    p.add_argument("--delay-ms", type=float, default=0.0)
    p.add_argument(
        "--score", help="word accuracy (0-1) or 'unreadable' of every image with expected text"
    )
    p.add_argument("--scores", default="", help="comma-separated scores of the first images")
    p.add_argument("--cost-usd", type=float, help="USD per image (X-ModelFleet-Cost-USD)")
    args = p.parse_args()

    def score(v: str) -> float | str:
        return v if v == "unreadable" else float(v)

    async def run() -> None:
        w = FakeWorker(args.name, args.host, args.port)
        w.mode, w.delay_s, w.keep_bodies = args.mode, args.delay_ms / 1000.0, False
        w.default_score = None if args.score is None else score(args.score)
        w.scores = [score(v) for v in args.scores.split(",") if v]
        w.cost_usd = args.cost_usd
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
