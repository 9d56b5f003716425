"""Every manifest in examples/ applied on the local cluster and brought to the state its
comment promises (kopf's examples-as-e2e pattern): one test per file, and a guard that
fails when an example has no test.

What the local cluster cannot show, and so no test claims: the local GPU nodes are kwok
fakes, so the ModelPool examples' pods become Ready without running a process, and no
model is fetched from pvc://, s3:// or hf:// (no weights, no network). The routing and
canary examples are served for real: their manifests are applied verbatim in a namespace
whose pools of the same names run tiny-model workers under the local pod runner."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from kubernetes import client as k8s
from kubernetes.client.rest import ApiException
from prometheus_client.parser import text_string_to_metric_families

from conftest import REPO, LocalCluster
from fixtures import Case, Given, scenario
from modelfleet_dev.story import create_or_update, pool_manifest
from polling import wait_for, wait_for_async
from text_world import TEXT_IMAGE, text_pool
from worker_fixtures import tiny_model_dir
from world import PROBE_BODY, Fleet, PrometheusProcess, load_manifests, start_fleet

pytestmark = [pytest.mark.e2e, pytest.mark.cluster, pytest.mark.timeout(600)]
EXAMPLES = REPO / "examples"
NS = "e2e-examples"
G, V = "modelfleet.io", "v1alpha1"
# The pools the routing and canary examples name, each backed by real tiny-model workers.
BACKING = ["preview", "production", "typography", "production-v2"]
TESTED: dict[str, Callable[..., None]] = {}


def example(name: str) -> list[dict[str, Any]]:
    return load_manifests(EXAMPLES / name)


def covers(filename: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    def mark(test: Callable[..., None]) -> Callable[..., None]:
        TESTED[filename] = test
        return test

    return mark


@pytest.fixture(scope="module")
def fleet(cluster: LocalCluster, operator: Any) -> Iterator[Fleet]:
    model = str(tiny_model_dir())
    pools = [pool_manifest(name, model) for name in BACKING]
    ready_policy = example("routingpolicy.yaml")[0]
    with start_fleet(cluster, operator, NS, pools, ready_policy) as f:
        yield f


@pytest.fixture
def given(fleet: Fleet) -> Iterator[Given]:
    with scenario(fleet) as g:
        yield g


def test_every_example_has_a_test() -> None:
    files = sorted(p.name for p in EXAMPLES.glob("*.yaml"))
    assert files, "no examples found"
    assert sorted(TESTED) == files, f"untested: {set(files) - set(TESTED)}"


# ---- ModelPools: fresh namespace each, pods on the fake GPU nodes -----------------------


def _apply_pool_example(cluster: LocalCluster, namespace: str, name: str) -> dict[str, Any]:
    [doc] = example(name)
    create_or_update(cluster.api, namespace, "modelpools", doc)
    pool = doc["metadata"]["name"]
    custom = k8s.CustomObjectsApi(cluster.api)

    def ready() -> dict[str, Any] | None:
        obj = custom.get_namespaced_custom_object(G, V, namespace, "modelpools", pool)
        status: dict[str, Any] = obj.get("status") or {}
        replicas = doc["spec"]["replicas"]
        return (
            status
            if status.get("phase") == "Ready" and status.get("readyReplicas") == replicas
            else None
        )

    wait_for(ready, timeout=120, interval=0.5, what=f"{name}: {pool} Ready at full size")
    return doc


def _worker(cluster: LocalCluster, namespace: str, pool: str) -> tuple[Any, dict[str, str]]:
    dep = k8s.AppsV1Api(cluster.api).read_namespaced_deployment(pool, namespace)
    container = dep.spec.template.spec.containers[0]
    return dep, {e.name: e.value for e in container.env if e.value is not None}


def _pods(cluster: LocalCluster, namespace: str, pool: str) -> list[Any]:
    core = k8s.CoreV1Api(cluster.api)
    return list(
        core.list_namespaced_pod(namespace, label_selector=f"modelfleet.io/pool={pool}").items
    )


@covers("modelpool-preview.yaml")
def test_modelpool_preview(cluster: LocalCluster, operator: Any, namespace: str) -> None:
    """A distilled model for fast previews, read from the `models` volume claim."""
    core = k8s.CoreV1Api(cluster.api)
    pv = f"models-{namespace}"[:63]
    # The example assumes a claim `models` holding the weights; bind one to a local volume.
    core.create_persistent_volume(
        {
            "metadata": {"name": pv},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadOnlyMany"],
                "storageClassName": "",
                "hostPath": {"path": "/tmp/modelfleet-e2e-models"},
                "claimRef": {"namespace": namespace, "name": "models"},
            },
        }
    )
    try:
        core.create_namespaced_persistent_volume_claim(
            namespace,
            {
                "metadata": {"name": "models"},
                "spec": {
                    "accessModes": ["ReadOnlyMany"],
                    "storageClassName": "",
                    "volumeName": pv,
                    "resources": {"requests": {"storage": "1Gi"}},
                },
            },
        )
        _apply_pool_example(cluster, namespace, "modelpool-preview.yaml")
        dep, env = _worker(cluster, namespace, "preview")
        assert env["MODELFLEET_WORKER_MODEL"] == "file:///models/sdxl-turbo"
        assert (env["MODELFLEET_WORKER_FAMILY"], env["MODELFLEET_WORKER_DTYPE"]) == (
            "sdxl",
            "float16",
        )
        assert (
            env["MODELFLEET_WORKER_MAX_BATCH_SIZE"],
            env["MODELFLEET_WORKER_MAX_LATENCY_MS"],
        ) == ("8", "40")
        assert (env["MODELFLEET_WORKER_MAX_RESOLUTION"], env["MODELFLEET_WORKER_MAX_STEPS"]) == (
            "768",
            "8",
        )
        claims = [v.persistent_volume_claim for v in dep.spec.template.spec.volumes]
        assert [(c.claim_name, c.read_only) for c in claims if c] == [("models", True)]
        assert not dep.spec.template.spec.init_containers, "a claim needs no fetch step"
        pods = _pods(cluster, namespace, "preview")
        assert len(pods) == 2 and all(p.spec.node_name for p in pods)
    finally:
        core.delete_persistent_volume(pv)


@covers("modelpool-production.yaml")
def test_modelpool_production(cluster: LocalCluster, operator: Any, namespace: str) -> None:
    """The large default model for final renders, with an explicit VAE of its family:
    three GPU pods, the model and the VAE fetched (revision pinned) before the worker starts."""
    _apply_pool_example(cluster, namespace, "modelpool-production.yaml")
    dep, env = _worker(cluster, namespace, "production")
    assert env["MODELFLEET_WORKER_MODEL"] == "s3://models/sdxl-base-1.0"
    assert env["MODELFLEET_WORKER_REVISION"] == "2024-06-01"
    assert env["MODELFLEET_WORKER_VAE"] == "s3://models/sdxl-vae-fp16-fix"
    assert env["MODELFLEET_WORKER_MEMORY_AWARE"] == "true"
    assert env["MODELFLEET_WORKER_CHANNELS_LAST"] == "true"  # spec.worker.env passed through
    assert env["HF_HUB_OFFLINE"] == "1", "the worker only reads what the fetch step wrote"
    [fetch] = dep.spec.template.spec.init_containers
    assert fetch.args[:2] == ["--model", "s3://models/sdxl-base-1.0"]
    assert fetch.args[-2:] == ["--revision", "2024-06-01"]
    pods = _pods(cluster, namespace, "production")
    assert len(pods) == 3
    for pod in pods:
        limits = pod.spec.containers[0].resources.limits
        assert limits["nvidia.com/gpu"] == "1"
    # Its VAE is of its family: the API refuses a VAE of another family.
    bad = example("modelpool-production.yaml")[0]
    bad["metadata"]["name"] = "production-wrong-vae"
    bad["spec"]["model"]["vae"]["family"] = "sd15"
    with pytest.raises(ApiException) as err:
        k8s.CustomObjectsApi(cluster.api).create_namespaced_custom_object(
            G, V, namespace, "modelpools", bad
        )
    assert err.value.status == 422 and "vae" in str(err.value.body).lower(), err.value.body


@covers("modelpool-typography.yaml")
def test_modelpool_typography(cluster: LocalCluster, operator: Any, namespace: str) -> None:
    """A text-faithful model (SD 3.5 from the Hub) on H100 nodes only."""
    _apply_pool_example(cluster, namespace, "modelpool-typography.yaml")
    dep, env = _worker(cluster, namespace, "typography")
    assert env["MODELFLEET_WORKER_MODEL"] == "hf://stabilityai/stable-diffusion-3.5-medium"
    assert (env["MODELFLEET_WORKER_FAMILY"], env["MODELFLEET_WORKER_DTYPE"]) == ("sd3", "bfloat16")
    product = "NVIDIA-H100-80GB-HBM3"
    assert dep.spec.template.spec.node_selector == {"nvidia.com/gpu.product": product}
    core = k8s.CoreV1Api(cluster.api)
    pods = _pods(cluster, namespace, "typography")
    assert len(pods) == 2
    for pod in pods:
        node = core.read_node(pod.spec.node_name)
        assert node.metadata.labels.get("nvidia.com/gpu.product") == product


def _hosted_example(cluster: LocalCluster, namespace: str, name: str, backend: str) -> None:
    """A hosted pool: CPU-only adapter pods, the key only by Secret reference."""
    [doc] = example(name)
    provider = doc["spec"]["provider"]
    secret, key = provider["credentials"]["name"], provider["credentials"]["key"]
    core = k8s.CoreV1Api(cluster.api)
    core.create_namespaced_secret(
        namespace,
        {"metadata": {"name": secret}, "stringData": {key: "sk-example-never-shown"}},
    )
    _apply_pool_example(cluster, namespace, name)
    pool = doc["metadata"]["name"]
    dep = k8s.AppsV1Api(cluster.api).read_namespaced_deployment(pool, namespace)
    spec = dep.spec.template.spec
    [c] = spec.containers
    assert c.command == ["modelfleet-worker", "serve"]
    assert c.args[:4] == ["--backend", backend, "--provider-model", provider["model"]]
    assert "nvidia.com/gpu" not in (c.resources.limits or {}), c.resources.limits
    assert not spec.node_selector and not spec.init_containers
    assert not any(t.key == "nvidia.com/gpu" for t in spec.tolerations or [])
    [api_key] = [e for e in c.env if e.name == "MODELFLEET_PROVIDER_API_KEY"]
    ref = api_key.value_from.secret_key_ref
    assert (api_key.value, ref.name, ref.key) == (None, secret, key)
    assert "sk-example-never-shown" not in json.dumps(dep.to_dict(), default=str)
    assert len(_pods(cluster, namespace, pool)) == doc["spec"]["replicas"]


@covers("modelpool-ideogram.yaml")
def test_modelpool_ideogram(cluster: LocalCluster, operator: Any, namespace: str) -> None:
    """Ideogram V_3 as the typography specialist, behind a CPU-only adapter."""
    _hosted_example(cluster, namespace, "modelpool-ideogram.yaml", "ideogram")


@covers("modelpool-openai.yaml")
def test_modelpool_openai(cluster: LocalCluster, operator: Any, namespace: str) -> None:
    """OpenAI's gpt-image-1 for final renders, with a per-pool price override."""
    _hosted_example(cluster, namespace, "modelpool-openai.yaml", "openai")
    dep = k8s.AppsV1Api(cluster.api).read_namespaced_deployment("openai-gpt-image", namespace)
    env = {e.name: e.value for e in dep.spec.template.spec.containers[0].env}
    assert json.loads(env["MODELFLEET_WORKER_PRICE_OVERRIDES"]) == [
        {"quality": "high", "size": "1024x1024", "usd_per_image": 0.167}
    ]


