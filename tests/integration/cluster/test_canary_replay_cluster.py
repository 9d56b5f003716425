"""Pre-flight replay on the local cluster: the real operator reads the golden ConfigMap
from the real API server and renders it through a real router (`--kube`) with the pool
pinned, on ModelPools whose workers (run by the local pod runner) draw the expected text
and verify it with the real OCR. A candidate that mangles its lettering fails the
replay and never gets weight > 0; a good one passes and takes its first step. The
credential that allows the pin appears nowhere it must not (status, Events, logs)."""

from __future__ import annotations

import json
import signal
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from conftest import LocalCluster
from modelfleet_dev.routerproc import RouterProcess, free_port
from modelfleet_dev.story import pool_manifest, single_route_policy
from polling import wait_for
from worker_fixtures import tiny_model_dir

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(420)]
G, V = "modelfleet.io", "v1alpha1"
TOKEN = "replay-cluster-credential-5b1e0c93a7"
TEXT_IMAGE = "modelfleet.dev/textrender"  # the pod runner runs the text-drawing worker
GOLDEN = "\n".join(
    [
        '{"prompt": "a market banner saying \\"HAPPY MARKET\\"", "size": "512x256"}',
        '{"prompt": "shop front sign", "text": ["FRESH BREAD"], "size": "512x256"}',
    ]
)
POOLS = {"stable": 0.0, "good": 0.0, "bad": 1.0}  # name -> share of renders mangled


def _text_pool(name: str, model: str, rate: float) -> dict[str, Any]:
    doc = pool_manifest(name, model, {"MODELFLEET_TEXTRENDER_CORRUPTION_RATE": str(rate)})
    doc["spec"]["image"] = TEXT_IMAGE
    doc["spec"]["limits"]["maxResolution"] = 512
    return doc


def _canary(name: str, candidate: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{G}/{V}",
        "kind": "Canary",
        "metadata": {"name": name},
        "spec": {
            "routingPolicy": name,
            "route": "all",
            "stablePool": "stable",
            "candidatePool": candidate,
            "steps": [50, 100],
            "interval": "30s",
            "progressDeadline": "4m",
            "replay": {"configMap": "golden", "seeds": [1, 2], "minRatioToStable": 0.9},
        },
    }


class Watch:
    """Samples canary statuses and route weights all along, so "never > 0" is checked
    on everything seen, not only on the end state."""

    def __init__(self, custom: k8s.CustomObjectsApi, ns: str, names: list[str]) -> None:
        self.custom, self.ns, self.names = custom, ns, names
        self.weights: dict[str, set[int]] = {n: set() for n in names}
        self.route_weights: dict[str, set[int]] = {n: set() for n in names}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(0.2):
            for n in self.names:
                try:
                    c = self.custom.get_namespaced_custom_object(G, V, self.ns, "canaries", n)
                    p = self.custom.get_namespaced_custom_object(
                        G, V, self.ns, "routingpolicies", n
                    )
                except Exception:
                    continue
                self.weights[n].add((c.get("status") or {}).get("canaryWeight") or 0)
                for r in (p.get("status") or {}).get("routes") or []:
                    for pool in r.get("pools") or []:
                        if pool.get("pool") != "stable":
                            self.route_weights[n].add(int(pool.get("weight") or 0))


@pytest.fixture
def replay_world(
    cluster: LocalCluster, namespace: str, operator: Any, tmp_path: Path
) -> Iterator[tuple[RouterProcess, Any]]:
    token = tmp_path / "credential"
    token.write_text(TOKEN)
    custom = k8s.CustomObjectsApi(cluster.api)
    model = str(tiny_model_dir())
    for name, rate in POOLS.items():
        custom.create_namespaced_custom_object(
            G, V, namespace, "modelpools", _text_pool(name, model, rate)
        )
    k8s.CoreV1Api(cluster.api).create_namespaced_config_map(
        namespace, {"metadata": {"name": "golden"}, "data": {"prompts.jsonl": GOLDEN}}
    )
    for name in ("bad", "good"):
        custom.create_namespaced_custom_object(
            G, V, namespace, "routingpolicies", single_route_policy(name, "stable")
        )
    port = free_port()
    router = RouterProcess.kube(
        namespace, cluster.kubeconfig, "--operator-token-file", str(token), port=port
    )
    # The session operator steps aside for one that knows this router and the credential.
    operator.main.kill(signal.SIGTERM)
    op = operator.spawn(
        extra_args=["--router-url", router.url, "--operator-token-file", str(token)]
    )
    try:
        wait_for(op.has_led, timeout=60, interval=0.2, what="replay operator leads")

        def ready() -> bool:
            items = custom.list_namespaced_custom_object(G, V, namespace, "modelpools")["items"]
            up = {
                p["metadata"]["name"]
                for p in items
                if (p.get("status") or {}).get("phase") == "Ready"
            }
            return set(POOLS) <= up

        wait_for(ready, timeout=240, interval=0.5, what="text pools Ready (real workers)")
        with router:
            yield router, op
    finally:
        op.kill(signal.SIGTERM)
        operator.main = None
        operator.ensure_running()


