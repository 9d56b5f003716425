"""Helpers for hosted-adapter tests: a provider stand-in serving from its own thread
(sync tests script it and read what it saw) and the real adapter process."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from typing import Any

import worker_fixtures
from modelfleet_dev.standins.common import StandIn
from worker_fixtures import Worker, free_port


class Threaded:
    """Runs `standin` on an event loop in a daemon thread until stop()."""

    def __init__(self, standin: StandIn) -> None:
        self.s = standin
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(standin.start(), self.loop).result(10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.s.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def start_adapter(
    backend: str, model: str, endpoint: str, key: str, wait: bool = True, **settings: Any
) -> Worker:
    """`modelfleet-worker serve --backend B --provider-model M --endpoint E`, the key in
    MODELFLEET_PROVIDER_API_KEY, other settings as MODELFLEET_WORKER_<NAME> env vars."""
    port = free_port()
    env = {
        "MODELFLEET_WORKER_HOST": "127.0.0.1",
        "MODELFLEET_WORKER_PORT": str(port),
        "MODELFLEET_WORKER_POOL": "hosted-test",
        "MODELFLEET_PROVIDER_API_KEY": key,
        **{"MODELFLEET_WORKER_" + k.upper(): str(v) for k, v in settings.items()},
    }
    log_path = worker_fixtures._ROOT / f"adapter-{port}.log"
    cmd = [sys.executable, "-m", "modelfleet_worker.cli", "serve", "--backend", backend]
    cmd += ["--provider-model", model, "--endpoint", endpoint]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=worker_fixtures._env(env)
        )
    w = Worker(proc, port, log_path, env)
    if wait:
        w.wait_ready(timeout=30)
    return w