@covers("modelpool-autoscaled.yaml")
def test_modelpool_autoscaled(cluster: LocalCluster, operator: Any, namespace: str) -> None:
    """A pool that follows demand, 0 to 4 replicas: admitted with one replica, its
    bounds enforced on the scale subresource that `kubectl scale` and an HPA use."""
    [doc] = example("modelpool-autoscaled.yaml")
    create_or_update(cluster.api, namespace, "modelpools", doc)
    custom = k8s.CustomObjectsApi(cluster.api)
    name = doc["metadata"]["name"]

    def running() -> bool:
        st = (
            custom.get_namespaced_custom_object(G, V, namespace, "modelpools", name).get("status")
            or {}
        )
        return bool(st.get("readyReplicas") == 1)

    wait_for(running, timeout=120, interval=0.5, what=f"{name} at its one ready replica")
    scale = custom.get_namespaced_custom_object_scale(G, V, namespace, "modelpools", name)
    assert scale["spec"].get("replicas", 0) == 1, scale
    with pytest.raises(ApiException) as err:
        custom.patch_namespaced_custom_object_scale(
            G, V, namespace, "modelpools", name, {"spec": {"replicas": 9}}
        )
    assert err.value.status == 422 and "spec.replicas" in str(err.value.body), err.value.body


