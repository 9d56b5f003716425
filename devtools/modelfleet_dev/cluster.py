"""The local control plane: real etcd, kube-apiserver, controller-manager,
scheduler and kwok as processes on loopback, plus the local pod runner.

State (certificates, etcd data, logs, pids) lives in one directory outside the
repository; `up` reuses a healthy cluster and replaces a half-started one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from modelfleet_dev import binaries, pki

APISERVER_PORT_DEFAULT = 16443

# Pods live in a network namespace of our own: EndpointSlices refuse loopback
# addresses, so pod IPs come from a private range that exists only inside
# that namespace, reached from the host through a veth pair.
NETNS = os.environ.get("MODELFLEET_DEV_NETNS", "modelfleet-pods")
HOST_VETH, POD_VETH = "mf-host", "mf-pods"
POD_NETWORK = "10.250.0.0/15"
POD_GATEWAY = "10.251.255.254"
# Linux flushes a device's routes when its last IPv4 address goes; this one stays.
POD_ANCHOR = "10.251.255.253"


class ClusterError(RuntimeError):
    """Something a person must fix; the message says what."""


@dataclass(frozen=True)
class Ports:
    etcd_client: int
    etcd_peer: int
    apiserver: int
    controller_manager: int
    scheduler: int
    kwok: int

    @classmethod
    def from_env(cls) -> Ports:
        offset = int(os.environ.get("MODELFLEET_DEV_PORT_OFFSET", "0"))
        return cls(
            etcd_client=23790 + offset,
            etcd_peer=23800 + offset,
            apiserver=APISERVER_PORT_DEFAULT + offset,
            controller_manager=20257 + offset,
            scheduler=20259 + offset,
            kwok=20247 + offset,
        )


def state_dir() -> Path:
    env = os.environ.get("MODELFLEET_DEV_HOME")
    return Path(env).expanduser() if env else binaries.cache_root() / "cluster"


@dataclass
class Paths:
    root: Path = field(default_factory=state_dir)

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def etcd_data(self) -> Path:
        return self.root / "etcd-data"

    @property
    def kubeconfig(self) -> Path:
        return self.root / "kubeconfig"

    @property
    def state(self) -> Path:
        return self.root / "state.json"

    @property
    def kwok_config(self) -> Path:
        return self.root / "kwok.yaml"


def _log(msg: str) -> None:
    print(f"[modelfleet dev] {msg}", file=sys.stderr, flush=True)


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); it is not running.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def terminate(pids: list[int], grace_seconds: float = 15) -> None:
    """SIGTERM each process group in order, then SIGKILL what outlives the grace period."""
    for pid in pids:
        if pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    for pid in pids:
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)


def write_kubeconfig(paths: Paths, ports: Ports) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "modelfleet-dev",
                "cluster": {
                    "server": f"https://127.0.0.1:{ports.apiserver}",
                    "certificate-authority": str(paths.pki / "ca.crt"),
                },
            }
        ],
        "users": [
            {
                "name": "modelfleet-admin",
                "user": {
                    "client-certificate": str(paths.pki / "admin.crt"),
                    "client-key": str(paths.pki / "admin.key"),
                },
            }
        ],
        "contexts": [
            {
                "name": "modelfleet-dev",
                "context": {"cluster": "modelfleet-dev", "user": "modelfleet-admin"},
            }
        ],
        "current-context": "modelfleet-dev",
    }
    paths.kubeconfig.write_text(yaml.safe_dump(config, sort_keys=False))


def _commands(paths: Paths, ports: Ports) -> dict[str, list[str]]:
    b = binaries.binary_path
    p = paths.pki
    kc = str(paths.kubeconfig)
    return {
        "etcd": [
            str(b("etcd")),
            "--name=modelfleet-dev",
            f"--data-dir={paths.etcd_data}",
            f"--listen-client-urls=http://127.0.0.1:{ports.etcd_client}",
            f"--advertise-client-urls=http://127.0.0.1:{ports.etcd_client}",
            f"--listen-peer-urls=http://127.0.0.1:{ports.etcd_peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{ports.etcd_peer}",
            f"--initial-cluster=modelfleet-dev=http://127.0.0.1:{ports.etcd_peer}",
            "--listen-metrics-urls=",
            # A throwaway dev cluster: durability is not worth the fsync latency.
            "--unsafe-no-fsync",
            "--quota-backend-bytes=2147483648",
            "--log-level=warn",
        ],
        "kube-apiserver": [
            str(b("kube-apiserver")),
            f"--etcd-servers=http://127.0.0.1:{ports.etcd_client}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={ports.apiserver}",
            f"--client-ca-file={p / 'ca.crt'}",
            f"--tls-cert-file={p / 'apiserver.crt'}",
            f"--tls-private-key-file={p / 'apiserver.key'}",
            f"--service-account-key-file={p / 'sa.pub'}",
            f"--service-account-signing-key-file={p / 'sa.key'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            "--service-cluster-ip-range=10.96.0.0/16",
            "--authorization-mode=RBAC",
            "--allow-privileged=true",
            "--enable-priority-and-fairness=false",
            "--watch-cache=true",
            "--v=0",
        ],
        "kube-controller-manager": [
            str(b("kube-controller-manager")),
            f"--kubeconfig={kc}",
            f"--authentication-kubeconfig={kc}",
            f"--authorization-kubeconfig={kc}",
            "--bind-address=127.0.0.1",
            f"--secure-port={ports.controller_manager}",
            "--leader-elect=false",
            f"--service-account-private-key-file={p / 'sa.key'}",
            f"--root-ca-file={p / 'ca.crt'}",
            "--use-service-account-credentials=false",
            # No cloud, no kubelets: skip controllers that would only fight kwok.
            "--controllers=*,-nodeipam,-cloud-node-lifecycle,-service-lb-controller",
            "--concurrent-deployment-syncs=10",
            "--concurrent-replicaset-syncs=10",
            "--concurrent-service-endpoint-syncs=10",
            "--kube-api-qps=200",
            "--kube-api-burst=400",
            "--v=0",
        ],
        "kube-scheduler": [
            str(b("kube-scheduler")),
            f"--kubeconfig={kc}",
            f"--authentication-kubeconfig={kc}",
            f"--authorization-kubeconfig={kc}",
            "--bind-address=127.0.0.1",
            f"--secure-port={ports.scheduler}",
            "--leader-elect=false",
            "--kube-api-qps=200",
            "--kube-api-burst=400",
            "--v=0",
        ],
        "kwok": [
            str(b("kwok")),
            f"--kubeconfig={kc}",
            f"--config={paths.kwok_config}",
            "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
            f"--server-address=127.0.0.1:{ports.kwok}",
            "--node-lease-duration-seconds=40",
            "--cidr=10.251.253.0/24",
            "--node-ip=127.0.0.1",
        ],
        "pod-runner": [
            sys.executable,
            "-m",
            "modelfleet_dev.podrunner",
            f"--kubeconfig={kc}",
            f"--log-dir={paths.logs / 'pods'}",
            f"--netns={NETNS}",
            f"--netns-device={POD_VETH}",
        ],
    }


COMPONENT_PORTS = {
    "etcd": ("etcd_client", "etcd_peer"),
    "kube-apiserver": ("apiserver",),
    "kube-controller-manager": ("controller_manager",),
    "kube-scheduler": ("scheduler",),
    "kwok": ("kwok",),
    "pod-runner": (),
}


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def pod_network_ready() -> bool:
    return _ip("-n", NETNS, "link", "show", POD_VETH, check=False).returncode == 0


def setup_pod_network() -> None:
    """Create the pods' network namespace and the veth pair into it (idempotent)."""
    if pod_network_ready():
        return
    if os.geteuid() != 0 or not shutil.which("ip"):
        raise ClusterError(
            "the local pod network needs root and iproute2 (`ip`): pod IPs live in a network "
            "namespace because EndpointSlices refuse loopback addresses"
        )
    teardown_pod_network()
    try:
        _ip("netns", "add", NETNS)
        _ip("link", "add", HOST_VETH, "type", "veth", "peer", "name", POD_VETH)
        _ip("link", "set", POD_VETH, "netns", NETNS)
        _ip("addr", "add", f"{POD_GATEWAY}/15", "dev", HOST_VETH)
        _ip("link", "set", HOST_VETH, "up")
        _ip("-n", NETNS, "link", "set", "lo", "up")
        _ip("-n", NETNS, "link", "set", POD_VETH, "up")
        _ip("-n", NETNS, "addr", "add", f"{POD_ANCHOR}/32", "dev", POD_VETH)
        _ip("-n", NETNS, "route", "add", f"{POD_GATEWAY}/32", "dev", POD_VETH)
        _ip("-n", NETNS, "route", "add", POD_NETWORK, "dev", POD_VETH)
    except subprocess.CalledProcessError as exc:
        raise ClusterError(
            f"creating the pod network failed: {' '.join(exc.cmd)}: {exc.stderr.strip()}"
        ) from exc


