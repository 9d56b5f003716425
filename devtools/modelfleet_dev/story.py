"""Shared by `make demo`, the canary benchmark and the e2e tests: tiny-model
pools backed by real local workers, a closed-loop load generator, and a
canary run watched (and narrated) until it ends."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

from modelfleet import GROUP, LOCAL_RUN_ANNOTATION, VERSION
from modelfleet.api.canary import TERMINAL_PHASES

G, V = GROUP, VERSION
# A watched run ends when the canary finishes, or pauses itself (then it waits for a person).
STOPPED = TERMINAL_PHASES | {"Paused"}


def ensure_tiny_model(cluster_root: Path, say: Callable[[str], None] | None = None) -> Path:
    """The tiny randomly initialised pipeline the demo's and benches' workers load,
    written once into the cluster's state directory."""
    model = cluster_root / "demo-model"
    if not (model / "model_index.json").exists():
        if say is not None:
            say("writing a tiny randomly initialised diffusers pipeline (no downloads)")
        worker = Path(sys.executable).parent / "modelfleet-worker"
        subprocess.run([str(worker), "tiny-model", "--out", str(model)], check=True)
    return model


def pool_manifest(
    name: str, model_dir: str, env: dict[str, str] | None = None, replicas: int = 1
) -> dict[str, Any]:
    """A ModelPool of real tiny-model workers run by the local pod runner.

    The local pods share this machine's cores, so service time is the inference thread's
    CPU time (wall time would carry the neighbours' load; docs/canary.md). `env` adds to
    or overrides these settings."""
    settings = {"MODELFLEET_WORKER_CPU_THREADS": "1", "MODELFLEET_WORKER_SERVICE_CLOCK": "cpu"}
    worker_env = [{"name": k, "value": v} for k, v in {**settings, **(env or {})}.items()]
    return {
        "apiVersion": f"{G}/{V}",
        "kind": "ModelPool",
        "metadata": {"name": name, "annotations": {LOCAL_RUN_ANNOTATION: "true"}},
        "spec": {
            "model": {"family": "custom", "source": f"file://{model_dir}", "dtype": "float32"},
            "replicas": replicas,
            "gpu": {"count": 1},
            "batching": {"maxBatchSize": 4, "maxLatencyMs": 20},
            "limits": {"maxResolution": 256, "maxSteps": 8},
            "worker": {"env": worker_env},
        },
    }


def create_or_update(api: k8s.ApiClient, namespace: str, plural: str, doc: dict[str, Any]) -> None:
    custom = k8s.CustomObjectsApi(api)
    try:
        custom.create_namespaced_custom_object(G, V, namespace, plural, doc)
    except ApiException as exc:
        if exc.status != 409:
            raise
        custom.patch_namespaced_custom_object(
            G, V, namespace, plural, doc["metadata"]["name"], {"spec": doc["spec"]}
        )