# ---- RoutingPolicies: served for real by tiny-model pools of the names they use ---------


@covers("routingpolicy.yaml")
def test_routingpolicy_images(given: Given) -> None:
    """Typography briefs to the text-faithful pool, previews to the distilled pool,
    everything else to production; each with a conservative fallback."""
    quoted = 'a poster that says "SALE NOW"'
    (
        given.manifests(example("routingpolicy.yaml"))
        .when().pools_serving("typography", "preview", "production")
        .apply().wait_for_policy_ready("images").wait_for_router_knows("images")
        .then().routes("images", [
            Case(quoted, "typography", "typography"),
            Case("our logo on a mug", "typography", "typography"),
            Case("a card with the exact text Happy Birthday", "typography", "typography"),
            Case("a lighthouse", "preview", "preview", fields={"tier": "preview"}),
            Case("a lighthouse", "preview", "preview", headers={"X-ModelFleet-Tier": "preview"}),
            Case("a lighthouse", "default", "production"),
        ])
        # typography and previews fall back to production
        .when().pool_scaled("typography", 0).pool_scaled("preview", 0)
        .wait_for_no_ready_endpoints("typography").wait_for_no_ready_endpoints("preview")
        .then().routes("images", [
            Case(quoted, "typography", "production", fallback=True),
            Case("a lighthouse", "preview", "production", fallback=True, fields={"tier": "preview"}),
        ])
        # production falls back to previews
        .when().pools_serving("preview").pool_scaled("production", 0)
        .wait_for_no_ready_endpoints("production")
        .then().routes("images", [Case("a lighthouse", "default", "preview", fallback=True)])
        .when().pool_scaled("production", 1).pool_scaled("typography", 1)  # back, not awaited
    )  # fmt: skip


