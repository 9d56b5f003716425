"""Hosted-model pools end to end (issue 13): the real operator runs each hosted ModelPool
as the worker in adapter mode (the local pod runner starts the pod's real command), the
real router (`--kube`) routes to them and to a tiny diffusers pool, and the providers are
the strict local stand-ins (modelfleet_dev.standins), scripted with faults.

The stand-ins listen on loopback inside the pods' network namespace (where the pod
runner runs the adapters): each serves from a thread that entered that namespace, so the
adapters reach it at 127.0.0.1 through spec.provider.endpoint and the test scripts it
in-process. The API keys reach the adapters only through a Secret.

Scenarios (Given / When / Then, fixtures.py): a typography route on an Ideogram pool
with a diffusers fallback; a 429 storm on a provider, absorbed by the fallback without a
client error and without hammering the provider; a canary from an OpenAI pool to an
Imagen pool that Succeeds (cost per image of both in status and in the plugin's status);
a candidate whose provider answers 500s, RolledBack."""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import secrets
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from conftest import LocalCluster
from fixtures import Case, Given, scenario
from modelfleet import LOCAL_RUN_ANNOTATION
from modelfleet_common.prices import load_table
from modelfleet_dev.cluster import NETNS
from modelfleet_dev.standins.common import StandIn
from modelfleet_dev.standins.gemini_api import GeminiStandIn
from modelfleet_dev.standins.ideogram_api import IdeogramStandIn
from modelfleet_dev.standins.openai_images import OpenAIImagesStandIn
from modelfleet_dev.story import pool_manifest, single_route_policy
from polling import wait_for
from worker_fixtures import tiny_model_dir
from world import Fleet, G, V, start_fleet

pytestmark = [pytest.mark.e2e, pytest.mark.cluster, pytest.mark.timeout(600)]
NS = "e2e-hosted"
SECRET = "provider-keys"
PLUGIN = Path(sys.executable).parent / "kubectl-modelfleet"
TYPOGRAPHY = 'a shop sign that says "OPEN LATE"'
# The size the e2e requests ask for; hosted pools take the nearest their provider makes.
SIZE = "64x64"
HOSTED_SIZE = "1024x1024"  # the nearest of 64x64 at every provider here (square, smallest)
PRICES = load_table()
GPU_HOUR_PRICE = 720.0  # the diffusers pool's: 0.2 USD per GPU-second

# ---- stand-ins inside the pods' network namespace ------------------------------------

_CLONE_NEWNET = 0x40000000


