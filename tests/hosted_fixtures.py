"""The real adapter process as a worker_fixtures.Worker (its request/metric/log helpers),
for hosted-adapter tests; serve the stand-in with modelfleet_dev.standins.common.in_thread."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import worker_fixtures
from worker_fixtures import Worker, free_port


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