@covers("routingpolicy-tiers.yaml")
def test_routingpolicy_tiers(given: Given) -> None:
    """Previews to the distilled pool, production (the default tier) to the large model;
    each falls back to the other; 5% of production traffic is mirrored to previews; under
    load production is served first and a full queue sheds the newest preview."""
    (
        given.manifests(example("routingpolicy-tiers.yaml"))
        .when().pools_serving("preview", "production")
        .apply().wait_for_policy_ready("tiers").wait_for_router_knows("tiers")
        .then().routes("tiers", [
            Case("a lighthouse", "preview", "preview", fields={"tier": "preview"}),
            Case("a lighthouse", "preview", "preview", headers={"X-ModelFleet-Tier": "preview"}),
            Case("a lighthouse", "production", "production"),
            Case("a lighthouse", "production", "production", fields={"tier": "production"}),
        ])
        # 400 requests, 5% mirrored: 20 expected; none at all has odds of 1e-9, 50 is 7 sigma.
        .shadowed("tiers", "preview", n=400, low=1, high=50)
        .when().pool_scaled("preview", 0).wait_for_no_ready_endpoints("preview")
        .then().routes("tiers", [
            Case("a lighthouse", "preview", "production", fallback=True, fields={"tier": "preview"}),
        ])
        .when().pools_serving("preview").pool_scaled("production", 0)
        .wait_for_no_ready_endpoints("production")
        .then().routes("tiers", [Case("a lighthouse", "production", "preview", fallback=True)])
        .when().pools_serving("production")
    )  # fmt: skip
    sheds_newest_preview(given.s.fleet, "tiers", in_flight=32, queue=128)


