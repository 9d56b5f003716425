"""`make demo`, the mixed fleet: hosted pools (OpenAI, Imagen, Gemini and Ideogram
behind their strict local stand-ins) next to the tiny diffusers pools, one
RoutingPolicy across them with fallbacks, real requests through the router, a 429
storm on Ideogram answered by the diffusers fallback, Gemini's daily quota running
out (the pool Degraded/QuotaExhausted, its route falling back), and the cost per pool.

The stand-ins run in the pods' network namespace (like a sidecar: the adapters reach
them on loopback there); each has a fresh key per run, in a 0600 file and a Secret,
never in a ModelPool. The hosted pools are real adapter pods the operator builds
(CPU only) and the local pod runner starts.

Alone, against the running local cluster (it starts its own router and operator and
stops them after): `python -m modelfleet_dev.hosted_demo`."""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

from modelfleet import GROUP, LOCAL_RUN_ANNOTATION, VERSION
from modelfleet_dev import story
from modelfleet_dev.cluster import NETNS, Cluster

Say = Callable[[str], None]
PORT_BASE = int(os.environ.get("MODELFLEET_DEMO_STANDIN_PORT", "18090"))
GPU_HOUR_PRICE = 2.5  # USD, the diffusers pools' spec.cost.gpuHourPrice
POLICY_NAME = "fleet"
DIFFUSERS = ("production", "preview")  # the diffusers pools the fleet's routes use


@dataclass(frozen=True)
class Provider:
    name: str  # also the Secret's name suffix
    module: str  # the stand-in, run as `python -m`
    port: int
    path: str = ""  # base URL path as the provider's SDK names it

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"

    @property
    def secret(self) -> str:
        return f"demo-{self.name}"


PROVIDERS = (
    Provider("openai", "modelfleet_dev.standins.openai_images", PORT_BASE, "/v1"),
    Provider("google", "modelfleet_dev.standins.gemini_api", PORT_BASE + 1),
    Provider("ideogram", "modelfleet_dev.standins.ideogram_api", PORT_BASE + 2),
)
BY_NAME = {p.name: p for p in PROVIDERS}


@dataclass(frozen=True)
class HostedPool:
    name: str
    backend: str
    provider: str
    model: str
    defaults: dict[str, str]


HOSTED = (
    HostedPool("ideogram", "ideogram", "ideogram", "V_3", {"renderingSpeed": "TURBO"}),
    HostedPool("imagen", "gemini-imagen", "google", "imagen-4.0-generate-001", {}),
    HostedPool("nano-banana", "gemini", "google", "gemini-3-pro-image-preview", {}),
    HostedPool("gpt-image", "openai", "openai", "gpt-image-1", {"quality": "low"}),
)
HOSTED_NAMES = tuple(p.name for p in HOSTED)

# Intent routes across the fleet; every hosted route has a fallback.
POLICY: dict[str, Any] = {
    "apiVersion": f"{GROUP}/{VERSION}",
    "kind": "RoutingPolicy",
    "metadata": {"name": POLICY_NAME},
    "spec": {
        "routes": [
            {
                "name": "typography",
                "match": {"promptPatterns": ['"[^"]+"']},
                "pool": "ideogram",
                "fallbacks": ["production"],
            },
            {
                "name": "final",
                "match": {"tags": ["final"]},
                "pool": "imagen",
                "fallbacks": ["gpt-image", "production"],
            },
            {
                "name": "texture",
                "match": {"tags": ["texture"]},
                "pool": "nano-banana",
                "fallbacks": ["imagen"],
            },
            {
                "name": "hero",
                "match": {"tags": ["hero"]},
                "pool": "gpt-image",
                "fallbacks": ["imagen"],
            },
            {"name": "bulk", "pool": "production", "fallbacks": ["preview"]},
        ]
    },
}