def single_route_policy(name: str, pool: str, fallbacks: list[str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": f"{G}/{V}",
        "kind": "RoutingPolicy",
        "metadata": {"name": name},
        "spec": {"routes": [{"name": "all", "pool": pool, "fallbacks": fallbacks or []}]},
    }


def wait_until(check: Callable[[], object], timeout: float, what: str) -> None:
    """Poll `check` twice a second until it is truthy; TimeoutError naming `what`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)  # poll interval
    raise TimeoutError(what)


def namespace_gone(core: k8s.CoreV1Api, namespace: str) -> bool:
    try:
        core.read_namespace(namespace)
    except ApiException as exc:
        return bool(exc.status == 404)
    return False


def router_serves(router_url: str, policy: str) -> bool:
    """One tiny request for `policy` through the router came back 200."""
    req = urllib.request.Request(
        router_url + "/v1/images/generations",
        data=b'{"prompt": "x", "size": "64x64", "steps": 2}',
        headers={"Content-Type": "application/json", "X-ModelFleet-Policy": policy},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


class Load:
    """Clients sending image requests through the router for one policy: closed-loop, or
    paced to one request per `period` seconds per client. Subclasses choose the body."""

    def __init__(self, router_url: str, policy: str, clients: int = 3, period: float = 0.0) -> None:
        self.url = router_url + "/v1/images/generations"
        self.policy = policy
        self.period = period
        self.stop_flag = threading.Event()
        self.ok = 0
        self.failed: list[int] = []
        self.threads = [
            threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(clients)
        ]

    def body(self, client: int) -> bytes:
        """The next request's JSON body from client number `client`."""
        return b'{"prompt": "a lighthouse", "size": "64x64", "steps": 2}'

    def _run(self, client: int) -> None:
        while not self.stop_flag.is_set():
            t0 = time.monotonic()
            req = urllib.request.Request(
                self.url,
                data=self.body(client),
                headers={"Content-Type": "application/json", "X-ModelFleet-Policy": self.policy},
            )
            try:
                with urllib.request.urlopen(req, timeout=30) as resp:
                    resp.read()
                    self.ok += 1
            except urllib.error.HTTPError as err:
                self.failed.append(err.code)
            except OSError:
                self.failed.append(0)
            if self.period:
                self.stop_flag.wait(max(0.0, self.period - (time.monotonic() - t0)))

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_flag.set()
        for t in self.threads:
            t.join(timeout=60)


@dataclass
class Outcome:
    name: str
    phase: str
    seconds: float
    message: str
    metrics: list[dict[str, Any]] = field(default_factory=list)
    # From the moment the candidate first got traffic to the moment its weight was 0 again.
    weight_zero_after: float | None = None


def _metric_text(metrics: list[dict[str, Any]]) -> str:
    parts = []
    for m in metrics:
        value = m.get("value")
        shown = "n/a" if value is None else f"{value:.3g}"
        limit = m.get("threshold")
        parts.append(
            f"{m['name']}={shown}"
            + (f" (limit {limit:.3g})" if limit is not None else "")
            + f" {m['result']}"
        )
    return ", ".join(parts)


def watch_canary(
    api: k8s.ApiClient,
    namespace: str,
    name: str,
    say: Callable[[str], None] | None = None,
    timeout: float = 600,
) -> Outcome:
    """Poll the Canary until it ends; narrate every change of phase, step or weight."""
    custom = k8s.CustomObjectsApi(api)
    t0 = time.monotonic()
    last: tuple[Any, ...] = ()
    first_traffic: float | None = None
    while time.monotonic() - t0 < timeout:
        status = (
            custom.get_namespaced_custom_object(G, V, namespace, "canaries", name).get("status")
            or {}
        )
        weight = status.get("canaryWeight") or 0
        if weight > 0 and first_traffic is None:
            first_traffic = time.monotonic()
        key = (
            status.get("phase"),
            status.get("currentStep"),
            weight,
            len(status.get("history", [])),
        )
        if key != last:
            last = key
            if say is not None:
                say(
                    f"{name}: {status.get('phase')} step {status.get('currentStep')} weight {weight}%"
                    + (
                        f" | {_metric_text(status.get('metrics', []))}"
                        if status.get("metrics")
                        else ""
                    )
                )
        if status.get("phase") in STOPPED:
            zero = time.monotonic() - first_traffic if first_traffic and weight == 0 else None
            return Outcome(
                name,
                status["phase"],
                time.monotonic() - t0,
                status.get("message", ""),
                status.get("metrics", []),
                zero,
            )
        time.sleep(0.1)
    raise TimeoutError(f"canary {namespace}/{name} did not finish within {timeout:.0f}s")


def canary_manifest(
    name: str,
    policy: str,
    stable: str,
    candidate: str,
    interval: str,
    steps: list[int],
    min_requests: int = 5,
) -> dict[str, Any]:
    return {
        "apiVersion": f"{G}/{V}",
        "kind": "Canary",
        "metadata": {"name": name},
        "spec": {
            "routingPolicy": policy,
            "route": "all",
            "stablePool": stable,
            "candidatePool": candidate,
            "steps": steps,
            "interval": interval,
            "analysis": {
                "minRequests": min_requests,
                "failureLimit": 1,
                "inconclusiveLimit": 5,
                "metrics": [
                    {"name": "error-rate", "builtin": "error-rate", "max": 0.05},
                    {"name": "latency-p95", "builtin": "latency-p95", "maxRatioToStable": 2.0},
                ],
            },
        },
    }