def sheds_newest_preview(fleet: Fleet, policy: str, in_flight: int, queue: int) -> None:
    """Under load production goes first: with the preview workers frozen (SIGSTOP, a
    stuck worker), previews fill the policy's slots and queue; one more preview is
    refused at once, and a production request still gets in by shedding the newest
    queued preview. Once the workers thaw, production is served ahead of the queue."""
    [pod] = [
        p
        for p in fleet.core.list_namespaced_pod(
            NS, label_selector="modelfleet.io/pool=preview"
        ).items
        if not p.metadata.deletion_timestamp
    ]
    groups = worker_process_groups(pod.status.pod_ip)
    assert groups, f"no local process serves {pod.status.pod_ip}"
    for g in groups:
        os.killpg(g, signal.SIGSTOP)
    try:
        asyncio.run(_saturate(fleet, policy, in_flight, queue, groups))
    finally:
        for g in groups:
            os.killpg(g, signal.SIGCONT)


def worker_process_groups(pod_ip: str) -> set[int]:
    """The local pod runner's process groups for the pod at `pod_ip`."""
    marker = f"MODELFLEET_POD_IP={pod_ip}".encode()
    out = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if marker in (proc / "environ").read_bytes().split(b"\0"):
                out.add(os.getpgid(int(proc.name)))
        except (OSError, ProcessLookupError):
            continue
    return out


async def _saturate(
    fleet: Fleet, policy: str, in_flight: int, queue: int, groups: set[int]
) -> None:
    url = fleet.router.url
    headers = {"Content-Type": "application/json", "X-ModelFleet-Policy": policy}

    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=120)
    ) as http:

        async def post(tier: str) -> tuple[int, str, float]:
            data = json.dumps({"prompt": "a lighthouse", "size": "64x64", "steps": 2, "tier": tier})
            async with http.post(url + "/v1/images/generations", data=data, headers=headers) as r:
                doc = await r.json(content_type=None)
                return r.status, (doc.get("error") or {}).get("code", ""), time.monotonic()

        async def gauges() -> tuple[float, float]:
            async with http.get(url + "/metrics") as r:
                text = await r.text()
            got = {"modelfleet_router_in_flight": 0.0, "modelfleet_router_queue_depth": 0.0}
            for fam in text_string_to_metric_families(text):
                for smp in fam.samples:
                    if smp.name in got and smp.labels.get("policy") == policy:
                        got[smp.name] += smp.value
            return got["modelfleet_router_in_flight"], got["modelfleet_router_queue_depth"]

        # All but one, then the last alone: that one is the newest in the queue.
        older = [asyncio.create_task(post("preview")) for _ in range(in_flight + queue - 1)]
        await wait_for_async(gauges, until=lambda g: g == (in_flight, queue - 1), timeout=30,
                             interval=0.05, what="slots taken, queue one short of full")  # fmt: skip
        newest = asyncio.create_task(post("preview"))
        await wait_for_async(gauges, until=lambda g: g == (in_flight, queue), timeout=30,
                             interval=0.05, what="slots taken, queue full")  # fmt: skip
        assert (await post("preview"))[:2] == (429, "overloaded"), "a preview beyond a full queue"
        production = asyncio.create_task(post("production"))
        shed = await asyncio.wait_for(newest, timeout=10)
        assert shed[:2] == (429, "overloaded"), f"the newest preview was not shed: {shed}"
        assert not any(t.done() for t in older), "an older preview left the queue"
        for g in groups:
            os.killpg(g, signal.SIGCONT)
        prod = await production
        previews = await asyncio.gather(*older)
    assert prod[0] == 200, f"production request: {prod}"
    codes = {(status, code) for status, code, _ in previews}
    assert codes <= {(200, ""), (429, "queue_timeout")}, codes
    before = [t for status, _, t in previews if status == 200 and t < prod[2]]
    # Only previews already holding a slot may finish first; a FIFO queue would put
    # production behind the other queued previews as well.
    assert len(before) <= in_flight, f"{len(before)} previews served before production"


