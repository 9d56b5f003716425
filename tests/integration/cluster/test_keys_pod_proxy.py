"""`kubectl modelfleet keys` through the API server's pod proxy: a real router pod (a
process of the pod runner, labelled as the chart labels it) checking client keys in
front of a stand-in worker pod; the plugin finds the router by label and reads its
/v1/stats through the real kube-apiserver, and never sees or prints a key."""

from __future__ import annotations

import hashlib
import json
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s

from conftest import LocalCluster, wait_for
from modelfleet.kubectl.main import main as kubectl_main
from modelfleet_dev import bootstrap
from modelfleet_dev.routerproc import policy

pytestmark = pytest.mark.cluster

KEY = "sk-proxy-6d1f0a93c2"
POD_IP = {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}


def local_pod(name: str, labels: dict[str, str], command: list[str]) -> dict[str, Any]:
    """A pod the pod runner backs with `command`, serving HTTP on the pod IP's 8080."""
    return {
        "metadata": {
            "name": name,
            "labels": labels,
            "annotations": {"modelfleet.io/local-run": "true"},
        },
        "spec": {
            "nodeName": bootstrap.SYSTEM_NODE,
            "containers": [
                {
                    "name": name,
                    "image": "modelfleet:dev",
                    "command": command,
                    "env": [POD_IP],
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "readinessProbe": {"httpGet": {"path": "/readyz", "port": 8080}},
                }
            ],
        },
    }


def ready_ip(core: k8s.CoreV1Api, namespace: str, name: str) -> str:
    def ip() -> str | None:
        pod = core.read_namespaced_pod(name, namespace)
        ready = any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])
        return str(pod.status.pod_ip) if ready and pod.status.pod_ip else None

    return str(wait_for(ip, timeout=60, what=f"pod {name} ready"))


def generate(url: str) -> int:
    req = urllib.request.Request(
        url + "/v1/images/generations",
        data=json.dumps({"prompt": "a cat"}).encode(),
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return int(resp.status)


def test_keys_reads_router_pods_through_the_api_server(
    cluster: LocalCluster,
    namespace: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    core = k8s.CoreV1Api(cluster.api)
    worker = [sys.executable, "-m", "modelfleet_dev.fakeworker", "--host", "$(POD_IP)",
              "--port", "8080", "--name", "p", "--cost-usd", "0.01"]  # fmt: skip
    core.create_namespaced_pod(namespace, local_pod("worker", {"app": "worker"}, worker))
    worker_ip = ready_ip(core, namespace, "worker")

    key = {"id": "team-proxy", "sha256": hashlib.sha256(KEY.encode()).hexdigest(),
           "budget": "1 USD/day"}  # fmt: skip
    config = tmp_path / "router.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "policies": [policy([{"name": "all", "pool": "p"}])],
                "endpoints": {"p": [f"http://{worker_ip}:8080"]},
                "clientKeys": [key],
            }
        )
    )
    router = [sys.executable, "-m", "modelfleet.cli", "router", "--host", "$(POD_IP)",
              "--port", "8080", "--config", str(config), "--client-auth", "keys"]  # fmt: skip
    labels = {"app.kubernetes.io/name": "modelfleet-router"}
    core.create_namespaced_pod(namespace, local_pod("router", labels, router))
    router_ip = ready_ip(core, namespace, "router")
    assert [generate(f"http://{router_ip}:8080") for _ in range(2)] == [200, 200]

    flags = ["-n", namespace, "--kubeconfig", str(cluster.kubeconfig)]
    capsys.readouterr()
    assert kubectl_main(["keys", "-o", "json", *flags]) == 0
    out = capsys.readouterr().out
    (row,) = json.loads(out)
    assert row["key"] == "team-proxy"
    assert (row["requests"], row["images"]) == (2, 2), row
    assert row["budget"]["spent_usd"] == pytest.approx(0.02), row
    assert kubectl_main(["keys", *flags]) == 0
    table = capsys.readouterr().out
    assert "team-proxy" in table and "1.0000/day" in table, table
    for text in (out, table):
        assert KEY not in text