# (prompt, tag, n): what the fleet is asked for. No size: each pool renders its default.
TRAFFIC: tuple[tuple[str, str | None, int], ...] = (
    ('a bakery sign that says "FRESH BREAD"', None, 1),
    ('a poster with the headline "SUMMER SALE"', None, 2),
    ("a product shot of a ceramic mug", "final", 2),
    ("a mossy stone wall, seamless", "texture", 1),
    ("a hero banner of a mountain road", "hero", 1),
    ("a sketch of a lighthouse", None, 1),
    ("a field of sunflowers", None, 2),
)


def with_gpu_price(manifest: dict[str, Any], price: float = GPU_HOUR_PRICE) -> dict[str, Any]:
    """A diffusers pool manifest with spec.cost.gpuHourPrice: its images are priced at
    the GPU-seconds they took."""
    manifest["spec"]["cost"] = {"gpuHourPrice": price}
    return manifest


def pool_manifest(pool: HostedPool) -> dict[str, Any]:
    provider = BY_NAME[pool.provider]
    spec: dict[str, Any] = {
        "backend": pool.backend,
        "provider": {
            "model": pool.model,
            "endpoint": provider.endpoint,
            "credentials": {"name": provider.secret, "key": "api-key"},
            "maxConcurrency": 4,
            **({"defaults": pool.defaults} if pool.defaults else {}),
        },
        "replicas": 1,
    }
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelPool",
        "metadata": {"name": pool.name, "annotations": {LOCAL_RUN_ANNOTATION: "true"}},
        "spec": spec,
    }


# ----- stand-ins in the pods' network namespace ------------------------------------


def _in_netns(argv: list[str]) -> list[str]:
    return ["ip", "netns", "exec", NETNS, *argv]


def start_standins(cluster: Cluster, say: Say) -> dict[str, str]:
    """(Re)start every provider's stand-in; returns provider -> key. A key is made once
    per cluster root and kept (0600), so adapters of an earlier run keep working."""
    root = cluster.paths.root
    keys: dict[str, str] = {}
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for p in PROVIDERS:
        name = f"standin-{p.name}"
        cluster.stop_extra(name)
        key_file, ready = root / f"{name}.key", root / f"{name}.port"
        if not key_file.exists():
            key_file.touch(mode=0o600)
            key_file.write_text(f"demo-{p.name}-" + secrets.token_urlsafe(24))
        key = key_file.read_text().strip()
        ready.unlink(missing_ok=True)
        argv = [sys.executable, "-m", p.module, "--port", str(p.port)]
        argv += ["--key-file", str(key_file), "--ready-file", str(ready)]
        cluster.start_extra(name, _in_netns(argv), env)
        keys[p.name] = key
    for p in PROVIDERS:
        ready = root / f"standin-{p.name}.port"
        story.wait_until(ready.exists, 30, f"{p.name} stand-in listening")
    say(
        "provider stand-ins listening in the pods' network namespace: "
        + ", ".join(f"{p.name} :{p.port}" for p in PROVIDERS)
        + " (strict wire formats; each key only in a 0600 file and a Secret)"
    )
    return keys


def stop_standins(cluster: Cluster) -> None:
    for p in PROVIDERS:
        cluster.stop_extra(f"standin-{p.name}")


def control(provider: str, method: str, path: str, body: Any = None) -> Any:
    """A stand-in's /_standin/* routes, called from inside the pods' namespace."""
    code = (
        "import sys,urllib.request as u;"
        "r=u.Request(sys.argv[1],method=sys.argv[2],data=sys.argv[3].encode() or None,"
        "headers={'Content-Type':'application/json'});"
        "print(u.urlopen(r,timeout=5).read().decode())"
    )
    url = f"http://127.0.0.1:{BY_NAME[provider].port}{path}"
    data = "" if body is None else json.dumps(body)
    out = subprocess.run(
        _in_netns([sys.executable, "-c", code, url, method, data]),
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    ).stdout
    return json.loads(out)


