"""Helpers for worker tests: a tiny model per session, a real worker subprocess."""

from __future__ import annotations

import atexit
import base64
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from polling import wait_for

_MODELS: dict[str, Path] = {}
_ROOT = Path(tempfile.mkdtemp(prefix="mf-worker-tests-"))
atexit.register(shutil.rmtree, _ROOT, True)


# Every tiny model the worker tests use, written by one subprocess: importing
# diffusers costs several seconds, so it is paid once.
_SPECS = {"base": {}, "vae8": {"vae_latent_channels": 8}}


def tiny_model_dir(name: str = "base") -> Path:
    if not _MODELS:
        script = (
            "import sys, json\n"
            "from modelfleet_worker.tiny import TinySpec, write_tiny_pipeline\n"
            "for name, kw in json.loads(sys.argv[2]).items():\n"
            "    write_tiny_pipeline(sys.argv[1] + '/' + name, TinySpec(**kw))\n"
        )
        subprocess.run(
            [sys.executable, "-c", script, str(_ROOT), json.dumps(_SPECS)],
            check=True,
            capture_output=True,
            env=_env({}),
            timeout=180,
        )
        _MODELS.update({n: _ROOT / n for n in _SPECS})
    return _MODELS[name]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(overrides: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELFLEET_WORKER_")}
    env.update(
        {
            "MODELFLEET_WORKER_CPU_THREADS": "1",  # 2 shared cores: avoid OpenMP spinning
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(overrides)
    return env


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        raw: bytes | None = None,
        timeout: float = 60,
    ) -> tuple[int, dict[str, str], bytes]:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def generate(self, body: Any, **kw: Any) -> tuple[int, dict[str, Any]]:
        status, _, data = self.request("POST", "/v1/images/generations", body=body, **kw)
        return status, json.loads(data)

    def metrics(self) -> str:
        return self.request("GET", "/metrics")[2].decode()

    def metric(self, name: str) -> float:
        for line in self.metrics().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        raise KeyError(name)

    def wait_ready(self, timeout: float = 90) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited {self.proc.returncode}:\n{self.log()}")
            try:
                return self.request("GET", "/readyz", timeout=2)[0] == 200
            except OSError:
                return False

        try:
            wait_for(ready, timeout=timeout, what="worker /readyz 200")
        except AssertionError as exc:
            raise TimeoutError(f"{exc}:\n{self.log()}") from None

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_worker(model: Path | str, **settings: Any) -> Worker:
    """`model`: a directory, or (a str) any model URI the worker takes."""
    port = free_port()
    overrides = {
        "MODELFLEET_WORKER_MODEL": model if isinstance(model, str) else f"file://{model}",
        "MODELFLEET_WORKER_HOST": "127.0.0.1",
        "MODELFLEET_WORKER_PORT": str(port),
        "MODELFLEET_WORKER_POOL": "test-pool",
    }
    for k, v in settings.items():
        overrides["MODELFLEET_WORKER_" + k.upper()] = str(v)
    log_path = _ROOT / f"worker-{port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "modelfleet_worker.cli", "serve"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=_env(overrides),
        )
    return Worker(proc, port, log_path, overrides)


def start_text_worker(log_dir: Path, pool: str, corruption_rate: float) -> Worker:
    """The text-drawing backend (modelfleet_dev.textrender): renders the OCR can read,
    a share `corruption_rate` of them with mangled letters."""
    port = free_port()
    overrides = {
        "MODELFLEET_WORKER_HOST": "127.0.0.1",
        "MODELFLEET_WORKER_PORT": str(port),
        "MODELFLEET_WORKER_POOL": pool,
        "MODELFLEET_WORKER_MAX_LATENCY_MS": "10",
    }
    log_path = log_dir / f"{pool}.log"
    cmd = [sys.executable, "-m", "modelfleet_dev.textrender"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [*cmd, "--corruption-rate", str(corruption_rate)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=_env(overrides),
        )
    return Worker(proc, port, log_path, overrides)


@contextmanager
def running_text_workers(
    log_dir: Path, corruption_rates: dict[str, float]
) -> Iterator[dict[str, Worker]]:
    """Text-drawing workers by pool name (start_text_worker), all ready; stopped on exit."""
    workers = {pool: start_text_worker(log_dir, pool, r) for pool, r in corruption_rates.items()}
    try:
        for w in workers.values():
            w.wait_ready()
        yield workers
    finally:
        for w in workers.values():
            w.stop()


@contextmanager
def running_worker(model: Path | str, **settings: Any) -> Iterator[Worker]:
    w = start_worker(model, **settings)
    try:
        w.wait_ready()
        yield w
    finally:
        w.stop()


def decode_png(b64: str) -> Any:
    from PIL import Image

    return Image.open(io.BytesIO(base64.b64decode(b64)))
