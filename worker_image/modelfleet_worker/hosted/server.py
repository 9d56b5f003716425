"""Adapter-mode HTTP server: a hosted provider model behind the worker's API.

Serves /v1/images/generations, /v1/images/edits, /healthz, /readyz and /metrics like
the diffusers worker, so the router, fallbacks and canaries treat the pool like any
other. Decisions (translation, limits, prices) are pure modules; this is the shell.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from modelfleet_common.errors import error_body
from modelfleet_common.prices import PriceTable, load_table

from ..metrics import endpoint_of
from ..response import provenance, provenance_headers
from ..validation import MAX_BODY_BYTES, RequestError, parse_body
from .answers import PRECEDENCE, Reject, provider_outcome, reject_for
from .backend import (
    EditInput,
    HostedRequest,
    ProviderBackend,
    ProviderContext,
    ProviderError,
    ProviderFailure,
    ProviderImage,
    ProviderQuotaExhausted,
    ProviderRateLimited,
    ProviderRefused,
    ProviderResult,
)
from .config import API_KEY_ENV, HostedConfig
from .form import MAX_UPLOAD_BYTES, read_edit
from .limits import Cooldown, TokenBucket, retry_after_header
from .metrics import HostedMetrics
from .registry import BackendSettings, make_backend
from .request import ClientRequest, parse_client_request
from .translate import TranslationError

log = logging.getLogger("modelfleet_worker.hosted")

MAX_DOWNLOAD_BYTES = 64 * 1024 * 1024
EXIT_BAD_CONFIG = 2


@dataclass(frozen=True)
class Made:
    images: list[ProviderImage]
    seeds: list[int | None]
    cost_usd: float


class HostedServer:
    def __init__(
        self,
        cfg: HostedConfig,
        backend: ProviderBackend,
        api_key: str,
        prices: PriceTable,
        wall: Callable[[], float] = time.time,
        mono: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self.backend = backend
        self._key = api_key
        self.prices = prices
        self.wall, self.mono = wall, mono
        self.endpoint = (cfg.endpoint or backend.default_endpoint).rstrip("/")
        self.metrics = HostedMetrics(cfg.pool, backend.name, backend.model)
        self.state = "ready"  # ready -> draining
        self.quota_until = 0.0  # unix seconds; > now: quota exhausted
        self.cooldown = Cooldown()
        self.bucket = (
            TokenBucket(cfg.requests_per_minute, now=mono()) if cfg.requests_per_minute else None
        )
        self.calls = asyncio.Semaphore(cfg.max_concurrency)
        self.max_waiting = cfg.max_concurrency * 4
        self._waiting = 0
        self._active = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.session: aiohttp.ClientSession | None = None
        self.metrics.ready.set(1)

    # ----- wiring ---------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_UPLOAD_BYTES, middlewares=[self._errors])
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics_handler)
        app.router.add_post("/v1/images/generations", self.generations)
        app.router.add_post("/v1/images/edits", self.edits)
        app.on_startup.append(self._open)
        app.on_cleanup.append(self._close)
        return app

    async def _open(self, app: web.Application) -> None:
        # No default headers: the key goes only on provider calls, never on URL downloads.
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.cfg.max_concurrency * 2)
        )

    async def _close(self, app: web.Application) -> None:
        if self.session is not None:
            await self.session.close()

    def scrub(self, text: str) -> str:
        return text.replace(self._key, "[redacted]") if self._key else text

    def _error(self, r: Reject, endpoint: str) -> web.Response:
        self.metrics.requests.labels(endpoint=endpoint, outcome=r.outcome).inc()
        headers = (
            {} if r.retry_after is None else {"Retry-After": retry_after_header(r.retry_after)}
        )
        return web.json_response(
            error_body(r.code, self.scrub(r.message), r.param), status=r.status, headers=headers
        )

    @web.middleware
    async def _errors(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        endpoint = endpoint_of(request.path)
        try:
            return await handler(request)
        except Reject as r:
            return self._error(r, endpoint)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            outcome = "too_large" if exc.status == 413 else "invalid"
            return self._error(
                Reject(exc.status, "http_error", exc.reason, outcome=outcome), endpoint
            )
        except Exception as exc:
            log.error("unhandled %s on %s", type(exc).__name__, request.path)
            return self._error(
                Reject(500, "internal_error", "internal error", outcome="error"), endpoint
            )

    # ----- probes -----------------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "alive", "state": self.state})

    async def readyz(self, request: web.Request) -> web.Response:
        if self.state != "ready":
            return web.json_response({"status": self.state}, status=503)
        if self._quota_left() > 0:
            return web.json_response(
                {"status": "quota_exhausted", "until": self.quota_until}, status=503
            )
        return web.json_response({"status": "ready"})

    async def metrics_handler(self, request: web.Request) -> web.Response:
        self._quota_left()  # a quota reset that passed since the last request shows as ready
        return web.Response(
            body=self.metrics.render(), headers={"Content-Type": self.metrics.content_type}
        )

    def _quota_left(self) -> float:
        left = self.quota_until - self.wall()
        if left <= 0 and self.quota_until:
            self.quota_until = 0.0
            self.metrics.quota_until.set(0)
            self.metrics.ready.set(1 if self.state == "ready" else 0)
        return max(0.0, left)

    # ----- handlers -------------------------------------------------------------------

    async def generations(self, request: web.Request) -> web.Response:
        raw = await request.read()
        if len(raw) > MAX_BODY_BYTES:
            raise Reject(
                413, "body_too_large", f"body exceeds {MAX_BODY_BYTES} bytes", None, "too_large"
            )
        try:
            body = parse_body(raw)
        except RequestError as exc:
            raise Reject(exc.status, exc.code, exc.message, exc.param) from exc
        return await self._serve(body, None, "generations")

    async def edits(self, request: web.Request) -> web.Response:
        if not self.backend.capabilities.edits:
            raise Reject(
                400,
                "edits_unsupported",
                f"{self.backend.model} ({self.backend.name}) does not support image edits",
                "image",
            )
        fields, edit = await read_edit(request)
        return await self._serve(fields, edit, "edits")

    async def _serve(self, body: Any, edit: EditInput | None, endpoint: str) -> web.Response:
        t0 = time.perf_counter()
        self._active += 1
        self._idle.clear()
        try:
            self._admit()
            try:
                req = parse_client_request(
                    body,
                    self.backend.capabilities,
                    self.cfg.provider_defaults,
                    self.cfg.size_policy,
                )
            except TranslationError as exc:
                raise Reject(400, "invalid_request", exc.message, exc.param) from exc
            self._take_tokens(len(req.plan.counts))
            made = await self._make(req, edit)
            return self._answer(made, time.perf_counter() - t0, endpoint)
        finally:
            self.metrics.request_duration.labels(endpoint=endpoint).observe(
                time.perf_counter() - t0
            )
            self._active -= 1
            if self._active == 0:
                self._idle.set()

    # ----- admission (no provider call is made for a request turned away here) ---------

    def _admit(self) -> None:
        if self.state != "ready":
            raise Reject(503, "unavailable", "adapter draining for shutdown", outcome="unavailable")
        quota = self._quota_left()
        if quota > 0:
            self.metrics.rate_limit_waits.labels(reason="quota").inc()
            raise Reject(
                429,
                "quota_exhausted",
                f"provider quota exhausted until {int(self.quota_until)} (unix seconds)",
                outcome="quota_exhausted",
                retry_after=quota,
            )
        wait = self.cooldown.remaining(self.mono())
        if wait > 0:
            # The provider asked us to wait: say so at once, so the router falls back.
            self.metrics.rate_limit_waits.labels(reason="provider_retry_after").inc()
            raise Reject(
                429,
                "rate_limited",
                "provider rate limit: retry later",
                outcome="rate_limited",
                retry_after=wait,
            )
        if self._waiting >= self.max_waiting:
            raise Reject(
                429,
                "queue_full",
                f"{self._waiting} requests already wait for the provider "
                f"(maxConcurrency {self.cfg.max_concurrency})",
                outcome="queue_full",
                retry_after=1.0,
            )

    def _take_tokens(self, calls: int) -> None:
        if self.bucket is None:
            return
        wait = self.bucket.take(self.mono(), calls)
        if wait > 0:
            self.metrics.rate_limit_waits.labels(reason="token_bucket").inc()
            raise Reject(
                429,
                "rate_limited",
                f"pool limit of {self.cfg.requests_per_minute} provider requests per minute",
                outcome="rate_limited",
                retry_after=wait,
            )

    # ----- provider calls -----------------------------------------------------------

    async def _make(self, req: ClientRequest, edit: EditInput | None) -> Made:
        calls = [
            HostedRequest(
                prompt=req.prompt,
                n=count,
                size=req.plan.size,
                quality=req.quality,
                seed=seed,
                negative_prompt=req.negative_prompt,
                extra=req.extra,
                edit=edit,
            )
            for count, seed in zip(req.plan.counts, req.plan.seeds, strict=True)
        ]
        outcomes = await asyncio.gather(*(self._call(c) for c in calls), return_exceptions=True)
        made: list[tuple[HostedRequest, ProviderResult]] = []
        failures: list[BaseException] = []
        for c, o in zip(calls, outcomes, strict=True):
            if isinstance(o, BaseException):
                failures.append(o)
            else:
                made.append((c, o))
        cost = self._bill(made)  # images made before a failure are paid for all the same
        if failures:
            raise self._failure_answer(failures)
        images: list[ProviderImage] = []
        seeds: list[int | None] = []
        for c, result in made:
            for i, im in enumerate(result.images):
                images.append(im)
                seeds.append(
                    im.seed if im.seed is not None else (None if c.seed is None else c.seed + i)
                )
        images = await self._download(images)
        return Made(images, seeds, cost)

    async def _call(self, call: HostedRequest) -> ProviderResult:
        assert self.session is not None
        ctx = ProviderContext(self.session, self._key, self.endpoint, self.cfg.request_timeout_s)
        self._waiting += 1
        try:
            await self.calls.acquire()
        finally:
            self._waiting -= 1
        self.metrics.in_flight.inc()
        t0 = time.perf_counter()
        try:
            if call.edit is not None:
                result = await self.backend.edit(call, ctx)
            else:
                result = await self.backend.generate(call, ctx)
        except ProviderFailure as exc:
            self.metrics.provider_requests.labels(outcome=provider_outcome(exc)).inc()
            self._note_limits(exc)
            raise
        finally:
            self.metrics.provider_seconds.observe(time.perf_counter() - t0)
            self.metrics.in_flight.dec()
            self.calls.release()
        self.metrics.provider_requests.labels(outcome="ok").inc()
        if result.pause_s:  # the provider's budget is spent: do not call until it refills
            self.cooldown.hold(self.mono(), result.pause_s)
        return result

    def _note_limits(self, exc: ProviderFailure) -> None:
        if isinstance(exc, ProviderRefused):
            self.metrics.refusals.inc()
        elif isinstance(exc, ProviderRateLimited):
            self.cooldown.hold(self.mono(), exc.retry_after_s)
        elif isinstance(exc, ProviderQuotaExhausted):
            self.quota_until = max(self.quota_until, exc.until)
            self.metrics.quota_until.set(self.quota_until)
            self.metrics.ready.set(0)
            log.warning("provider quota exhausted until %d", int(exc.until))
        elif isinstance(exc, ProviderError):
            log.warning("provider call failed: %s", self.scrub(exc.message))

    def _failure_answer(self, failures: Sequence[BaseException]) -> Reject:
        # The one the client can act on first: refusal, quota, rate limit, then errors.
        for kind in PRECEDENCE:
            for f in failures:
                if isinstance(f, kind):
                    return reject_for(f, self.wall())
        f = failures[0]
        log.error("provider call raised %s", type(f).__name__)
        return Reject(500, "internal_error", "internal error", outcome="error")

    def _bill(self, made: Sequence[tuple[HostedRequest, ProviderResult]]) -> float:
        total = 0.0
        for call, result in made:
            price = self.prices.lookup(
                self.backend.provider,
                self.backend.model,
                result.quality or call.quality,
                str(call.size),
                self.cfg.price_overrides,
            )
            if price is None:
                self.metrics.unpriced.inc(len(result.images))
                price = 0.0
            for _ in result.images:
                self.metrics.cost_per_image.observe(price)
            total += price * len(result.images)
        self.metrics.cost_usd.inc(total)
        return total

    async def _download(self, images: list[ProviderImage]) -> list[ProviderImage]:
        async def one(im: ProviderImage) -> ProviderImage:
            if im.b64_json is not None or im.url is None:
                return im
            assert self.session is not None
            timeout = aiohttp.ClientTimeout(total=self.cfg.download_timeout_s)
            try:
                async with self.session.get(im.url, timeout=timeout) as resp:
                    if resp.status != 200:
                        raise Reject(
                            502,
                            "provider_error",
                            f"downloading a provider image URL answered HTTP {resp.status}",
                            outcome="provider_error",
                        )
                    data = await resp.content.read(MAX_DOWNLOAD_BYTES + 1)
            except (TimeoutError, aiohttp.ClientError) as exc:
                raise Reject(
                    502,
                    "provider_error",
                    f"downloading a provider image URL failed ({type(exc).__name__}) "
                    f"within {self.cfg.download_timeout_s:g}s",
                    outcome="provider_error",
                ) from exc
            if len(data) > MAX_DOWNLOAD_BYTES:
                raise Reject(
                    502, "provider_error", "provider image is too large", outcome="provider_error"
                )
            return ProviderImage(
                b64_json=base64.b64encode(data).decode("ascii"),
                revised_prompt=im.revised_prompt,
                seed=im.seed,
            )

        return list(await asyncio.gather(*(one(im) for im in images)))

    def _answer(self, made: Made, elapsed_s: float, endpoint: str) -> web.Response:
        self.metrics.images.labels(endpoint=endpoint).inc(len(made.images))
        self.metrics.requests.labels(endpoint=endpoint, outcome="ok").inc()
        data = []
        for im in made.images:
            item: dict[str, Any] = {"b64_json": im.b64_json}
            if im.revised_prompt is not None:
                item["revised_prompt"] = im.revised_prompt
            data.append(item)
        # Brief contract 1, built as the diffusers worker builds it; seeds are null
        # where the provider takes none.
        prov = provenance(self.backend.model, None, made.seeds, made.cost_usd)
        return web.json_response(
            {
                "created": int(self.wall()),
                "data": data,
                "model": self.backend.model,
                "pool": self.cfg.pool,
                "modelfleet": prov,
            },
            headers={
                **provenance_headers(prov),
                # The router's canary latency: the adapter's wall time per image.
                "X-ModelFleet-Service-Time": f"{elapsed_s / max(1, len(made.images)):.6f}",
            },
        )

    # ----- shutdown -----------------------------------------------------------------

    async def drain(self) -> None:
        self.state = "draining"
        self.metrics.ready.set(0)
        try:
            await asyncio.wait_for(self._idle.wait(), self.cfg.drain_timeout_s)
        except TimeoutError:
            log.warning("drain timed out with %d requests open", self._active)


# ----- process -------------------------------------------------------------------------


async def _serve_forever(cfg: HostedConfig, backend: ProviderBackend, key: str) -> int:
    server = HostedServer(cfg, backend, key, load_table())
    runner = web.AppRunner(server.app(), access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, cfg.host, cfg.port).start()
    log.info(
        "adapter %s/%s listening on %s:%d (pool %s)",
        backend.name,
        backend.model,
        cfg.host,
        cfg.port,
        cfg.pool,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("SIGTERM: draining")
    await server.drain()
    await runner.cleanup()
    return 0


def serve_hosted(cfg: HostedConfig) -> int:
    logging.basicConfig(
        level=os.environ.get("MODELFLEET_WORKER_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    key = os.environ.get(API_KEY_ENV, "")
    if not key:
        log.error("refusing to start: %s is not set (the provider API key)", API_KEY_ENV)
        return EXIT_BAD_CONFIG
    try:
        backend = make_backend(
            cfg.backend, BackendSettings(cfg.provider_model, cfg.endpoint, cfg.provider_defaults)
        )
    except ValueError as exc:
        log.error("refusing to start: %s", exc)
        return EXIT_BAD_CONFIG
    return asyncio.run(_serve_forever(cfg, backend, key))