def apply_secrets(api: k8s.ApiClient, namespace: str, keys: dict[str, str]) -> None:
    core = k8s.CoreV1Api(api)
    for provider, key in keys.items():
        secret = k8s.V1Secret(
            metadata=k8s.V1ObjectMeta(name=BY_NAME[provider].secret),
            string_data={"api-key": key},
        )
        try:
            core.create_namespaced_secret(namespace, secret)
        except ApiException as exc:
            if exc.status != 409:
                raise
            core.replace_namespaced_secret(BY_NAME[provider].secret, namespace, secret)


def create_pools(api: k8s.ApiClient, namespace: str) -> None:
    for pool in HOSTED:
        story.create_or_update(api, namespace, "modelpools", pool_manifest(pool))
    story.create_or_update(api, namespace, "routingpolicies", POLICY)


# ----- the story ---------------------------------------------------------------------


def _post(
    router: str, prompt: str, tag: str | None, n: int
) -> tuple[int, dict[str, str], dict[str, Any]]:
    body: dict[str, Any] = {"prompt": prompt, "n": n, "steps": 2, "seed": 11}
    if tag:
        body["tags"] = [tag]
    req = urllib.request.Request(
        f"{router}/v1/images/generations",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "X-ModelFleet-Policy": POLICY_NAME},
    )
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.loads(err.read() or b"{}")


def _line(status: int, headers: dict[str, str], body: dict[str, Any], prompt: str) -> str:
    mf = body.get("modelfleet") or {}
    cost = headers.get("X-ModelFleet-Cost-USD")
    cost_text = f" cost=${float(cost):.6f}" if cost else ""
    err = f" error={body['error'].get('code')}" if "error" in body else ""
    return (
        f"{status} route={headers.get('X-ModelFleet-Route')} pool={headers.get('X-ModelFleet-Pool')}"
        f" fallback={headers.get('X-ModelFleet-Fallback')} images={len(body.get('data') or [])}"
        f" model={mf.get('model') or headers.get('X-ModelFleet-Model')}{cost_text}{err}  <- {prompt!r}"
    )


_SAMPLE = re.compile(r"^(modelfleet_router_(?:cost_usd|images)_total)\{([^}]*)\} (\S+)$")


