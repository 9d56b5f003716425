"""Helpers for tests and benchmarks: run the real router as a subprocess on loopback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import yaml

NO_AUTH = ("--client-auth", "off")  # local tests and benchmarks: every client served


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def write_config(
    path: Path, policies: list[dict[str, Any]], endpoints: dict[str, list[str]]
) -> Path:
    path.write_text(yaml.safe_dump({"policies": policies, "endpoints": endpoints}))
    return path


def policy(
    routes: list[dict[str, Any]],
    name: str = "main",
    admission: dict[str, Any] | None = None,
    status_routes: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A RoutingPolicy as a user writes it; status_routes sets weights as the operator would."""
    spec: dict[str, Any] = {"routes": routes}
    if admission:
        spec["admission"] = admission
    doc: dict[str, Any] = {
        "apiVersion": "modelfleet.io/v1alpha1",
        "kind": "RoutingPolicy",
        "metadata": {"name": name},
        "spec": spec,
    }
    if status_routes is not None:
        doc["status"] = {"routes": status_routes}
    return doc


class RouterProcess:
    """`modelfleet router` on 127.0.0.1, a free port, logs kept for failures. With `config`
    it serves that static file; without, `args` must name a source (`--kube ...`)."""

    def __init__(
        self, config: Path | None, args: Sequence[str] = (), port: int | None = None
    ) -> None:
        self.config = config
        self.args = list(args)
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @staticmethod
    def kube(
        namespace: str, kubeconfig: Path, *args: str, port: int | None = None
    ) -> RouterProcess:
        """A router (not yet started) that reads `namespace`'s policies from the API server."""
        source = ["--kube", "--namespace", namespace, "--kubeconfig", str(kubeconfig)]
        return RouterProcess(None, [*source, *args], port=port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 30.0) -> RouterProcess:
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 (lives until __exit__)
        # Tests and benchmarks run without client keys unless they pass --client-auth
        # (the router's default, and the chart's, is keys: docs/clients.md).
        auth = [] if any(a.startswith("--client-auth") for a in self.args) else NO_AUTH
        cmd = [
            sys.executable, "-m", "modelfleet.cli", "router",
            "--host", "127.0.0.1", "--port", str(self.port),
            *(["--config", str(self.config)] if self.config else []), *auth, *self.args,
        ]  # fmt: skip
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"router exited {self.proc.returncode}:\n{self.logs()}")
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=1) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"router not ready in {timeout_s}s:\n{self.logs()}")

    def logs(self) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> RouterProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if self._log is not None:
            self._log.close()