@covers("routingpolicy-typography.yaml")
def test_routingpolicy_typography(given: Given) -> None:
    """Typography briefs (by tag, by header, by prompt) to the text-faithful pool,
    everything else to production; typography falls back to production, production
    to previews."""
    (
        given.manifests(example("routingpolicy-typography.yaml"))
        .when().pools_serving("typography", "production", "preview")
        .apply().wait_for_policy_ready("typography").wait_for_router_knows("typography")
        .then().routes("typography", [
            Case("a shop window", "typography-by-tag", "typography", fields={"tags": ["typography"]}),
            Case("a shop window", "typography-by-header", "typography",
                 headers={"X-ModelFleet-Intent": "typography"}),
            Case("banner, exact text: SALE NOW", "typography-by-prompt", "typography"),
            Case('a mug with "Good Morning" on it', "typography-by-prompt", "typography"),
            Case("a wordmark for a bakery", "typography-by-prompt", "typography"),
            Case("a photo of a cat on a sofa", "default", "production"),
        ])
        .when().pool_scaled("typography", 0).wait_for_no_ready_endpoints("typography")
        .then().routes("typography", [
            Case("a shop window", "typography-by-tag", "production", fallback=True,
                 fields={"tags": ["typography"]}),
            Case("banner, exact text: SALE NOW", "typography-by-prompt", "production", fallback=True),
        ])
        .when().pool_scaled("production", 0).wait_for_no_ready_endpoints("production")
        .then().routes("typography", [
            Case("a photo of a cat on a sofa", "default", "preview", fallback=True),
        ])
        .when().pool_scaled("production", 1).pool_scaled("typography", 1)  # back, not awaited
    )  # fmt: skip


# ---- Canaries: the swap of the `images` policy's default route --------------------------

CANARY_POOLS = ("production", "typography", "preview")


@covers("canary.yaml")
def test_canary(given: Given) -> None:
    """Swap the default route from production to production-v2 in four steps, judged by
    the routers' own metrics. Applied verbatim it starts at 10% and the router splits
    90/10. Its 5 min interval would make the whole swap take 20 minutes: the interval is
    then shortened to 20 s, and minRequests to a little less than what a 10% share brings
    in that time on a busy 2-core host (~6 requests/s: 12, so 10; with 20, two runs on a
    loaded host paused at 10% for lack of data, 5 and 13 candidate requests a window)
    (the two changes), and the swap runs to the end. production-v2 is the stable's
    model, so its service time per image must pass the rank test at every step, 100%
    included (judged against the stable's reference sample)."""
    [canary] = example("canary.yaml")
    then = (
        given.manifests(example("routingpolicy.yaml")).manifest(canary)
        .when().deleted("canaries", "production-v2").pools_serving(*CANARY_POOLS)
        .pools_serving("production-v2", replicas=2)
        .apply()
        .wait_for_status("production-v2", lambda s: s.get("canaryWeight") == 10, "step 1 of 4 at 10%")
        .then().phase("production-v2", "Progressing").step("production-v2", 0)
        .compiled_pools("images", [{"pool": "production", "weight": 90},
                                   {"pool": "production-v2", "weight": 10}], route=2)
        # 10%: 400 requests, 4 sigma either side
        .candidate_share("images", "production-v2", n=400, low=0.04, high=0.16,
                         body=PROBE_BODY, status=400)
        .when().load_runs("images", clients=4).canary_patched("production-v2", {"interval": "20s", "analysis": {"minRequests": 10}})
        .wait_for_phase("production-v2", "Succeeded", timeout=300, interval=0.5)
        .load_stops()
        .then().passed_steps("production-v2", [0, 1, 2, 3])
        .history_weights("production-v2", [10, 30, 60, 100])
        .route_pool("images", "production-v2", route=2)
        .no_server_errors()
    )  # fmt: skip
    for record in then.status("production-v2")["history"]:
        st = {m["name"]: m for m in record["metrics"]}["service-time"]
        # The same model passes every window. (CI once read one 10% window as 1.213x
        # slower: a few percent from the busier neighbour, straddling a bound of the old
        # x1.26 buckets; the buckets are now x1.12, finer than the 1.2 limit.)
        if record["weight"] == 100:  # the stable idle: not judged against earlier minutes
            assert st["result"] == "inconclusive" and st.get("informational"), st
            assert "in this window (100%)" in st["message"], st
            continue
        assert (st["method"], st["result"]) == ("mann-whitney", "pass"), (record["weight"], st)
        assert st["samples"] >= 8 and st["stableSamples"] >= 8, st