def teardown_pod_network() -> None:
    _ip("netns", "del", NETNS, check=False)
    _ip("link", "del", HOST_VETH, check=False)


def _read_state(paths: Paths) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(paths.state.read_text())
        return data
    except (OSError, ValueError):
        return {}


def _write_state(paths: Paths, state: dict[str, Any]) -> None:
    paths.state.write_text(json.dumps(state, indent=2))


def _ssl_context(paths: Paths) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(paths.pki / "ca.crt"))
    ctx.load_cert_chain(str(paths.pki / "admin.crt"), str(paths.pki / "admin.key"))
    return ctx


def apiserver_healthy(paths: Paths, ports: Ports) -> bool:
    if not (paths.pki / "ca.crt").exists():
        return False
    try:
        url = f"https://127.0.0.1:{ports.apiserver}/readyz"
        with urllib.request.urlopen(url, context=_ssl_context(paths), timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError, ssl.SSLError):
        return False


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class Cluster:
    paths: Paths = field(default_factory=Paths)
    ports: Ports = field(default_factory=Ports.from_env)

    # ---- inspection -------------------------------------------------------
    def running(self) -> dict[str, int]:
        pids: dict[str, int] = _read_state(self.paths).get("pids", {})
        return {name: pid for name, pid in pids.items() if pid_alive(pid)}

    def status(self) -> dict[str, Any]:
        state = _read_state(self.paths)
        pids: dict[str, int] = state.get("pids", {})
        return {
            "stateDir": str(self.paths.root),
            "kubeconfig": str(self.paths.kubeconfig),
            "apiserverHealthy": apiserver_healthy(self.paths, self.ports),
            "components": {
                name: {"pid": pid, "alive": pid_alive(pid)} for name, pid in pids.items()
            },
        }

    def is_up(self) -> bool:
        state = _read_state(self.paths)
        pids = state.get("pids", {})
        return (
            bool(pids)
            and set(COMPONENT_PORTS) <= set(pids)
            and all(pid_alive(pids[name]) for name in COMPONENT_PORTS)
            and apiserver_healthy(self.paths, self.ports)
            and pod_network_ready()
        )

    # ---- lifecycle --------------------------------------------------------
    def up(self, nodes: int = 4, gpu_product: str = "NVIDIA-H100-80GB-HBM3") -> dict[str, float]:
        timings: dict[str, float] = {}
        t0 = time.monotonic()
        if self.is_up():
            _log(f"cluster already running (state in {self.paths.root}); reusing it")
            self._ensure_nodes_and_crds(nodes, gpu_product, timings)
            timings["total"] = time.monotonic() - t0
            return timings
        if _read_state(self.paths).get("pids"):
            _log("found a stale or half-started cluster; stopping what is left of it")
            self.down(quiet=True)
        built = binaries.ensure_all()
        timings["build"] = sum(built.values())
        self._check_ports()
        setup_pod_network()
        self._prepare_state()
        t1 = time.monotonic()
        commands = _commands(self.paths, self.ports)
        state: dict[str, Any] = {"pids": {}, "ports": self.ports.__dict__}
        try:
            for name in ("etcd", "kube-apiserver"):
                state["pids"][name] = self._start(name, commands[name])
                _write_state(self.paths, state)
            self._wait_for(
                "kube-apiserver",
                lambda: apiserver_healthy(self.paths, self.ports),
                timeout=60,
                pid=state["pids"]["kube-apiserver"],
            )
            timings["apiserver_healthy"] = time.monotonic() - t1
            for name in ("kube-controller-manager", "kube-scheduler", "kwok", "pod-runner"):
                state["pids"][name] = self._start(name, commands[name])
                _write_state(self.paths, state)
            self._ensure_nodes_and_crds(nodes, gpu_product, timings, since=t1)
        except Exception:
            _write_state(self.paths, state)
            raise
        timings["total"] = time.monotonic() - t0
        return timings

    def down(self, quiet: bool = False) -> list[str]:
        state = _read_state(self.paths)
        pids: dict[str, int] = state.get("pids", {})
        # Reverse start order: clients before the API server before etcd.
        stopped = [name for name in reversed(list(pids)) if pid_alive(pids[name])]
        terminate([pids[name] for name in stopped])
        if pids:
            state["pids"] = {}
            _write_state(self.paths, state)
        teardown_pod_network()
        if not quiet:
            _log("stopped " + (", ".join(stopped) if stopped else "nothing (no cluster running)"))
        return stopped

    # ---- helpers ------------------------------------------------------------
    def _check_ports(self) -> None:
        # Give a just-stopped cluster a moment to release its sockets.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(
            port_in_use(getattr(self.ports, a)) for attrs in COMPONENT_PORTS.values() for a in attrs
        ):
            time.sleep(0.2)
        busy = []
        for name, attrs in COMPONENT_PORTS.items():
            for attr in attrs:
                port = getattr(self.ports, attr)
                if port_in_use(port):
                    busy.append(f"{port} ({name})")
        if busy:
            raise ClusterError(
                "port(s) already in use by another process: "
                + ", ".join(busy)
                + ". Stop that process, or run with MODELFLEET_DEV_PORT_OFFSET=<n> "
                "to shift every port of the local cluster."
            )

    def _prepare_state(self) -> None:
        root = self.paths.root
        root.mkdir(parents=True, exist_ok=True)
        # A fresh start gets fresh data: a half-started etcd can hold anything.
        shutil.rmtree(self.paths.etcd_data, ignore_errors=True)
        shutil.rmtree(self.paths.logs, ignore_errors=True)
        self.paths.logs.mkdir(parents=True)
        if not (self.paths.pki / "admin.crt").exists():
            pki.generate(self.paths.pki)
        write_kubeconfig(self.paths, self.ports)
        stages = resources.files("modelfleet_dev").joinpath("kwok-stages.yaml").read_text()
        self.paths.kwok_config.write_text(stages)

    def start_extra(self, name: str, cmd: list[str], env: dict[str, str]) -> int:
        """Start a process that `down` stops with the cluster (the demo's operator, router)."""
        state = _read_state(self.paths)
        pid = self._start(name, cmd, env)
        state.setdefault("pids", {})[name] = pid
        _write_state(self.paths, state)
        return pid

    def stop_extra(self, name: str) -> bool:
        """Stop one process started with start_extra (tests replace the demo's operator)."""
        state = _read_state(self.paths)
        pid = state.get("pids", {}).pop(name, None)
        if pid is None:
            return False
        terminate([pid])
        _write_state(self.paths, state)
        return True

    def _start(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> int:
        log = self.paths.logs / f"{name}.log"
        out = log.open("ab")
        proc = subprocess.Popen(
            cmd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # own process group: `down` stops its children too
            cwd=self.paths.root,
        )
        out.close()
        _log(f"started {name} (pid {proc.pid}, log {log})")
        return proc.pid

    def _wait_for(
        self, what: str, check: Any, timeout: float, pid: int | None = None, interval: float = 0.1
    ) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            if pid is not None and not pid_alive(pid):
                log = self.paths.logs / f"{what}.log"
                raise ClusterError(
                    f"{what} exited during start-up; last lines of {log}:\n{_tail(log)}"
                )
            time.sleep(interval)
        log = self.paths.logs / f"{what}.log"
        raise ClusterError(
            f"{what} not ready after {timeout:.0f}s; last lines of {log}:\n{_tail(log)}"
        )

    def _ensure_nodes_and_crds(
        self, nodes: int, gpu_product: str, timings: dict[str, float], since: float | None = None
    ) -> None:
        from modelfleet_dev import bootstrap

        start = since if since is not None else time.monotonic()
        client = bootstrap.api_client(self.paths.kubeconfig)
        bootstrap.ensure_nodes(client, nodes, gpu_product)
        bootstrap.install_crds(client)
        self._wait_for(
            "kwok",
            lambda: bootstrap.nodes_ready(client) >= nodes + 1,
            timeout=60,
            pid=self.running().get("kwok"),
        )
        timings["nodes_ready"] = time.monotonic() - start
        bootstrap.wait_crds_established(client, timeout=30)
        bootstrap.wait_default_service_account(client, timeout=30)
        timings["ready"] = time.monotonic() - start
