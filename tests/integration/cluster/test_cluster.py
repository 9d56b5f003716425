"""The local control plane is a real Kubernetes: admission, scheduling, GC,
EndpointSlices, and pods backed by real local processes."""

from __future__ import annotations

import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

from api_cases import INVALID, Invalid, example_docs, example_files
from conftest import LocalCluster, wait_for
from modelfleet_dev import bootstrap

pytestmark = pytest.mark.cluster
PLURALS = {"ModelPool": "modelpools", "RoutingPolicy": "routingpolicies", "Canary": "canaries"}


def _create(cluster: LocalCluster, namespace: str, doc: dict[str, Any]) -> dict[str, Any]:
    api = k8s.CustomObjectsApi(cluster.api)
    out: dict[str, Any] = api.create_namespaced_custom_object(
        "modelfleet.io", "v1alpha1", namespace, PLURALS[doc["kind"]], doc, field_validation="Strict"
    )
    return out


def test_crds_established_with_short_names(cluster: LocalCluster) -> None:
    ext = k8s.ApiextensionsV1Api(cluster.api)
    for plural, short in (("modelpools", "mp"), ("routingpolicies", "rp"), ("canaries", "can")):
        crd = ext.read_custom_resource_definition(f"{plural}.modelfleet.io")
        assert short in crd.spec.names.short_names
        assert any(c.type == "Established" and c.status == "True" for c in crd.status.conditions)


def test_kubectl_reports_real_server_version(cluster: LocalCluster) -> None:
    out = subprocess.run(
        ["kubectl", "version", "-o", "yaml"],
        env=cluster.env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    version = yaml.safe_load(out)
    from modelfleet_dev.binaries import KUBERNETES_VERSION

    assert version["serverVersion"]["gitVersion"] == KUBERNETES_VERSION
    assert version["clientVersion"]["gitVersion"] == KUBERNETES_VERSION


@pytest.mark.parametrize("path", example_files(), ids=lambda p: p.name)
def test_examples_accepted(cluster: LocalCluster, namespace: str, path: Path) -> None:
    for doc in example_docs(path):
        if doc["kind"] == "ConfigMap":  # a Canary's golden prompts
            k8s.CoreV1Api(cluster.api).create_namespaced_config_map(namespace, doc)
            continue
        created = _create(cluster, namespace, doc)
        assert created["metadata"]["name"] == doc["metadata"]["name"]


def test_api_server_applies_schema_defaults(cluster: LocalCluster, namespace: str) -> None:
    doc = {
        "apiVersion": "modelfleet.io/v1alpha1",
        "kind": "Canary",
        "metadata": {"name": "defaults"},
        "spec": {"routingPolicy": "rp", "route": "r", "stablePool": "a", "candidatePool": "b"},
    }
    spec = _create(cluster, namespace, doc)["spec"]
    assert spec["steps"] == [10, 30, 60, 100]
    assert spec["interval"] == "60s"
    assert spec["analysis"]["provider"]["type"] == "router"
    assert [m["builtin"] for m in spec["analysis"]["metrics"]] == ["error-rate", "service-time"]


@pytest.mark.parametrize("case", INVALID, ids=lambda c: c.id)
def test_invalid_rejected_at_admission(cluster: LocalCluster, case: Invalid) -> None:
    doc = case.manifest()
    doc["metadata"]["name"] = f"bad-{case.id}"[:63]
    with pytest.raises(ApiException) as err:
        _create(cluster, "default", doc)
    assert err.value.status in (400, 422), err.value.body
    assert case.field in err.value.body, f"message does not name {case.field}: {err.value.body}"


def _gpu_deployment(name: str, gpus: int) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "tolerations": [
                        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
                    ],
                    "containers": [
                        {
                            "name": "c",
                            "image": "example.invalid/gpu:1",
                            "resources": {"limits": {"nvidia.com/gpu": str(gpus)}},
                        }
                    ],
                },
            },
        },
    }