@covers("canary-prometheus.yaml")
def test_canary_prometheus(given: Given, fleet: Fleet, tmp_path: Path) -> None:
    """The same swap judged by Prometheus, with one custom PromQL check (the workers'
    OOM rate). Prometheus here is a local one scraping the router and the workers, with
    the labels a ServiceMonitor would add; its address is one change. The example's 2 min
    interval is shortened to 30 s, with minRequests to match (the other changes), and the
    first step's analysis is what the test waits for."""
    [canary] = example("canary-prometheus.yaml")
    name = canary["metadata"]["name"]
    when = (
        given.manifests(example("routingpolicy.yaml"))
        .when()
        .deleted("canaries", "production-v2")
        .deleted("canaries", name)
        .pools_serving(*CANARY_POOLS)
        .pools_serving("production-v2", replicas=2)
    )
    workers = [
        (f"{pod.status.pod_ip}:8080", {"namespace": NS, "pool": pool})
        for pool in ("production", "production-v2")
        for pod in fleet.core.list_namespaced_pod(
            NS, label_selector=f"modelfleet.io/pool={pool}"
        ).items
        if pod.status.pod_ip and not pod.metadata.deletion_timestamp
    ]
    prom = PrometheusProcess(
        tmp_path, {"router": [(f"127.0.0.1:{fleet.router.port}", {})], "workers": workers}
    )
    canary["spec"]["analysis"]["provider"]["address"] = prom.url
    canary["spec"]["interval"] = "30s"
    # A 10% share of ~6 requests/s brings ~18 requests in 30 s: minRequests 15. A thinner
    # window holds the step (inconclusive) and the next one judges, so the test waits for
    # the step to pass rather than for the first analysis (CI saw one hold at 25).
    canary["spec"]["analysis"]["minRequests"] = 15
    then = (
        when.given().prometheus(prom).manifest(canary)
        .when().prometheus_starts().load_runs("images", clients=4).apply()
        .wait_for_status(name, lambda s: s.get("canaryWeight") == 30, "step 1 at 30%",
                         timeout=240, interval=0.5)
        .load_stops()
        .then().step(name, 1).weight(name, 30)  # passed: on to 30%
    )  # fmt: skip
    first = [h for h in then.status(name)["history"] if h["step"] == 0][-1]
    assert (first["step"], first["weight"], first["result"]) == (0, 10, "pass"), first
    checks = {m["name"]: m for m in first["metrics"]}
    assert sorted(checks) == ["oom-rate", "p99", "service-time"], first
    p99, oom, st = checks["p99"], checks["oom-rate"], checks["service-time"]
    # p99 of the candidate from the routers' histograms in Prometheus, against its absolute max
    assert p99["samples"] >= 15, p99  # minRequests
    assert (p99["threshold"], p99["result"]) == (15, "pass") and 0 < p99["value"] <= 15, p99
    # service time per image from the routers' histograms by batch size: the rank test
    # against the stable's reference sample
    assert (st["method"], st["result"]) == ("mann-whitney", "pass"), st
    assert st["samples"] >= 8 and st["stableSamples"] >= 8 and st["pValue"] is not None, st
    # the custom PromQL check ran against the candidate workers' own series
    assert (oom["value"], oom["result"], oom["threshold"]) == (0, "pass", 0.01), oom
    then.when().deleted("canaries", name)


# ---- The typography canary: a pre-flight replay before any traffic moves ---------------


def _serves_text(fleet: Fleet, pool: str) -> bool:
    """Every ready endpoint of `pool` is a text-drawing worker (none it replaced is left)."""
    pods = fleet.core.list_namespaced_pod(NS, label_selector=f"modelfleet.io/pool={pool}").items
    text = {
        p.status.pod_ip
        for p in pods
        if p.spec.containers[0].image.startswith(TEXT_IMAGE) and not p.metadata.deletion_timestamp
    }
    slices = k8s.DiscoveryV1Api(fleet.cluster.api).list_namespaced_endpoint_slice(
        NS, label_selector=f"kubernetes.io/service-name={pool}"
    )
    ready = {
        a for s in slices.items for ep in s.endpoints or [] if ep.conditions.ready
        for a in ep.addresses
    }  # fmt: skip
    return bool(ready) and ready <= text


