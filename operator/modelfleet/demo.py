"""`make demo`: the local cluster with GPU nodes and CRDs, the operator, three
tiny-model pools backed by real local workers, the router, and real requests
routed by intent. Finishes on its own and leaves everything running;
`modelfleet dev down` stops all of it."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

from modelfleet.dev import bootstrap
from modelfleet.dev.cluster import Cluster

NAMESPACE = "modelfleet-demo"
ROUTER_PORT = int(os.environ.get("MODELFLEET_DEMO_ROUTER_PORT", "18080"))


def say(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def _pool(name: str, model_dir: Path, tags: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": "modelfleet.io/v1alpha1",
        "kind": "ModelPool",
        "metadata": {"name": name, "annotations": {"modelfleet.io/local-run": "true"}},
        "spec": {
            "model": {"family": "custom", "source": f"file://{model_dir}", "dtype": "float32"},
            "replicas": 1,
            "gpu": {"count": 1},
            "batching": {"maxBatchSize": 4, "maxLatencyMs": 40},
            "limits": {"maxResolution": 256, "maxSteps": 8},
            "tags": tags,
            "worker": {"env": [{"name": "MODELFLEET_WORKER_CPU_THREADS", "value": "1"}]},
        },
    }


POLICY = {
    "apiVersion": "modelfleet.io/v1alpha1",
    "kind": "RoutingPolicy",
    "metadata": {"name": "images"},
    "spec": {
        "routes": [
            {
                "name": "typography",
                "match": {"promptPatterns": ['"[^"]+"', r"\blogo\b"]},
                "pool": "typography",
                "fallbacks": ["production"],
            },
            {
                "name": "preview",
                "match": {"tiers": ["preview"]},
                "pool": "preview",
                "fallbacks": ["production"],
            },
            {"name": "default", "pool": "production", "fallbacks": ["preview"]},
        ]
    },
}


def _apply_custom(api: k8s.ApiClient, plural: str, doc: dict[str, Any]) -> None:
    custom = k8s.CustomObjectsApi(api)
    try:
        custom.create_namespaced_custom_object("modelfleet.io", "v1alpha1", NAMESPACE, plural, doc)
    except ApiException as exc:
        if exc.status != 409:
            raise
        custom.patch_namespaced_custom_object(
            "modelfleet.io",
            "v1alpha1",
            NAMESPACE,
            plural,
            doc["metadata"]["name"],
            {"spec": doc["spec"]},
        )


def _wait(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.5)
    raise SystemExit(f"[demo] timed out after {timeout:.0f}s waiting for {what}")


def _post(prompt: str, tier: str | None = None) -> tuple[int, dict[str, str], dict[str, Any]]:
    body: dict[str, Any] = {"prompt": prompt, "size": "64x64", "steps": 2, "seed": 7}
    if tier:
        body["tier"] = tier
    req = urllib.request.Request(
        f"http://127.0.0.1:{ROUTER_PORT}/v1/images/generations",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.loads(err.read() or b"{}")


def main() -> int:
    cluster = Cluster()
    t0 = time.monotonic()
    timings = cluster.up()
    say(f"local cluster up in {timings['total']:.1f}s (4 fake H100 nodes x 8 GPUs, CRDs installed)")
    api = bootstrap.api_client(cluster.paths.kubeconfig)
    env = {**os.environ, "KUBECONFIG": str(cluster.paths.kubeconfig)}

    if "operator" not in cluster.running():
        cluster.start_extra("operator", [sys.executable, "-m", "modelfleet.cli", "operator"], env)
    core = k8s.CoreV1Api(api)
    try:
        core.create_namespace({"metadata": {"name": NAMESPACE}})
    except ApiException as exc:
        if exc.status != 409:
            raise
    bootstrap.wait_default_service_account(api, NAMESPACE)

    model_dir = cluster.paths.root / "demo-model"
    if not (model_dir / "model_index.json").exists():
        say("writing a tiny randomly initialised diffusers pipeline (no downloads)")
        subprocess.run(
            [
                str(Path(sys.executable).parent / "modelfleet-worker"),
                "tiny-model",
                "--out",
                str(model_dir),
            ],
            check=True,
        )
    for name, tags in (
        ("typography", ["typography"]),
        ("preview", ["preview"]),
        ("production", ["photoreal"]),
    ):
        _apply_custom(api, "modelpools", _pool(name, model_dir, tags))
    _apply_custom(api, "routingpolicies", POLICY)
    say("created ModelPools typography, preview, production and RoutingPolicy images")

    custom = k8s.CustomObjectsApi(api)

    def all_ready() -> bool:
        pools = custom.list_namespaced_custom_object(
            "modelfleet.io", "v1alpha1", NAMESPACE, "modelpools"
        )
        phases = {
            p["metadata"]["name"]: (p.get("status") or {}).get("phase") for p in pools["items"]
        }
        return len(phases) == 3 and all(v == "Ready" for v in phases.values())

    _wait(all_ready, 300, "pools Ready (real tiny-model workers loading)")
    say("all pools Ready: each worker pod is a real local process serving at its pod IP")

    if "router" not in cluster.running():
        cluster.start_extra(
            "router",
            [
                sys.executable,
                "-m",
                "modelfleet.cli",
                "router",
                "--kube",
                "--host",
                "127.0.0.1",
                "--port",
                str(ROUTER_PORT),
            ],
            env,
        )

    def router_ready() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{ROUTER_PORT}/readyz", timeout=2) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    _wait(router_ready, 60, "router ready")
    say(f"router listening on http://127.0.0.1:{ROUTER_PORT} (OpenAI Images API)")
    for prompt, tier in (
        ('a poster with the exact text "SALE NOW"', None),
        ("a quick sketch of a lighthouse", "preview"),
        ("a photoreal mountain lake at dawn", "production"),
    ):
        status, headers, body = _wait(
            lambda p=prompt, t=tier: _ok(_post(p, t)), 120, "a routed image"
        )
        png = base64.b64decode(body["data"][0]["b64_json"])
        say(
            f"{status} route={headers.get('X-ModelFleet-Route')} pool={headers.get('X-ModelFleet-Pool')} "
            f"fallback={headers.get('X-ModelFleet-Fallback')} png={len(png)}B  <- {prompt!r}"
        )
    say(f"done in {time.monotonic() - t0:.0f}s; everything keeps running. Look around:")
    print(f"""
  eval "$({sys.executable} -m modelfleet.cli dev env)"
  kubectl get nodes -L nvidia.com/gpu.product
  kubectl -n {NAMESPACE} get modelpools,routingpolicies,deploy,pods -o wide
  kubectl -n {NAMESPACE} get events --field-selector involvedObject.kind=ModelPool
  curl -s localhost:{ROUTER_PORT}/v1/images/generations -d '{{"prompt":"logo \\"ACME\\"","size":"64x64","steps":2}}' | head -c 200
  {sys.executable} -m modelfleet.cli dev down     # stop everything
""")
    return 0


def _ok(
    result: tuple[int, dict[str, str], dict[str, Any]],
) -> tuple[int, dict[str, str], dict[str, Any]] | None:
    return result if result[0] == 200 else None


if __name__ == "__main__":
    sys.exit(main())
