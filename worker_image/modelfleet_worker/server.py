"""HTTP server: OpenAI Images-compatible generations and edits, health, readiness, metrics.

The process around it (OCR pool, model load, SIGTERM drain) is lifecycle.py.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiohttp import web

from modelfleet_common.errors import error_body

from .batching import BatchKey
from .config import WorkerConfig
from .engine import Engine, Job, JobResult, QueueFullError
from .faults import FaultInjector, FaultSettings
from .memory import margin_bytes, memory_batch_cap, scaled_profile
from .metrics import WorkerMetrics, endpoint_of
from .prompts import PromptGuard, encoders_of
from .response import (
    encode_image,
    image_item,
    model_revision,
    provenance,
    provenance_headers,
    service_cost_usd,
    text_summary_headers,
)
from .validation import (
    MAX_BODY_BYTES,
    GenerationRequest,
    Limits,
    RequestError,
    parse_body,
)
from .verify import FAILED, Verification, VerifyPool

log = logging.getLogger("modelfleet_worker.server")

_STATUS_CODES = {
    400: "invalid_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    429: "queue_full",
    500: "internal_error",
    503: "unavailable",
    507: "insufficient_memory",
}


def error_response(
    status: int, code: str, message: str, param: str | None = None, **headers: str
) -> web.Response:
    return web.json_response(
        error_body(code, message, param),
        status=status,
        headers=headers or None,
    )


class WorkerServer:
    def __init__(self, cfg: WorkerConfig, verifier: VerifyPool | None = None) -> None:
        self.cfg = cfg
        self.verifier = verifier  # None: verification off
        self.state = "loading"  # loading -> ready -> draining
        self.metrics = WorkerMetrics(cfg.pool, cfg.model, cfg.family)
        self.faults = FaultInjector(
            FaultSettings(cfg.fault_latency_ms, cfg.fault_error_rate, cfg.fault_oom_above_batch),
            cfg.fault_seed,
        )
        self.metrics.fault_latency.set(cfg.fault_latency_ms)
        self.metrics.fault_error_rate.set(cfg.fault_error_rate)
        self.metrics.fault_oom.set(cfg.fault_oom_above_batch)
        self.model: Any = None  # pipeline.LoadedModel once loaded
        self.engine: Engine | None = None
        self.limits: Limits | None = None
        self.prompts = PromptGuard([], cfg.truncate)
        self._idle_free = 0
        self._active = 0
        self._active_zero = asyncio.Event()
        self._cpu_per_image: dict[int, float] = {}  # id(Job) -> CPU s (service_clock cpu)
        self._revision = model_revision(cfg.model, cfg.revision)
        self._active_zero.set()

    # ----- app wiring -------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[self._errors])
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics_handler)
        app.router.add_post("/v1/images/generations", self.generate)
        app.router.add_post("/v1/images/edits", self.edit)
        return app

    @web.middleware
    async def _errors(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        # Every error a client sees is JSON, including aiohttp's own 404/405/413.
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            if exc.status == 413:
                self._count(request, "too_large")
            code = _STATUS_CODES.get(exc.status, "http_error")
            return error_response(exc.status, code, exc.reason)
        except Exception:
            log.exception("unhandled error on %s", request.path)
            self._count(request, "error")
            return error_response(500, "internal_error", "internal error; see worker logs")

    # ----- model lifecycle ---------------------------------------------------

    def attach_model(self, model: Any) -> None:
        from .pipeline import is_oom

        self.model = model
        # The pipeline's own tokenizers (none for a test backend without a pipe).
        counter = self.metrics.prompt_truncated
        self.prompts = PromptGuard(
            encoders_of(getattr(model, "pipe", None)),
            self.cfg.truncate,
            lambda encoder: counter.labels(encoder=encoder).inc(),
        )
        self.limits = Limits(
            max_resolution=self.cfg.max_resolution,
            max_steps=self.cfg.max_steps,
            size_multiple=model.compat.size_multiple,
            default_width=model.default_width,
            default_height=model.default_height,
            default_steps=min(getattr(model, "default_steps", 20), self.cfg.max_steps),
            default_guidance=getattr(model, "default_guidance", 7.5),
            supports_negative_prompt=model.supports_negative_prompt,
        )

        def runner(key: BatchKey, jobs: Sequence[Job]) -> list[Any]:
            from .pipeline import ItemSpec

            specs = [
                ItemSpec(j.prompt, j.negative_prompt, j.seed, j.text, j.image, j.mask) for j in jobs
            ]
            c0 = time.thread_time()  # this runs on the inference thread
            images: list[Any]
            if key.mode == "generate":
                images = model.generate(specs, key.width, key.height, key.steps, key.guidance_scale)
            else:
                images = model.edit(
                    specs,
                    key.width,
                    key.height,
                    key.steps,
                    key.guidance_scale,
                    key.strength,
                    key.mode == "inpaint",
                )
            if self.cfg.service_clock == "cpu":
                # Neighbours on shared cores stretch wall time, not this thread's CPU time.
                if len(self._cpu_per_image) > 10_000:  # entries of abandoned requests
                    self._cpu_per_image.clear()
                per = (time.thread_time() - c0) / max(1, len(jobs))
                self._cpu_per_image.update((id(j), per) for j in jobs)
            return images

        self.engine = Engine(
            runner=runner,
            is_oom=is_oom,
            on_oom=model.empty_cache,
            cap_for=self.cap_for,
            max_latency_s=self.cfg.max_latency_ms / 1000.0,
            max_queue=self.cfg.max_queue,
            hooks=self,
        )
        self.engine.start()
        if model.on_cuda:
            self.metrics.bind_gpu(model.free_memory)
        if model.profile is not None:
            self.metrics.per_image_bytes.labels(source="cuda_allocator").set(
                model.profile.per_image_bytes
            )
        elif model.cpu_memory is not None:
            delta = model.cpu_memory.rss_peak_delta_2 - model.cpu_memory.rss_peak_delta_1
            self.metrics.per_image_bytes.labels(source="cpu_rss_delta").set(max(0, delta))
        self.metrics.batch_cap.set(
            self.cap_for(BatchKey(model.default_width, model.default_height, 20, 7.5, False))
        )

    def cap_for(self, key: BatchKey) -> int:
        """Batch cap for a bucket; on GPU bounded by free memory right now."""
        model = self.model
        if not (model is not None and model.on_cuda and self.cfg.memory_aware and model.profile):
            return self.cfg.max_batch_size
        free, total = model.free_memory()
        self._idle_free = free
        per, fixed = scaled_profile(model.profile, key.width * key.height)
        margin = margin_bytes(total, self.cfg.memory_margin_fraction)
        cap = memory_batch_cap(free, per, fixed, margin, self.cfg.max_batch_size)
        return max(1, cap)  # 0 means "alone"; admission already turned away what cannot fit

    def fits_alone(self, req: GenerationRequest) -> bool:
        model = self.model
        if not (model is not None and model.on_cuda and self.cfg.memory_aware and model.profile):
            return True
        free, total = model.free_memory()
        free = max(free, self._idle_free)  # a running batch's memory comes back
        per, fixed = scaled_profile(model.profile, req.width * req.height)
        margin = margin_bytes(total, self.cfg.memory_margin_fraction)
        return memory_batch_cap(free, per, fixed, margin, 1) >= 1

    # ----- EngineHooks --------------------------------------------------------

    def on_batch(self, size: int) -> None:
        self.metrics.batch_size.observe(size)

    def on_queue_waits(self, waits: Sequence[float]) -> None:
        for w in waits:
            self.metrics.queue_wait.observe(w)

    def on_oom(self, ooms: int, splits: int) -> None:
        self.metrics.oom.inc(ooms)
        self.metrics.splits.inc(splits)

    def on_depth(self, queued: int, in_flight: int) -> None:
        self.metrics.queue_depth.set(queued)
        self.metrics.in_flight.set(in_flight)

    # ----- handlers ----------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "alive", "state": self.state})

    async def readyz(self, request: web.Request) -> web.Response:
        status = 200 if self.state == "ready" else 503
        return web.json_response({"status": self.state}, status=status)

    async def metrics_handler(self, request: web.Request) -> web.Response:
        body = self.metrics.render()
        return web.Response(body=body, headers={"Content-Type": self.metrics.content_type})

    def _count(self, request: web.Request, outcome: str) -> None:
        self.metrics.requests.labels(endpoint=endpoint_of(request.path), outcome=outcome).inc()

    async def generate(self, request: web.Request) -> web.Response:
        return await self._admitted(request, self._generate)

    async def edit(self, request: web.Request) -> web.Response:
        return await self._admitted(request, self._edit)

    async def _admitted(
        self,
        request: web.Request,
        handler: Callable[[web.Request, Engine, Limits], Awaitable[web.Response]],
    ) -> web.Response:
        if self.state != "ready" or self.engine is None or self.limits is None:
            self._count(request, "unavailable")
            why = "draining for shutdown" if self.state == "draining" else "model is loading"
            return error_response(503, "unavailable", f"worker not ready: {why}", None)
        self._active += 1
        self._active_zero.clear()
        t0 = time.perf_counter()
        try:
            return await handler(request, self.engine, self.limits)
        finally:
            self.metrics.request_duration.labels(endpoint=endpoint_of(request.path)).observe(
                time.perf_counter() - t0
            )
            self._active -= 1
            if self._active == 0:
                self._active_zero.set()

    def _rejected(self, request: web.Request, exc: RequestError) -> web.Response:
        self._count(request, "too_large" if exc.status == 413 else "invalid")
        return web.json_response(exc.body(), status=exc.status)

    async def _generate(self, request: web.Request, engine: Engine, limits: Limits) -> web.Response:
        from .validation import validate_request

        try:
            req = validate_request(parse_body(await request.read()), limits)
            cut = await self._prompt_headers(req.prompt)
        except RequestError as exc:
            return self._rejected(request, exc)
        seed = req.seed if req.seed is not None else secrets.randbelow(2**32 - 8)
        jobs = [
            Job(req.prompt, req.negative_prompt, seed + i, req.expected_text) for i in range(req.n)
        ]
        key = BatchKey(
            req.width, req.height, req.steps, req.guidance_scale, req.negative_prompt is not None
        )
        resp = await self._render(request, engine, req, key, jobs)
        resp.headers.update(cut)
        return resp

    async def _prompt_headers(self, prompt: str) -> dict[str, str]:
        if not self.prompts.encoders:  # a backend without tokenizers: no thread hop
            return {}
        # Tokenizing a 4000-char prompt with three encoders takes ~20 ms: off the loop.
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self.prompts.headers, prompt)

    async def _edit(self, request: web.Request, engine: Engine, limits: Limits) -> web.Response:
        from .edits import validate_edit
        from .multipart import read_edit_form

        if not callable(getattr(self.model, "edit_unsupported", None)):
            self._count(request, "invalid")
            return error_response(
                400, "unsupported_endpoint", "this worker's backend does not support edits", None
            )
        try:
            form = await read_edit_form(request, self.cfg.max_upload_bytes)
            # Decoding a large upload takes a while: off the event loop.
            loop = asyncio.get_running_loop()
            ed = await loop.run_in_executor(None, validate_edit, form.fields, form.files, limits)
            cut = await self._prompt_headers(ed.gen.prompt)
        except RequestError as exc:
            return self._rejected(request, exc)
        unsupported = self.model.edit_unsupported(ed.mask is not None)
        if unsupported is not None:
            self._count(request, "invalid")
            param = "mask" if ed.mask is not None else "image"
            return error_response(400, "unsupported_edit", f"cannot edit: {unsupported}", param)
        req = ed.gen
        seed = req.seed if req.seed is not None else secrets.randbelow(2**32 - 8)
        jobs = [
            Job(req.prompt, req.negative_prompt, seed + i, req.expected_text, ed.image, ed.mask)
            for i in range(req.n)
        ]
        mode = "inpaint" if ed.mask is not None else "image2image"
        key = BatchKey(
            req.width,
            req.height,
            req.steps,
            req.guidance_scale,
            req.negative_prompt is not None,
            mode,
            ed.strength,
        )
        # Diffusers denoises int(steps x strength) of the steps for an edit.
        steps_run = max(1, int(req.steps * ed.strength))
        resp = await self._render(request, engine, req, key, jobs, steps_run)
        resp.headers.update(cut)
        return resp

    async def _render(
        self,
        request: web.Request,
        engine: Engine,
        req: GenerationRequest,
        key: BatchKey,
        jobs: list[Job],
        steps_run: int | None = None,
    ) -> web.Response:
        if self.faults.should_fail():
            self._count(request, "injected_error")
            return error_response(
                500, "injected_fault", "injected error (MODELFLEET_WORKER_FAULT_ERROR_RATE drill)"
            )
        if not self.fits_alone(req):
            self._count(request, "insufficient_memory")
            return error_response(
                507,
                "insufficient_memory",
                f"a single {req.width}x{req.height} image does not fit in free GPU memory",
                "size",
            )
        backlog = self.verifier.backlog if self.verifier and req.expected_text else 0
        if backlog + req.n > self.cfg.max_queue:
            # OCR slower than the model: push back here rather than hold images unbounded.
            self._count(request, "rejected_queue_full")
            return error_response(
                429,
                "queue_full",
                f"text verification backlog holds {backlog} of {self.cfg.max_queue} images",
                None,
                **{"Retry-After": str(engine.retry_after_s())},
            )
        try:
            futures = engine.submit(key, jobs)
        except QueueFullError as exc:
            self._count(request, "rejected_queue_full")
            return error_response(
                429, "queue_full", str(exc), None, **{"Retry-After": str(engine.retry_after_s())}
            )
        results: list[JobResult] = list(await asyncio.gather(*futures))
        if self.faults.added_latency_s > 0:
            await asyncio.sleep(self.faults.added_latency_s)
        failed = [r for r in results if r.error is not None]
        if failed:
            self._count(request, "insufficient_memory")
            return error_response(
                507,
                "insufficient_memory",
                f"out of GPU memory even at batch size 1 for {req.width}x{req.height}: "
                f"{failed[0].error}",
                "size",
            )
        loop = asyncio.get_running_loop()
        # OCR (its own pool) and PNG encoding run side by side, off the batch loop.
        fmt, compression = req.output_format, req.output_compression
        pngs, checks = await asyncio.gather(
            asyncio.gather(
                *(
                    loop.run_in_executor(None, encode_image, r.image, fmt, compression)
                    for r in results
                )
            ),
            self._verify([r.image for r in results], req.expected_text, req.min_word_accuracy),
        )
        self.metrics.images.labels(endpoint=endpoint_of(request.path)).inc(len(results))
        self._count(request, "ok")
        inference_ms = max(r.inference_s for r in results) * 1000.0
        # The router reads this header (never the body) to judge canaries on service time.
        per_image_s = sum(r.inference_s / max(1, r.batch_size) for r in results) / len(results)
        if self.cfg.service_clock == "cpu":
            cpu = [self._cpu_per_image.pop(id(j), None) for j in jobs]
            if None not in cpu:
                per_image_s = sum(c for c in cpu if c is not None) / len(cpu)
        cost = service_cost_usd(per_image_s, len(results), self.cfg.gpu_hour_price, self.cfg.gpus)
        prov = provenance(self.cfg.model, self._revision, [j.seed for j in jobs], cost)
        self.metrics.cost_usd.inc(cost)
        for _ in results:
            self.metrics.cost_per_image.observe(cost / len(results))
        return web.json_response(
            {
                "created": int(time.time()),
                "data": [
                    image_item(png, job.seed, check)
                    for png, job, check in zip(pngs, jobs, checks, strict=True)
                ],
                "timing": {
                    "queue_wait_ms": round(max(r.queue_wait_s for r in results) * 1000.0, 3),
                    "batch_size": max(r.batch_size for r in results),
                    "inference_ms": round(inference_ms, 3),
                    "per_step_ms": round(inference_ms / (steps_run or req.steps), 3),
                },
                "model": self.cfg.model,
                "pool": self.cfg.pool,
                "output_format": fmt,
                "size": f"{req.width}x{req.height}",
                "modelfleet": prov,
            },
            headers={
                **provenance_headers(prov),
                "X-ModelFleet-Service-Time": f"{per_image_s:.6f}",
                "X-ModelFleet-Batch-Size": str(max(r.batch_size for r in results)),
                **text_summary_headers(checks),
            },
        )

    async def _verify(
        self, images: Sequence[Any], expected: tuple[str, ...], threshold: float | None = None
    ) -> list[Verification | None]:
        if self.verifier is None or not expected:
            return [None] * len(images)  # nothing asked for: neither pass nor fail
        v = self.verifier
        checks = await asyncio.gather(*(v.verify(im, expected, threshold) for im in images))
        for c in checks:
            self.metrics.ocr_seconds.observe(c.ocr_s)
            if c.score is None:
                self.metrics.text_unreadable.inc()
                continue
            self.metrics.text_verified.inc()
            self.metrics.text_word_accuracy.observe(c.score.word_accuracy)
            if c.status == FAILED:
                self.metrics.text_failed.inc()
        return list(checks)

    # ----- shutdown ----------------------------------------------------------

    async def drain(self) -> None:
        """Stop admitting, finish queued and running batches, let responses go out."""
        self.state = "draining"
        self.metrics.ready.set(0)
        deadline = time.monotonic() + self.cfg.drain_timeout_s
        if self.engine is not None:
            done = await self.engine.drain(self.cfg.drain_timeout_s)
            if not done:
                log.warning("drain timed out with %d images queued", self.engine.queued)
        left = max(0.0, deadline - time.monotonic())
        try:
            await asyncio.wait_for(self._active_zero.wait(), left)
        except TimeoutError:
            log.warning("drain timed out with %d requests still open", self._active)