@covers("canary-typography.yaml")
def test_canary_typography(given: Given, fleet: Fleet) -> None:
    """A candidate that mangles its lettering never receives a request: applied verbatim
    (the golden ConfigMap and the Canary) with `typography` and `typography-v2` drawing the
    text they are asked for (modelfleet_dev.textrender: the stable right, the candidate with
    a word mangled in every render), the replay renders 4 prompts x 2 seeds on each pool,
    the OCR reads them, and the canary goes from Pending to RolledBack (ReplayFailed), both
    scores in its message, its weight 0 in its status and in the compiled route throughout."""
    golden, canary = example("canary-typography.yaml")
    name, spec = canary["metadata"]["name"], canary["spec"]
    stable, candidate, model = spec["stablePool"], spec["candidatePool"], str(tiny_model_dir())
    pinned_before = fleet.router_counter(
        "modelfleet_router_pinned_requests_total", namespace=NS, pool=candidate
    )
    weights: set[int] = set()

    def rolled_back(status: dict[str, Any]) -> bool:
        weights.add(status.get("canaryWeight") or 0)
        routes = fleet.policy(spec["routingPolicy"])["status"]["routes"]
        [route] = [r for r in routes if r["name"] == spec["route"]]
        weights.update(p["weight"] for p in route["pools"] if p["pool"] == candidate)
        return status.get("phase") == "RolledBack"

    try:
        fleet.apply(text_pool(stable, model, 0.0))  # the tiny-model pool, now drawing text
        fleet.apply(text_pool(candidate, model, 1.0))
        for pool in (stable, candidate):
            serves = functools.partial(_serves_text, fleet, pool)
            wait_for(serves, timeout=60, interval=0.5, what=f"{pool} served by text workers")
        fleet.core.create_namespaced_config_map(NS, golden)
        then = (
            given.manifest(canary).when().deleted("canaries", name).apply()
            .wait_for_status(name, rolled_back, "RolledBack by the replay", timeout=90,
                             interval=0.2)
            .then().never_saw(name, {"Progressing", "Paused", "Succeeded"})
            .event_seen("Canary", name, "ReplayFailed", "Warning")
        )  # fmt: skip
        status = then.status(name)
    finally:
        fleet.delete("canaries", name)
        fleet.delete("modelpools", candidate)
        with contextlib.suppress(ApiException):  # absent if the test failed before it
            fleet.core.delete_namespaced_config_map(golden["metadata"]["name"], NS)
        restore = pool_manifest(stable, model)
        restore["spec"]["image"] = None  # a merge patch: back to the tiny model, not awaited
        fleet.apply(restore)
    assert weights == {0}, f"{name}: the candidate got weight {weights}"
    assert not status.get("history") and status.get("currentStep") is None, status
    [progressing] = [c for c in status["conditions"] if c["type"] == "Progressing"]
    assert progressing["reason"] == "ReplayFailed", progressing
    r = status["replay"]
    assert (r["result"], r["attempts"], r["golden"]["prompts"]) == ("fail", 1, 4), r
    s, c = r["stable"], r["candidate"]
    assert (s["renders"], s["verified"], s["passRate"]) == (8, 8, 1.0), s
    assert (c["renders"], c["verified"], c["passRate"]) == (8, 8, 0.0), c
    assert s["meanWordAccuracy"] == 1.0 and c["meanWordAccuracy"] < 0.9, r
    found = re.search(
        r"replay: candidate word accuracy ([0-9.]+) < 0\.9 x stable ([0-9.]+) \(8 renders each\)",
        status["message"],
    )
    assert found, status["message"]
    assert float(found.group(1)) == pytest.approx(c["meanWordAccuracy"], abs=0.005), r
    assert float(found.group(2)) == pytest.approx(s["meanWordAccuracy"], abs=0.005), r
    # The candidate's renders were the replay's, pinned: 8, and nothing of the route's.
    pinned = fleet.router_counter(
        "modelfleet_router_pinned_requests_total", namespace=NS, pool=candidate
    )
    assert pinned - pinned_before == 8
    assert fleet.operator_token_file is not None
    assert fleet.operator_token_file.read_text().strip() not in json.dumps(status)
