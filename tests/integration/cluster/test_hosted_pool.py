"""A hosted ModelPool on the real local cluster: the real operator builds a CPU-only
adapter Deployment, the local pod runner runs the real adapter (`modelfleet-worker
serve --backend openai`) in the pods' network namespace, and it calls the strict OpenAI
stand-in there on loopback. An exhausted provider quota turns the pool
Degraded/QuotaExhausted; the key shows up in none of the pool's objects or the log."""

from __future__ import annotations

import copy
import json
import os
import secrets
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

from conftest import LocalCluster, wait_for
from modelfleet import LOCAL_RUN_ANNOTATION

pytestmark = pytest.mark.cluster
GROUP, VERSION, PLURAL = "modelfleet.io", "v1alpha1", "modelpools"
POD_LOGS = Path.home() / ".cache" / "modelfleet" / "cluster" / "logs" / "pods"


def _netns() -> str:
    from modelfleet_dev.cluster import NETNS

    return NETNS


def _in_pods_netns(argv: list[str], **kw: Any) -> subprocess.Popen[str]:
    # The adapter lives in the pods' network namespace: its provider is reachable
    # there on loopback only, like a sidecar would be.
    return subprocess.Popen(["ip", "netns", "exec", _netns(), *argv], text=True, **kw)


class StandIn:
    """The OpenAI stand-in as a process in the pods' namespace, driven over its control
    routes from inside that namespace."""

    def __init__(self, key: str, tmp: Path) -> None:
        ready = tmp / "standin.port"
        env = {**os.environ, "MODELFLEET_STANDIN_API_KEY": key}
        self.proc = _in_pods_netns(
            [
                sys.executable,
                "-m",
                "modelfleet_dev.standins.openai_images",
                "--ready-file",
                str(ready),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.port = int(
            wait_for(
                lambda: ready.exists() and ready.read_text().strip(),
                timeout=20,
                what="stand-in listening",
            )
        )

    def control(self, method: str, path: str, body: Any = None) -> Any:
        code = (
            "import json,sys,urllib.request as u;"
            "r=u.Request(sys.argv[1],method=sys.argv[2],data=sys.argv[3].encode() or None,"
            "headers={'Content-Type':'application/json'});"
            "print(u.urlopen(r,timeout=5).read().decode())"
        )
        url = f"http://127.0.0.1:{self.port}{path}"
        data = "" if body is None else json.dumps(body)
        proc = _in_pods_netns(
            [sys.executable, "-c", code, url, method, data], stdout=subprocess.PIPE
        )
        out, _ = proc.communicate(timeout=10)
        assert proc.returncode == 0, out
        return json.loads(out)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


@pytest.fixture
def standin_key() -> str:
    return "sk-standin-" + secrets.token_hex(16)


@pytest.fixture
def standin(standin_key: str, tmp_path: Path) -> Iterator[StandIn]:
    s = StandIn(standin_key, tmp_path)
    yield s
    s.stop()


def _pool(port: int) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelPool",
        "metadata": {"name": "oai", "annotations": {LOCAL_RUN_ANNOTATION: "true"}},
        "spec": {
            "backend": "openai",
            "provider": {
                "model": "gpt-image-1",
                "endpoint": f"http://127.0.0.1:{port}/v1",
                "credentials": {"name": "openai", "key": "api-key"},
                "defaults": {"quality": "low"},
                "maxConcurrency": 2,
            },
            "replicas": 1,
            "modelNames": ["gpt-image-1"],
        },
    }


def _get(cluster: LocalCluster, ns: str) -> dict[str, Any]:
    obj: dict[str, Any] = k8s.CustomObjectsApi(cluster.api).get_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, "oai"
    )
    return obj


def _condition(pool: dict[str, Any], type_: str) -> dict[str, Any]:
    conds = (pool.get("status") or {}).get("conditions", [])
    return next((dict(c) for c in conds if c["type"] == type_), {})


