"""The worker process: the OCR pool, the model loaded on a thread while the server
already answers /healthz, ready once loaded, SIGTERM drains. The HTTP server is server.py."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from .config import WorkerConfig
from .server import WorkerServer
from .verify import VerifyPool

log = logging.getLogger("modelfleet_worker.server")  # the server's logger: log lines as before

# Builds the model the server runs (default: load_diffusers).
Loader = Callable[[WorkerConfig], Any]
EXIT_BAD_CONFIG = 2
EXIT_LOAD_FAILED = 3


def load_diffusers(cfg: WorkerConfig) -> Any:
    """The product's loader: fetch, load and warm up the diffusers pipeline."""
    from .fetch import fetch
    from .pipeline import configure_torch, load_model

    configure_torch(cfg)
    model_dir = fetch(cfg.model, cfg.cache_dir, cfg.revision)
    vae_dir: Path | None = fetch(cfg.vae, cfg.cache_dir) if cfg.vae else None
    model = load_model(cfg, model_dir, vae_dir)
    if cfg.warmup:
        model.warm_up()
    return model


def start_verifier(cfg: WorkerConfig) -> VerifyPool | None:
    """The OCR pool, or None when verification is off. Raises OcrUnavailableError."""
    if not cfg.verify:
        return None
    return VerifyPool(cfg.verify_engine, cfg.verify_workers, cfg.verify_min_word_accuracy)


async def _serve(cfg: WorkerConfig, loader: Loader) -> int:
    from .fetch import FetchError
    from .ocr import OcrUnavailableError

    try:
        verifier = start_verifier(cfg)
    except OcrUnavailableError as err:
        log.error(
            "refusing to start: verification is on (MODELFLEET_WORKER_VERIFY) but %s; "
            "or turn it off with --verify=false",
            err,
        )
        return EXIT_BAD_CONFIG
    server = WorkerServer(cfg, verifier)
    runner = web.AppRunner(server.app(), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, cfg.host, cfg.port)
    await site.start()
    log.info("listening on %s:%d (pool %s)", cfg.host, cfg.port, cfg.pool)

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    loaded: asyncio.Future[Any] = loop.create_future()

    def load() -> None:
        # A plain daemon thread: SIGTERM during a multi-minute load must not wait for it.
        t0 = time.perf_counter()
        try:
            model = loader(cfg)
            server.metrics.load_seconds.set(time.perf_counter() - t0)
        except BaseException as exc:
            _post(loop, _set_exc, loaded, exc)
        else:
            _post(loop, _set_result, loaded, model)

    threading.Thread(target=load, name="model-load", daemon=True).start()
    stop_wait = loop.create_task(stop.wait())
    await asyncio.wait({loaded, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
    if not loaded.done():
        log.info("signal received while loading: exiting")
        await runner.cleanup()
        return 0
    exc = loaded.exception()
    if exc is not None:
        kind = "cannot fetch model" if isinstance(exc, FetchError) else "cannot load model"
        log.error("refusing to start: %s: %s", kind, exc)
        await runner.cleanup()
        stop_wait.cancel()
        return EXIT_LOAD_FAILED
    server.attach_model(loaded.result())
    server.state = "ready"
    server.metrics.ready.set(1)
    log.info("ready")
    await stop_wait
    log.info("SIGTERM: draining")
    await server.drain()
    if server.engine is not None:
        await server.engine.close()
    if verifier is not None:
        verifier.close()
    await runner.cleanup()
    log.info("drained; exiting")
    return 0


def _post(loop: asyncio.AbstractEventLoop, fn: Callable[..., None], *args: Any) -> None:
    # RuntimeError: the loop closed because we were told to stop while loading.
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(fn, *args)


def _set_result(fut: asyncio.Future[Any], value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _set_exc(fut: asyncio.Future[Any], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)


def serve(cfg: WorkerConfig, loader: Loader | None = None) -> int:
    """Serve until SIGTERM. `loader` builds the model (default: diffusers); the
    dev tools pass a text-drawing one (modelfleet_dev.textrender)."""
    logging.basicConfig(
        level=os.environ.get("MODELFLEET_WORKER_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    code = asyncio.run(_serve(cfg, loader or load_diffusers))
    if code == 0 and any(t.name == "model-load" for t in threading.enumerate()):
        # The load thread may be inside torch; interpreter teardown under it can crash.
        os._exit(0)
    return code