def _get(custom: k8s.CustomObjectsApi, ns: str, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = custom.get_namespaced_custom_object(G, V, ns, "canaries", name)
    return obj


def _reason(status: dict[str, Any]) -> str:
    return str(next(c["reason"] for c in status["conditions"] if c["type"] == "Progressing"))


def test_failing_candidate_never_gets_traffic_and_a_good_one_proceeds(
    cluster: LocalCluster, namespace: str, replay_world: tuple[RouterProcess, Any]
) -> None:
    router, op = replay_world
    custom = k8s.CustomObjectsApi(cluster.api)
    watch = Watch(custom, namespace, ["bad", "good"])
    watch.thread.start()
    try:
        for name in ("bad", "good"):
            custom.create_namespaced_custom_object(G, V, namespace, "canaries", _canary(name, name))

        def phase(name: str, want: str) -> dict[str, Any] | None:
            st = _get(custom, namespace, name).get("status") or {}
            if st.get("phase") in ("Failed", "Succeeded") and st["phase"] != want:
                raise AssertionError(f"canary {name} ended {st['phase']}: {st.get('message')}")
            return st if st.get("phase") == want else None

        bad = wait_for(
            lambda: phase("bad", "RolledBack"), timeout=180, interval=0.3, what="bad RolledBack"
        )
        good = wait_for(
            lambda: phase("good", "Progressing"), timeout=180, interval=0.3, what="good Progressing"
        )
    finally:
        watch.stop.set()
        watch.thread.join(5)

    # The failing candidate: rolled back by the replay, both scores named, weight never > 0.
    assert _reason(bad) == "ReplayFailed"
    r = bad["replay"]
    assert r["result"] == "fail" and r["attempts"] == 1
    assert "replay: candidate word accuracy " in bad["message"]
    assert "< 0.9 x stable 1 (4 renders each)" in bad["message"]
    assert (r["stable"]["renders"], r["stable"]["verified"], r["stable"]["passRate"]) == (4, 4, 1.0)
    assert r["candidate"]["passRate"] == 0.0 and r["candidate"]["meanWordAccuracy"] < 0.9
    assert r["golden"]["prompts"] == 2 and r["golden"]["digest"].startswith("sha256:")
    assert [(x["line"], x["seed"]) for x in r["renders"]] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert watch.weights["bad"] == {0} and watch.route_weights["bad"] <= {0}
    assert bad.get("currentStep") is None and not bad.get("history")

    # The good one: replay passed, then its first step.
    assert good["replay"]["result"] == "pass", good["replay"]
    assert good["replay"]["message"] == (
        "replay passed: candidate word accuracy 1 >= 0.9 x stable 1 (4 renders each)"
    )
    assert good["canaryWeight"] == 50 and good["currentStep"] == 0
    assert watch.weights["good"] <= {0, 50}

    core = k8s.CoreV1Api(cluster.api)

    def replay_failed_event() -> str | None:
        events = core.list_namespaced_event(
            namespace, field_selector="involvedObject.kind=Canary,involvedObject.name=bad"
        ).items
        return next((str(e.message) for e in events if e.reason == "ReplayFailed"), None)

    message = wait_for(replay_failed_event, timeout=30, what="ReplayFailed Event on bad")
    assert "< 0.9 x stable 1" in message

    # The replay's renders went through the router pinned, and the candidate got no
    # traffic of the route: nothing of it in the canary's measurements.
    with urllib.request.urlopen(router.url + "/metrics", timeout=10) as resp:
        metrics = resp.read().decode()
    assert (
        f'pinned_requests_total{{namespace="{namespace}",outcome="ok",pool="bad"}} 4.0' in metrics
    )
    with urllib.request.urlopen(router.url + "/v1/stats?window=600", timeout=10) as resp:
        pools = {p["pool"] for p in json.load(resp)["pools"]}
    assert "bad" not in pools

    # The credential is nowhere it must not be.
    everything = json.dumps([_get(custom, namespace, n) for n in ("bad", "good")])
    events = core.list_namespaced_event(namespace).items
    everything += json.dumps([e.message for e in events])
    for text in (everything, op.log(), router.logs()):
        assert TOKEN not in text and TOKEN[:12] not in text