def _post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_hosted_pool_runs_cpu_only_and_reports_exhausted_quota(
    cluster: LocalCluster, namespace: str, operator: Any, standin: StandIn, standin_key: str
) -> None:
    core, apps = k8s.CoreV1Api(cluster.api), k8s.AppsV1Api(cluster.api)
    core.create_namespaced_secret(
        namespace,
        k8s.V1Secret(
            metadata=k8s.V1ObjectMeta(name="openai"), string_data={"api-key": standin_key}
        ),
    )
    k8s.CustomObjectsApi(cluster.api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, _pool(standin.port)
    )
    wait_for(
        lambda: (_get(cluster, namespace).get("status") or {}).get("phase") == "Ready",
        timeout=60,
        what="hosted pool Ready",
    )

    # CPU only: no GPU request, toleration or node selector; the key only by reference.
    dep = cluster.api.sanitize_for_serialization(apps.read_namespaced_deployment("oai", namespace))
    pod_spec = dep["spec"]["template"]["spec"]
    container = pod_spec["containers"][0]
    assert not any("nvidia.com/gpu" in part for part in container["resources"].values())
    assert "tolerations" not in pod_spec and "nodeSelector" not in pod_spec
    assert container["args"][:4] == ["--backend", "openai", "--provider-model", "gpt-image-1"]
    key_env = next(e for e in container["env"] if e["name"] == "MODELFLEET_PROVIDER_API_KEY")
    assert key_env["valueFrom"]["secretKeyRef"] == {"name": "openai", "key": "api-key"}

    # The pod runs the real adapter, which calls the stand-in with the Secret's key.
    pod = core.list_namespaced_pod(namespace, label_selector="modelfleet.io/pool=oai").items[0]
    url = f"http://{pod.status.pod_ip}:8080/v1/images/generations"
    status, body = _post(url, {"prompt": "a red bicycle", "size": "1024x1024"})
    assert status == 200, body
    assert len(body["data"]) == 1 and body["data"][0]["b64_json"]
    calls = standin.control("GET", "/_standin/calls")["calls"]
    assert [c["status"] for c in calls] == [200]

    # The provider's quota runs out: the adapter answers 429 and goes not ready, and
    # the operator, asking its /readyz why, marks the pool Degraded/QuotaExhausted.
    standin.control("POST", "/_standin/faults", {"kind": "quota", "count": None})
    status, body = _post(url, {"prompt": "a blue bicycle", "size": "1024x1024"})
    assert (status, body["error"]["code"]) == (429, "quota_exhausted"), body

    def quota_degraded() -> dict[str, Any] | None:
        pool = _get(cluster, namespace)
        return pool if _condition(pool, "Degraded").get("reason") == "QuotaExhausted" else None

    degraded = wait_for(quota_degraded, timeout=30, what="pool Degraded/QuotaExhausted")
    assert degraded["status"]["phase"] == "Degraded"
    assert _condition(degraded, "Ready")["status"] == "False"
    assert "quota exhausted until" in _condition(degraded, "Degraded")["message"]

    # The key is in none of the pool's objects, its Events or the adapter's log.
    events = core.list_namespaced_event(namespace)
    seen = [
        json.dumps(degraded),
        json.dumps(dep),
        json.dumps(cluster.api.sanitize_for_serialization(events)),
        (POD_LOGS / f"{namespace}_{pod.metadata.name}.log").read_text(),
    ]
    assert not any(standin_key in text for text in seen)

    # A fresh adapter (the old pod gone) is ready again: the pool recovers.
    standin.control("DELETE", "/_standin/faults")
    core.delete_namespaced_pod(pod.metadata.name, namespace, grace_period_seconds=0)
    wait_for(
        lambda: (_get(cluster, namespace).get("status") or {}).get("phase") == "Ready",
        timeout=60,
        what="pool Ready again",
    )


RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}


@pytest.mark.parametrize("namespace", [RESTRICTED], indirect=True)
def test_adapter_pods_satisfy_restricted(cluster: LocalCluster, namespace: str) -> None:
    from modelfleet.api.modelpool import ModelPool
    from modelfleet.builders import modelpool as build

    doc = _pool(9)
    doc["metadata"].update({"namespace": namespace, "uid": "x"})
    template = build.deployment(ModelPool.model_validate(doc), build.BuildSettings())["spec"][
        "template"
    ]
    core = k8s.CoreV1Api(cluster.api)
    created = core.create_namespaced_pod(
        namespace, {"metadata": {"name": "adapter"}, "spec": template["spec"]}
    )
    assert created.spec.containers[0].args[:2] == ["--backend", "openai"]
    # Control: the namespace really enforces (a root pod is refused).
    spec = copy.deepcopy(template["spec"])
    spec["securityContext"]["runAsNonRoot"] = False
    spec["containers"][0]["securityContext"]["runAsNonRoot"] = False
    with pytest.raises(ApiException) as err:
        core.create_namespaced_pod(namespace, {"metadata": {"name": "root"}, "spec": spec})
    assert "violates PodSecurity" in err.value.body