def test_gpu_deployment_lands_on_gpu_node(cluster: LocalCluster, namespace: str) -> None:
    apps, core = k8s.AppsV1Api(cluster.api), k8s.CoreV1Api(cluster.api)
    apps.create_namespaced_deployment(namespace, _gpu_deployment("gpu", 2))
    wait_for(
        lambda: (apps.read_namespaced_deployment("gpu", namespace).status.ready_replicas or 0) == 1,
        timeout=60,
        what="GPU deployment ready",
    )
    pod = core.list_namespaced_pod(namespace, label_selector="app=gpu").items[0]
    node = core.read_node(pod.spec.node_name)
    assert node.metadata.labels["nvidia.com/gpu.present"] == "true"
    assert pod.status.pod_ip.startswith("10.25")


def test_oversized_gpu_request_stays_pending_unschedulable(
    cluster: LocalCluster, namespace: str
) -> None:
    apps, core = k8s.AppsV1Api(cluster.api), k8s.CoreV1Api(cluster.api)
    apps.create_namespaced_deployment(namespace, _gpu_deployment("huge", 9))

    def unschedulable() -> Any:
        for pod in core.list_namespaced_pod(namespace, label_selector="app=huge").items:
            for cond in pod.status.conditions or []:
                if (
                    cond.type == "PodScheduled"
                    and cond.status == "False"
                    and cond.reason == "Unschedulable"
                ):
                    return pod
        return None

    pod = wait_for(unschedulable, timeout=60, what="Unschedulable condition")
    assert pod.status.phase == "Pending"
    assert "nvidia.com/gpu" in next(
        c.message for c in pod.status.conditions if c.type == "PodScheduled"
    )


def test_garbage_collection_of_owned_objects(cluster: LocalCluster, namespace: str) -> None:
    core = k8s.CoreV1Api(cluster.api)
    owner = core.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}})
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid}
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "child", "ownerReferences": [ref]}}
    )
    core.delete_namespaced_config_map("owner", namespace)

    def child_gone() -> bool:
        try:
            core.read_namespaced_config_map("child", namespace)
        except ApiException as exc:
            return exc.status == 404
        return False

    wait_for(child_gone, timeout=60, what="child garbage-collected")


def test_pod_runner_serves_http_through_endpointslice(
    cluster: LocalCluster, namespace: str
) -> None:
    core = k8s.CoreV1Api(cluster.api)
    discovery = k8s.DiscoveryV1Api(cluster.api)
    import sys

    pod = {
        "metadata": {
            "name": "web",
            "labels": {"app": "web"},
            "annotations": {"modelfleet.io/local-run": "true"},
        },
        "spec": {
            "nodeName": bootstrap.SYSTEM_NODE,
            "containers": [
                {
                    "name": "web",
                    "image": "python:3.11",
                    "command": [sys.executable, "-m", "http.server", "8080", "--bind", "$(POD_IP)"],
                    "env": [
                        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
                    ],
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "readinessProbe": {"httpGet": {"path": "/", "port": 8080}},
                }
            ],
        },
    }
    core.create_namespaced_pod(namespace, pod)
    core.create_namespaced_service(
        namespace,
        {
            "metadata": {"name": "web"},
            "spec": {
                "selector": {"app": "web"},
                "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
            },
        },
    )

    def ready_endpoint() -> str | None:
        slices = discovery.list_namespaced_endpoint_slice(
            namespace, label_selector="kubernetes.io/service-name=web"
        )
        for s in slices.items:
            port = next((p.port for p in s.ports or [] if p.name == "http"), None)
            for ep in s.endpoints or []:
                if ep.conditions.ready and port:
                    return f"http://{ep.addresses[0]}:{port}/"
        return None

    url = wait_for(ready_endpoint, timeout=60, what="ready endpoint in the EndpointSlice")
    assert url.startswith("http://10.25")
    with urllib.request.urlopen(url, timeout=5) as resp:
        assert resp.status == 200
        assert b"Directory listing" in resp.read()

    # Deleting the pod stops the process: the address stops answering.
    core.delete_namespaced_pod("web", namespace)

    def refused() -> bool:
        try:
            urllib.request.urlopen(url, timeout=1)
        except OSError:
            return True
        return False

    wait_for(refused, timeout=30, what="local process stopped after pod deletion")
