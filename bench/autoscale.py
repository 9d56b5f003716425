"""Autoscaling benchmark on the local cluster (issue 16): a real router (`--kube`) in
front of ModelPools of real workers (local pod runner), and an operator of its own that
reads the router's GET /v1/demand and writes replicas through the scale subresource.

Measures:
  1. load step: closed-loop clients start on a min 1 max 4 pool (target 1 in flight per
     replica); seconds until 4 replicas are written, Ready, and in the router's view;
  2. cold start held in the router: a min 0 pool at zero (no pod, router at 0
     endpoints) gets one request; its latency minus a warm request's is what the hold
     through the cold start adds (text-drawing and tiny diffusion workers);
  3. replica changes per minute under steady load (goal 0): on the cluster (shortened
     windows) and in the simulator (the default 60 s windows, 15 minutes).

    flock /tmp/modelfleet-cluster.lock .venv/bin/python bench/autoscale.py
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubernetes import client as k8s
from kubernetes.client.rest import ApiException
from prometheus_client.parser import text_string_to_metric_families

from modelfleet.api.modelpool import AutoscalingSpec
from modelfleet.autoscale.core import Demand, Params
from modelfleet.autoscale.simulate import changes, simulate
from modelfleet_dev import bootstrap, story
from modelfleet_dev.cluster import Cluster
from modelfleet_dev.routerproc import RouterProcess

NS = "bench-autoscale"
G, V = story.G, story.V
TEXT_IMAGE = "modelfleet.dev/textrender"  # the pod runner runs the text-drawing worker
BODIES = {
    "text": b'{"prompt": "a sign saying \\"OPEN\\"", "size": "128x64"}',
    "tiny": b'{"prompt": "a lighthouse", "size": "64x64", "steps": 2}',
}
SHORT = {"stableWindow": "6s", "panicWindow": "2s", "scaleDownStabilization": "3s"}
POOLS: dict[str, tuple[str, dict[str, Any]]] = {
    # name: (backend, spec.autoscaling)
    "step": (
        "text",
        {"minReplicas": 1, "maxReplicas": 4, "target": 1, "maxScaleDownStep": 4, **SHORT},
    ),
    "steady": (
        "text",
        {
            "minReplicas": 1,
            "maxReplicas": 4,
            "target": 1,
            "stableWindow": "20s",
            "panicWindow": "2s",
            "scaleDownStabilization": "10s",
        },
    ),
    "cold-text": (
        "text",
        {"minReplicas": 0, "maxReplicas": 1, "target": 1, "scaleToZeroDelay": "3s", **SHORT},
    ),
    "cold-tiny": (
        "tiny",
        {"minReplicas": 0, "maxReplicas": 1, "target": 1, "scaleToZeroDelay": "3s", **SHORT},
    ),
}


def wait(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(interval)  # poll interval
    raise TimeoutError(what)


class Bench:
    def __init__(self, api: k8s.ApiClient, router: RouterProcess) -> None:
        self.custom = k8s.CustomObjectsApi(api)
        self.core = k8s.CoreV1Api(api)
        self.router = router

    def pool(self, name: str) -> dict[str, Any]:
        out: dict[str, Any] = self.custom.get_namespaced_custom_object(G, V, NS, "modelpools", name)
        return out

    def replicas(self, name: str) -> tuple[int, int]:
        """(spec.replicas, status.readyReplicas)."""
        p = self.pool(name)
        return int(p["spec"].get("replicas", 0)), int(
            (p.get("status") or {}).get("readyReplicas") or 0
        )

    def metric(self, name: str, **labels: str) -> float:
        with urllib.request.urlopen(self.router.url + "/metrics", timeout=10) as resp:
            text = resp.read().decode()
        want = set(labels.items())
        return sum(
            s.value
            for fam in text_string_to_metric_families(text)
            for s in fam.samples
            if s.name == name and want <= set(s.labels.items())
        )

    def scaled_events(self, pool: str) -> int:
        """Scaled Events the autoscaler posted on the pool (a repeat counts each time)."""
        sel = f"involvedObject.kind=ModelPool,involvedObject.name={pool},reason=Scaled"
        items = self.core.list_namespaced_event(NS, field_selector=sel).items
        return sum(e.count or 1 for e in items)

    def endpoints(self, pool: str) -> int:
        return int(self.metric("modelfleet_router_endpoints", namespace=NS, pool=pool))

    def at(self, pool: str, n: int) -> bool:
        return self.replicas(pool) == (n, n) and self.endpoints(pool) == n

    def send(self, pool: str) -> float:
        """One request; its latency in seconds (raises on an error answer)."""
        req = urllib.request.Request(
            self.router.url + "/v1/images/generations",
            data=BODIES[POOLS[pool][0]],
            headers={"Content-Type": "application/json", "X-ModelFleet-Policy": pool},
        )
        t0 = time.monotonic()
        try:
            with urllib.request.urlopen(req, timeout=150) as resp:
                resp.read()
                assert resp.headers.get("X-ModelFleet-Pool") == pool
        except urllib.error.HTTPError as err:
            raise RuntimeError(f"{pool}: {err.code} {err.read()[:300]!r}") from err
        return time.monotonic() - t0


class BodyLoad(story.Load):
    def __init__(self, url: str, pool: str, clients: int) -> None:
        super().__init__(url, pool, clients=clients)
        self.payload = BODIES[POOLS[pool][0]]

    def body(self, client: int) -> bytes:
        return self.payload


def _step_once(b: Bench, clients: int) -> dict[str, float]:
    wait(lambda: b.at("step", 1), 120, "step pool at 1")
    marks: dict[str, float] = {}
    with BodyLoad(b.router.url, "step", clients) as load:
        t0 = time.monotonic()

        def reached() -> bool:
            spec, ready = b.replicas("step")
            now = time.monotonic() - t0
            if spec >= 4:
                marks.setdefault("written", now)
            if ready >= 4:
                marks.setdefault("ready", now)
            if b.endpoints("step") >= 4:
                marks.setdefault("router", now)
            return len(marks) == 3

        wait(reached, 120, "4 replicas Ready in the router's view", interval=0.1)
    assert not load.failed, f"failed requests during the step: {load.failed[:10]}"
    t1 = time.monotonic()
    wait(lambda: b.at("step", 1), 120, "back to 1")
    return {**marks, "down": time.monotonic() - t1, "ok": float(load.ok)}


def load_step(b: Bench, runs: int, clients: int) -> list[dict[str, float]]:
    return [_step_once(b, clients) for _ in range(runs)]


def _cold_once(b: Bench, pool: str, warm_n: int) -> dict[str, float]:
    pods = f"modelfleet.io/pool={pool}"

    def at_zero() -> bool:
        gone = not b.core.list_namespaced_pod(NS, label_selector=pods).items
        return b.replicas(pool) == (0, 0) and gone and b.endpoints(pool) == 0

    wait(at_zero, 180, f"{pool} at zero", interval=0.3)
    labels = {"namespace": NS, "pool": pool}
    c0 = b.metric("modelfleet_router_cold_start_seconds_sum", **labels)
    h0 = b.metric("modelfleet_router_hold_seconds_sum", **labels)
    cold = b.send(pool)
    warm = statistics.median(b.send(pool) for _ in range(warm_n))
    return {
        "cold": cold,
        "warm": warm,
        "added": cold - warm,
        "router_cold_start": b.metric("modelfleet_router_cold_start_seconds_sum", **labels) - c0,
        "router_hold": b.metric("modelfleet_router_hold_seconds_sum", **labels) - h0,
    }


def cold_start(b: Bench, pool: str, runs: int, warm_n: int) -> list[dict[str, float]]:
    return [_cold_once(b, pool, warm_n) for _ in range(runs)]


def steady(b: Bench, clients: int, observe_s: float) -> dict[str, float]:
    with BodyLoad(b.router.url, "steady", clients) as load:
        wait(lambda: b.at("steady", clients), 180, f"steady pool at {clients}")
        # Settled: one stable window (20 s) with no change before counting.
        last, since = b.replicas("steady")[0], time.monotonic()
        while time.monotonic() - since < 20:
            now = b.replicas("steady")[0]
            if now != last:
                last, since = now, time.monotonic()
            time.sleep(0.25)  # poll interval
        t0, n, seen, events0 = time.monotonic(), 0, {last}, b.scaled_events("steady")
        while time.monotonic() - t0 < observe_s:
            now = b.replicas("steady")[0]
            if now != last:
                n, last = n + 1, now
                seen.add(now)
            time.sleep(0.25)  # poll interval
        failed = len(load.failed)
    return {
        "changes": n,
        "events": b.scaled_events("steady") - events0,
        "per_min": n / (observe_s / 60),
        "replicas": float(last),
        "seen": float(len(seen)),
        "failed": failed,
        "ok": load.ok,
    }


def simulated_changes_per_min(minutes: float = 15, seed: int = 16) -> list[tuple[str, float]]:
    """The default windows (60 s / 6 s, 60 s down stabilisation), steady noisy demand."""
    p = Params.of(
        AutoscalingSpec.model_validate({"minReplicas": 1, "maxReplicas": 10, "target": 2})
    )
    out = []
    for label, mean, jitter in (("6 +- 1.5", 6.0, 1.5), ("7.9 +- 1 (boundary 8)", 7.9, 1.0)):
        rng = random.Random(seed)

        def demand(
            t: float, mean: float = mean, jitter: float = jitter, rng: random.Random = rng
        ) -> Demand:
            return Demand(in_flight=max(0.0, rng.uniform(mean - jitter, mean + jitter)))

        steps = simulate(p, demand, minutes * 60, start=1, ready_delay=5)
        out.append((label, changes(steps, after=120) / (minutes - 2)))
    return out


def _recreate_namespace(core: k8s.CoreV1Api, api: k8s.ApiClient) -> None:
    try:
        core.delete_namespace(NS)
        story.wait_until(lambda: story.namespace_gone(core, NS), 180, "old namespace gone")
    except ApiException as exc:
        if exc.status != 404:
            raise
    core.create_namespace({"metadata": {"name": NS}})
    bootstrap.wait_default_service_account(api, NS)


def _pool_doc(name: str, model: Path) -> dict[str, Any]:
    backend, autoscaling = POOLS[name]
    doc = story.pool_manifest(name, str(model))
    if backend == "text":
        doc["spec"]["image"] = TEXT_IMAGE
        doc["spec"]["limits"]["maxResolution"] = 512
    doc["spec"]["batching"] = {"maxBatchSize": 1, "maxLatencyMs": 0}
    doc["spec"]["autoscaling"] = autoscaling
    del doc["spec"]["replicas"]
    return doc


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--step-runs", type=int, default=2)
    parser.add_argument("--step-clients", type=int, default=8)
    parser.add_argument("--cold-runs", type=int, default=3)
    parser.add_argument("--cold-pools", nargs="*", default=["cold-text", "cold-tiny"])
    parser.add_argument("--steady-clients", type=int, default=2)
    parser.add_argument("--steady-s", type=float, default=120)
    args = parser.parse_args()

    cluster = Cluster()
    cluster.up()
    api = bootstrap.api_client(cluster.paths.kubeconfig)
    core = k8s.CoreV1Api(api)
    _recreate_namespace(core, api)
    model = story.ensure_tiny_model(cluster.paths.root)
    for name in POOLS:
        story.create_or_update(api, NS, "modelpools", _pool_doc(name, model))
        policy = story.single_route_policy(name, name)
        policy["spec"]["admission"] = {"queueTimeoutMs": 120000}  # room for a cold start
        story.create_or_update(api, NS, "routingpolicies", policy)
    router = RouterProcess.kube(NS, cluster.paths.kubeconfig)
    cluster.stop_extra("operator")  # exactly one operator acts: ours, reading our router
    log_path = Path("/tmp/bench-autoscale-operator.log")
    with router, log_path.open("wb") as log:
        operator = subprocess.Popen(
            [
                sys.executable, "-m", "modelfleet.cli", "operator",
                "--router-url", router.url, "--namespace", NS,
                "--lease-namespace", NS, "--id", "bench-autoscale",
            ],
            env={**os.environ, "KUBECONFIG": str(cluster.paths.kubeconfig)},
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            b = Bench(api, router)
            step = load_step(b, args.step_runs, args.step_clients)
            cold = {p: cold_start(b, p, args.cold_runs, warm_n=5) for p in args.cold_pools}
            flat = steady(b, args.steady_clients, args.steady_s)
        finally:
            operator.terminate()
            operator.wait(30)
            core.delete_namespace(NS)
    sim = simulated_changes_per_min()
    report(args, step, cold, flat, sim)
    return 0


def report(
    args: argparse.Namespace,
    step: list[dict[str, float]],
    cold: dict[str, list[dict[str, float]]],
    flat: dict[str, float],
    sim: list[tuple[str, float]],
) -> None:
    def runs(rows: list[dict[str, float]], key: str) -> str:
        return ", ".join(f"{r[key]:.1f}" for r in rows)

    def ms(rows: list[dict[str, float]], key: str) -> str:
        return ", ".join(f"{1000 * r[key]:.0f}" for r in rows)

    print(f"\nLoad step: {args.step_clients} closed-loop clients on min 1 max 4, target 1")
    print("| load starts -> | seconds (each run) |\n|---|---|")
    print(f"| 4 replicas written (/scale) | {runs(step, 'written')} |")
    print(f"| 4 Ready | {runs(step, 'ready')} |")
    print(f"| 4 endpoints in the router | {runs(step, 'router')} |")
    print(f"| load stops -> back to 1 | {runs(step, 'down')} |")
    print("\nCold start held in the router (pool at zero: no pod, router at 0 endpoints)")
    print("| workers | request at zero (s) | warm (ms) | added (s) | router cold_start_seconds | hold_seconds |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for pool, rows in cold.items():
        print(
            f"| {POOLS[pool][0]} | {runs(rows, 'cold')} | {ms(rows, 'warm')} | "
            f"{runs(rows, 'added')} | {runs(rows, 'router_cold_start')} | {runs(rows, 'router_hold')} |"
        )
    print(f"\nSteady load: {args.steady_clients} closed-loop clients, target 1, stable 20s")
    print(json.dumps(flat))
    print(
        f"| cluster, {args.steady_s:.0f} s after settling | {flat['per_min']:.2f} changes/min "
        f"({flat['changes']:.0f} seen, {flat['events']:.0f} Scaled Events; at "
        f"{flat['replicas']:.0f} replicas, {flat['ok']:.0f} served, {flat['failed']:.0f} failed) |"
    )
    for label, per_min in sim:
        print(
            f"| simulator, default windows, demand {label}, target 2 | {per_min:.2f} changes/min |"
        )


if __name__ == "__main__":
    sys.exit(main())
