"""Run the real worker in adapter mode (`modelfleet-worker serve --backend TYPE
--provider-model NAME --endpoint URL`) as a subprocess on loopback, pointed at a
stand-in, with the key only in MODELFLEET_PROVIDER_API_KEY, and its log kept so tests
can check what it wrote (the key must never be in it)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_MAIN = "import sys; from modelfleet_worker.cli import main; sys.exit(main())"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Adapter:
    backend: str
    provider_model: str
    endpoint: str
    api_key: str
    env: dict[str, str] = field(default_factory=dict)  # extra MODELFLEET_WORKER_* settings
    port: int = 0
    pool: str = "hosted"
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path = field(default_factory=lambda: Path(tempfile.mkstemp(suffix=".log")[1]))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        args = [sys.executable, "-c", _MAIN, "serve", "--backend", self.backend]
        args += ["--provider-model", self.provider_model, "--endpoint", self.endpoint]
        return [*args, "--host", "127.0.0.1", "--port", str(self.port), "--pool", self.pool]

    def start(self, timeout: float = 30.0) -> Adapter:
        self.port = self.port or free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("MODELFLEET_WORKER_")}
        env.update({"MODELFLEET_PROVIDER_API_KEY": self.api_key, "PYTHONUNBUFFERED": "1"})
        env.update(self.env)
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(self.command(), env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"adapter exited {self.proc.returncode}: {self.log()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=1):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"adapter did not listen within {timeout}s: {self.log()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str) -> tuple[int, dict[str, str], bytes]:
        try:
            with urllib.request.urlopen(f"{self.url}{path}", timeout=10) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def generate(
        self, body: dict[str, Any], timeout: float = 60.0
    ) -> tuple[int, dict[str, str], Any]:
        """POST /v1/images/generations: (status, headers, JSON body)."""
        data = json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.url}/v1/images/generations",
            data=data,
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as r:
                return r.status, dict(r.headers), json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), json.loads(e.read() or b"null")