def _enter_pod_network() -> None:
    """Move the calling thread (only it) into the pods' network namespace."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{NETNS}", os.O_RDONLY)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {NETNS}: {os.strerror(err)}")
    finally:
        os.close(fd)


class PodNetworkStandIn:
    """A stand-in serving on 127.0.0.1 of the pods' network namespace from its own
    thread and event loop; faults are set on `s` from the test's thread."""

    def __init__(self, standin: StandIn) -> None:
        self.s = standin
        self.loop = asyncio.new_event_loop()
        entered: list[BaseException | None] = []
        ready = threading.Event()

        def run() -> None:
            try:
                _enter_pod_network()
                entered.append(None)
            except BaseException as exc:  # reported to the constructor
                entered.append(exc)
                return
            finally:
                ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, name=f"podnet-{type(standin).__name__}")
        self.thread.daemon = True
        self.thread.start()
        assert ready.wait(10), "stand-in thread did not start"
        if entered[0] is not None:
            raise entered[0]
        asyncio.run_coroutine_threadsafe(standin.start(), self.loop).result(10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.s.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@dataclass
class Provider:
    """One stand-in and the hosted pools in front of it."""

    standin: PodNetworkStandIn
    key: str  # the Secret key holding its API key
    endpoint: str

    @property
    def s(self) -> StandIn:
        return self.standin.s

    def calls(self) -> int:
        return len(self.s.calls)


@dataclass
class HostedFleet:
    fleet: Fleet
    providers: dict[str, Provider]  # pool name -> its provider


def hosted_pool(
    name: str, backend: str, model: str, p: Provider, **provider: Any
) -> dict[str, Any]:
    """A hosted ModelPool whose adapter pod the local pod runner runs."""
    return {
        "apiVersion": f"{G}/{V}",
        "kind": "ModelPool",
        "metadata": {"name": name, "annotations": {LOCAL_RUN_ANNOTATION: "true"}},
        "spec": {
            "backend": backend,
            "replicas": 1,
            "provider": {
                "model": model,
                "endpoint": p.endpoint,
                "credentials": {"name": SECRET, "key": p.key},
                "sizePolicy": "nearest",
                "maxConcurrency": 4,
                **provider,
            },
        },
    }


# name -> (backend, provider model, stand-in class, base URL suffix, provider settings)
HOSTED: dict[str, tuple[str, str, type[StandIn], str, dict[str, Any]]] = {
    "ideogram": ("ideogram", "V_3", IdeogramStandIn, "", {"defaults": {"renderingSpeed": "TURBO"}}),
    "gpt": (
        "openai",
        "gpt-image-1",
        OpenAIImagesStandIn,
        "/v1",
        {"defaults": {"quality": "medium"}},
    ),
    "gpt-storm": ("openai", "gpt-image-1", OpenAIImagesStandIn, "/v1", {}),
    "imagen": ("gemini-imagen", "imagen-4.0-generate-001", GeminiStandIn, "", {}),
    "imagen-down": ("gemini-imagen", "imagen-4.0-generate-001", GeminiStandIn, "", {}),
}


@pytest.fixture(scope="module")
def hosted(cluster: LocalCluster, operator: Any) -> Iterator[HostedFleet]:
    providers: dict[str, Provider] = {}
    keys: dict[str, str] = {}
    try:
        for name, (_, _, cls, suffix, _) in HOSTED.items():
            api_key = "sk-e2e-" + secrets.token_hex(12)
            standin = PodNetworkStandIn(cls(api_key))
            keys[name] = api_key
            providers[name] = Provider(standin, name, standin.s.url + suffix)
        yield from _fleet(cluster, operator, providers, keys)
    finally:
        for p in providers.values():
            p.standin.stop()


def _fleet(
    cluster: LocalCluster,
    operator: Any,
    providers: dict[str, Provider],
    keys: dict[str, str],
) -> Iterator[HostedFleet]:
    # The Secret must exist before the hosted pools' pods start (the pod runner reads
    # secretKeyRefs at start), and start_fleet creates its pools at once: it gets the
    # diffusers pool, the hosted ones follow.
    model = str(tiny_model_dir())
    sd = pool_manifest("sd", model)
    sd["spec"]["cost"] = {"gpuHourPrice": GPU_HOUR_PRICE}
    core = k8s.CoreV1Api(cluster.api)
    custom = k8s.CustomObjectsApi(cluster.api)
    with start_fleet(cluster, operator, NS, [sd], single_route_policy("base", "sd")) as f:
        core.create_namespaced_secret(
            NS, {"metadata": {"name": SECRET}, "type": "Opaque", "stringData": keys}
        )
        for name, (backend, pmodel, _, _, settings) in HOSTED.items():
            doc = hosted_pool(name, backend, pmodel, providers[name], **settings)
            custom.create_namespaced_custom_object(G, V, NS, "modelpools", doc)
        wait_for(
            lambda: f.pools_ready(HOSTED),
            timeout=120,
            interval=0.5,
            what=f"hosted pools {sorted(HOSTED)} Ready (real adapters)",
        )
        # A canary's failing provider is scripted once, for the whole module.
        providers["imagen-down"].s.add_fault("error", count=None, status=500)
        yield HostedFleet(f, providers)


@pytest.fixture
def given(hosted: HostedFleet) -> Iterator[Given]:
    for p in hosted.providers.values():
        if p.key != "imagen-down":
            p.s.clear()
    with scenario(hosted.fleet) as g:
        yield g


def post(fleet: Fleet, policy: str, prompt: str) -> tuple[int, dict[str, str], dict[str, Any]]:
    """One generation through the router: status, headers and the JSON body."""
    body = json.dumps({"prompt": prompt, "size": SIZE, "steps": 2}).encode()
    req = urllib.request.Request(
        fleet.router.url + "/v1/images/generations",
        data=body,
        headers={"Content-Type": "application/json", "X-ModelFleet-Policy": policy},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.status, dict(resp.headers), json.loads(resp.read())


def price(provider: str, model: str, quality: str | None = None) -> float:
    usd = PRICES.lookup(provider, model, quality, HOSTED_SIZE)
    assert usd is not None, f"no price for {provider}/{model} {quality} {HOSTED_SIZE}"
    return usd


# ---- scenarios -------------------------------------------------------------------------


def typography_policy(name: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{G}/{V}",
        "kind": "RoutingPolicy",
        "metadata": {"name": name},
        "spec": {
            "routes": [
                {
                    "name": "typography",
                    "match": {"promptPatterns": ['"[^"]+"']},
                    "pool": "ideogram",
                    "fallbacks": ["sd"],
                },
                {"name": "default", "pool": "sd"},
            ]
        },
    }


def test_typography_route_on_ideogram_falls_back_to_diffusers(
    given: Given, hosted: HostedFleet
) -> None:
    fleet, ideogram = hosted.fleet, hosted.providers["ideogram"]
    (
        given.manifest(typography_policy("typo"))
        .when().apply().wait_for_router_knows("typo")
        .then().routes("typo", [
            Case(TYPOGRAPHY, "typography", "ideogram"),
            Case("a quiet harbour at dawn", "default", "sd"),
        ])
    )  # fmt: skip
    # The provider drew it: Ideogram saw the prompt with its quoted text, and the answer
    # carries the adapter's provenance and cost (price table: V_3 at TURBO).
    status, headers, doc = post(fleet, "typo", TYPOGRAPHY)
    prompts = [c.fields.get("prompt") for c in ideogram.s.calls_to("/v1/ideogram-v3/generate")]
    assert TYPOGRAPHY in prompts, prompts
    v3 = price("ideogram", "V_3", "TURBO")
    assert (status, headers["X-ModelFleet-Pool"], headers["X-ModelFleet-Model"]) == (
        200,
        "ideogram",
        "V_3",
    )
    assert float(headers["X-ModelFleet-Cost-USD"]) == pytest.approx(v3)
    assert doc["modelfleet"]["cost_usd"] == pytest.approx(v3) and len(doc["data"]) == 1
    # The provider fails: typography falls back to the diffusers pool, no client error.
    ideogram.s.add_fault("error", count=None, status=500)
    (
        given.when().then().routes("typo", [
            Case(TYPOGRAPHY, "typography", "sd", fallback=True),
            Case('a poster reading "SALE"', "typography", "sd", fallback=True),
        ])
    )  # fmt: skip
    ideogram.s.clear()
    given.when().then().routes("typo", [Case(TYPOGRAPHY, "typography", "ideogram")])
    # The router counted what the provider's images cost, per pool.
    images = fleet.router_counter("modelfleet_router_images_total", namespace=NS, pool="ideogram")
    usd = fleet.router_counter("modelfleet_router_cost_usd_total", namespace=NS, pool="ideogram")
    assert images >= 3 and usd == pytest.approx(images * v3)
    # The diffusers fallback bills its measured GPU time (one GPU, one image an answer):
    # what the router counted equals its service time times the pool's price.
    gpu_s = fleet.router_counter("modelfleet_router_service_time_seconds_sum", pool="sd")
    sd_usd = fleet.router_counter("modelfleet_router_cost_usd_total", namespace=NS, pool="sd")
    assert gpu_s > 0 and sd_usd == pytest.approx(gpu_s * GPU_HOUR_PRICE / 3600, rel=1e-3)


def test_429_storm_falls_back_without_client_errors_or_hammering(
    given: Given, hosted: HostedFleet
) -> None:
    provider = hosted.providers["gpt-storm"]
    when = (
        given.policy("storm", "gpt-storm", fallbacks=["sd"])
        .when().apply().wait_for_router_knows("storm")
        .then().answers("storm", 2, {(200, "gpt-storm", "false")})
        .when()
    )  # fmt: skip
    before = provider.calls()
    # Every provider call from now on is rate limited, with a long Retry-After: the
    # adapter answers the router 429 at once and stops calling for that long.
    provider.s.add_fault("rate_limit", count=None, retry_after_s=60)
    (
        when.load_runs("storm", clients=3).wait_for_traffic(30, "storm")
        .load_stops()
        .then()
        .no_failed_requests("storm")
        .answers("storm", 3, {(200, "sd", "true")})
    )  # fmt: skip
    storm_calls = provider.s.calls[before:]
    assert storm_calls and all(c.status == 429 for c in storm_calls), storm_calls
    # At most one call per concurrency slot reached the provider before the first 429
    # was seen; then none for the Retry-After, however many requests came.
    served = given.s.load("storm").ok
    print(f"429 storm: {served} requests served by the fallback, {len(storm_calls)} provider calls")
    assert len(storm_calls) <= 4, f"{len(storm_calls)} provider calls for {served} requests"
    fallbacks = hosted.fleet.router_counter(
        "modelfleet_router_fallbacks_total", namespace=NS, from_pool="gpt-storm", to_pool="sd"
    )
    assert fallbacks >= served


CANARY_ANALYSIS: dict[str, Any] = {
    "minRequests": 3,
    "failureLimit": 1,
    "inconclusiveLimit": 3,
    "metrics": [
        {"name": "errors", "builtin": "error-rate", "max": 0.1},
        {"name": "cost", "builtin": "cost-per-image", "max": 0.1, "maxRatioToStable": 1.0},
    ],
}


def plugin_status(cluster: LocalCluster, canary: str) -> str:
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
    res = subprocess.run(
        [str(PLUGIN), "status", canary, "-n", NS],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_canary_from_openai_to_imagen_succeeds_with_cost_per_image(
    given: Given, hosted: HostedFleet, cluster: LocalCluster
) -> None:
    when = (
        given.policy("swap", "gpt")
        .when().apply().wait_for_router_knows("swap")
        .given().canary(
            "swap", "gpt", "imagen", steps=[50, 100], analysis=CANARY_ANALYSIS,
            scaleDownDelay="1h",  # gpt stays up: the next scenario's stable
        )
        .when().load_runs("swap").apply()
        .wait_for_phase("swap", "Succeeded", timeout=60, interval=0.2)
        .load_stops()
    )  # fmt: skip
    then = (
        when.then()
        .load_served().no_failed_requests()
        .passed_steps("swap", [0, 1])
        .route_pool("swap", "imagen")
    )  # fmt: skip
    # Both pools' cost per image as the price table has them, judged at 50%.
    gpt, imagen = (
        price("openai", "gpt-image-1", "medium"),
        price("google", "imagen-4.0-generate-001"),
    )
    first = next(m for m in then.status("swap")["history"][0]["metrics"] if m["name"] == "cost")
    assert first["result"] == "pass", first
    assert first["value"] == pytest.approx(imagen) and first["stableValue"] == pytest.approx(gpt)
    assert first["samples"] >= 3 and first["stableSamples"] >= 3
    out = plugin_status(cluster, "swap")
    line = next(x for x in out.splitlines() if x.startswith("Cost/image:"))
    assert f"stable ${gpt:.4g} (" in line and f"candidate ${imagen:.4g} (" in line, line
    assert hosted.providers["imagen"].calls() >= 3


def test_candidate_whose_provider_answers_500s_rolls_back(
    given: Given, hosted: HostedFleet
) -> None:
    (
        given.policy("down", "gpt")
        .when().apply().wait_for_router_knows("down")
        .given().canary("down", "gpt", "imagen-down", steps=[50, 100], analysis=CANARY_ANALYSIS)
        .when().load_runs("down").apply()
        .wait_for_status("down", lambda s: (s.get("canaryWeight") or 0) > 0, "candidate receives traffic")
        .wait_for_phase("down", "RolledBack", timeout=60, interval=0.2)
        .load_stops()
        .then()
        .weight("down", 0)
        .step("down", 0, why="rolled back at its first step")
        .metric_result("down", "errors", "fail")
        .no_failed_requests("down")  # the router retries the candidate's failures on gpt
        .compiled_pools("down", [{"pool": "gpt", "weight": 100}])
        .event_seen("Canary", "down", "RolledBack", "Warning", timeout=10)
    )  # fmt: skip
    assert hosted.providers["imagen-down"].calls() > 0, "the candidate's provider was called"
