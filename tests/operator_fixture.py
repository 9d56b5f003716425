"""Run the real operator as a subprocess against the local cluster."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

LEASE_NAMESPACE = "kube-system"


@dataclass
class OperatorProcess:
    kubeconfig: Path
    log_dir: Path
    identity: str
    extra_args: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"operator-{self.identity}.log"

    def start(self) -> OperatorProcess:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "PYTHONUNBUFFERED": "1"}
        out = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "modelfleet.cli",
                "operator",
                "--id",
                self.identity,
                "--lease-namespace",
                LEASE_NAMESPACE,
                "--lease-seconds",
                "6",
                *self.extra_args,
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        out.close()
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def has_led(self) -> bool:
        """True once this process has acquired the lease at least once."""
        return f"acquired leadership as {self.identity}" in self.log()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)


@dataclass
class OperatorManager:
    """Keeps exactly one operator identity 'main' running for the session."""

    kubeconfig: Path
    log_dir: Path
    main: OperatorProcess | None = None
    counter: int = 0
    # Extra arguments of every 'main' started from now on (opt-in, empty by default): the
    # e2e fleet sets its operator credential here, so a restarted main keeps it.
    main_args: list[str] = field(default_factory=list)

    def spawn(
        self, identity: str | None = None, extra_args: list[str] | None = None
    ) -> OperatorProcess:
        self.counter += 1
        ident = identity or f"op-{self.counter}"
        return OperatorProcess(self.kubeconfig, self.log_dir, ident, extra_args or []).start()

    def ensure_running(self) -> OperatorProcess:
        if self.main is None or not self.main.alive:
            self.main = self.spawn(extra_args=list(self.main_args))
        return self.main

    def stop_all(self) -> None:
        if self.main is not None:
            self.main.kill(signal.SIGTERM)