def pool_costs(router: str, namespace: str) -> dict[str, tuple[float, float]]:
    """pool -> (USD, images) from the router's counters of answered requests."""
    with urllib.request.urlopen(f"{router}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out: dict[str, list[float]] = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
        if labels.get("namespace") != namespace:
            continue
        row = out.setdefault(labels.get("pool", "?"), [0.0, 0.0])
        row[0 if m.group(1).endswith("cost_usd_total") else 1] += float(m.group(3))
    return {pool: (usd, images) for pool, (usd, images) in out.items()}


def cost_table(
    costs: dict[str, tuple[float, float]], gpu_priced: Iterable[str] = DIFFUSERS
) -> list[str]:
    """The per-pool cost lines, hosted and diffusers alike (`gpu_priced`: the diffusers
    pools given with_gpu_price; others have no price)."""
    kinds = {p.name: f"{p.backend} {p.model}" for p in HOSTED}
    priced = set(gpu_priced)
    rows = [f"{'pool':<12} {'backend / model':<40} {'images':>6} {'USD':>9} {'USD/image':>9}"]
    for pool in sorted(costs, key=lambda k: (k not in kinds, k)):
        usd, images = costs[pool]
        per = f"{usd / images:.6f}" if images else "-"
        gpu = f"${GPU_HOUR_PRICE:g}/GPU-hour" if pool in priced else "no gpuHourPrice"
        kind = kinds.get(pool, f"diffusers ({gpu})")
        rows.append(f"{pool:<12} {kind:<40} {int(images):>6} {usd:>9.6f} {per:>9}")
    return rows


def _condition(pool: dict[str, Any], kind: str) -> dict[str, Any]:
    conditions = (pool.get("status") or {}).get("conditions") or []
    return next((dict(c) for c in conditions if c.get("type") == kind), {})


def quota_story(api: k8s.ApiClient, router: str, namespace: str, say: Say) -> bool:
    """Gemini's daily quota runs out: the adapter goes unready until midnight Pacific,
    the pool Degraded/QuotaExhausted, `texture` falls back to imagen; then a fresh
    adapter (the quota back) makes the pool Ready again."""
    custom, core = k8s.CustomObjectsApi(api), k8s.CoreV1Api(api)
    fault = {"kind": "quota", "count": None, "model": "gemini-3-pro-image-preview"}
    control("google", "POST", "/_standin/faults", fault)
    say(
        "google's stand-in now answers gemini-3-pro-image-preview RESOURCE_EXHAUSTED "
        "(daily quota; Imagen's quota is its own)"
    )
    prompt = "a rusty metal plate, seamless"
    status, headers, body = _post(router, prompt, "texture", 1)
    say("  " + _line(status, headers, body, prompt))
    ok = status == 200

    def degraded() -> dict[str, Any] | None:
        pool = custom.get_namespaced_custom_object(
            GROUP, VERSION, namespace, "modelpools", "nano-banana"
        )
        return pool if _condition(pool, "Degraded").get("reason") == "QuotaExhausted" else None

    t0 = time.monotonic()
    story.wait_until(degraded, 60, "nano-banana Degraded/QuotaExhausted")
    pool = degraded() or {}
    say(
        f"  nano-banana: {(pool.get('status') or {}).get('phase')} after "
        f"{time.monotonic() - t0:.0f}s: {_condition(pool, 'Degraded').get('message')}"
    )
    status, headers, body = _post(router, prompt, "texture", 1)
    say("  " + _line(status, headers, body, prompt))
    ok &= status == 200
    control("google", "DELETE", "/_standin/faults")
    pods = core.list_namespaced_pod(namespace, label_selector="modelfleet.io/pool=nano-banana")
    for pod in pods.items:
        core.delete_namespaced_pod(pod.metadata.name, namespace, grace_period_seconds=0)

    def ready() -> bool:
        pool = custom.get_namespaced_custom_object(
            GROUP, VERSION, namespace, "modelpools", "nano-banana"
        )
        return bool((pool.get("status") or {}).get("phase") == "Ready")

    story.wait_until(ready, 60, "nano-banana Ready again")
    say("  quota back (in the demo: a fresh adapter pod), nano-banana Ready again")
    return ok


def run_story(
    api: k8s.ApiClient,
    router: str,
    namespace: str,
    say: Say,
    gpu_priced: Iterable[str] = DIFFUSERS,
) -> bool:
    """Requests across the fleet, a 429 storm on Ideogram, Gemini's daily quota running
    out, then cost per pool. True when every request was answered 200 (the storm's and
    the quota's through the fallbacks)."""
    ok = True
    say(
        f"mixed fleet (RoutingPolicy {POLICY_NAME}): quoted text -> ideogram (V_3, TURBO), "
        "tag final -> imagen, texture -> nano-banana (gemini-3-pro-image-preview), hero -> "
        "gpt-image, the rest -> production (diffusers); each with a fallback"
    )
    for prompt, tag, n in TRAFFIC:
        status, headers, body = _post(router, prompt, tag, n)
        ok &= status == 200
        say("  " + _line(status, headers, body, prompt))
    control(
        "ideogram",
        "POST",
        "/_standin/faults",
        {"kind": "rate_limit", "count": None, "retry_after_s": 30},
    )
    say(
        "ideogram's stand-in now answers every call 429 (Retry-After 30): the adapter answers 429 at once, the router falls back"
    )
    served: dict[str, int] = {}
    for i in range(4):
        prompt = f'a shop window that says "OPEN {i}"'
        status, headers, body = _post(router, prompt, None, 1)
        ok &= status == 200
        pool = headers.get("X-ModelFleet-Pool", "?")
        served[pool] = served.get(pool, 0) + 1
        say("  " + _line(status, headers, body, prompt))
    calls = control("ideogram", "GET", "/_standin/calls")["calls"]
    limited = sum(1 for c in calls if c["status"] == 429)
    say(
        f"  429 storm: {sum(served.values())} typography requests answered by "
        + ", ".join(f"{k} x{v}" for k, v in sorted(served.items()))
        + f"; the provider saw {limited} rate-limited call(s), not one per request"
    )
    control("ideogram", "DELETE", "/_standin/faults")
    ok &= quota_story(api, router, namespace, say)
    say("cost per pool (router counters, answered requests):")
    for row in cost_table(pool_costs(router, namespace), gpu_priced):
        say("  " + row)
    return ok


# ----- alone ---------------------------------------------------------------------------


def main() -> int:
    from modelfleet_dev import bootstrap

    say: Say = lambda m: print(f"[fleet] {m}", flush=True)  # noqa: E731
    cluster = Cluster()
    if not cluster.is_up():
        raise SystemExit("[fleet] the local cluster is not running: `modelfleet dev up` first")
    api = bootstrap.api_client(cluster.paths.kubeconfig)
    namespace = os.environ.get("MODELFLEET_FLEET_NAMESPACE", "modelfleet-fleet")
    port = int(os.environ.get("MODELFLEET_FLEET_ROUTER_PORT", "18180"))
    router = f"http://127.0.0.1:{port}"
    env = {**os.environ, "KUBECONFIG": str(cluster.paths.kubeconfig)}
    core = k8s.CoreV1Api(api)
    try:
        core.create_namespace({"metadata": {"name": namespace}})
    except ApiException as exc:
        if exc.status != 409:
            raise
    bootstrap.wait_default_service_account(api, namespace)
    t0 = time.monotonic()
    keys = start_standins(cluster, say)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "modelfleet.cli", *argv],
            env=env,
            stdout=(cluster.paths.logs / f"fleet-{argv[0]}.log").open("ab"),
            stderr=subprocess.STDOUT,
        )
        for argv in (
            [
                "router",
                "--kube",
                "--client-auth",
                "off",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            ["operator", "--router-url", router],
        )
    ]
    try:
        model_dir = story.ensure_tiny_model(cluster.paths.root, say)
        for name in DIFFUSERS:
            manifest = with_gpu_price(story.pool_manifest(name, str(model_dir)))
            story.create_or_update(api, namespace, "modelpools", manifest)
        apply_secrets(api, namespace, keys)
        create_pools(api, namespace)
        custom = k8s.CustomObjectsApi(api)

        def ready() -> bool:
            items = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "modelpools")
            phases = [(p.get("status") or {}).get("phase") for p in items["items"]]
            return len(phases) == len(HOSTED) + 2 and all(ph == "Ready" for ph in phases)

        story.wait_until(ready, 180, "fleet pools Ready")

        def serves() -> bool:
            for name, proc in zip(("router", "operator"), procs, strict=True):
                if proc.poll() is not None:
                    raise SystemExit(
                        f"[fleet] the {name} exited {proc.returncode}: see "
                        f"{cluster.paths.logs / f'fleet-{name}.log'}"
                    )
            try:
                return _post(router, "x", None, 1)[0] == 200
            except OSError:  # not listening yet
                return False

        story.wait_until(serves, 60, "router serves the fleet")
        say(f"{len(HOSTED)} hosted + 2 diffusers pools Ready in {time.monotonic() - t0:.0f}s")
        ok = run_story(api, router, namespace, say)
        say(f"done in {time.monotonic() - t0:.0f}s")
        return 0 if ok else 1
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(30)
        # The namespace goes with its pods (the pod runner stops their processes).
        with contextlib.suppress(ApiException):
            core.delete_namespace(namespace)
        stop_standins(cluster)


if __name__ == "__main__":
    sys.exit(main())
