"""Objects the local cluster needs once the API server answers: fake GPU nodes
(run by kwok) and the ModelFleet CRDs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.rest import ApiException

from modelfleet import GROUP
from modelfleet.api import crdgen

GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
SYSTEM_NODE = "system-node-0"


def api_client(kubeconfig: Path) -> k8s.ApiClient:
    return k8s_config.new_client_from_config(config_file=str(kubeconfig))


def gpu_node_name(index: int) -> str:
    return f"gpu-node-{index}"


def _pod_cidr(index: int) -> str:
    # Inside the pods' network namespace (see cluster.POD_NETWORK, 10.250.0.0/15).
    if index >= 500:
        raise ValueError("at most 500 fake GPU nodes fit the local pod network")
    return f"10.{250 + index // 256}.{index % 256}.0/24"


def node_manifest(
    name: str, *, gpus: int, product: str | None, pod_cidr: str, zone: str
) -> dict[str, Any]:
    labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "topology.kubernetes.io/zone": zone,
        "type": "kwok",
    }
    capacity = {"cpu": "64", "memory": "512Gi", "pods": "110", "ephemeral-storage": "1Ti"}
    taints: list[dict[str, str]] = []
    if gpus and product:
        labels.update(
            {
                "nvidia.com/gpu.present": "true",
                "nvidia.com/gpu.product": product,
                "nvidia.com/gpu.count": str(gpus),
                "nvidia.com/gpu.memory": "81559",
                "node.kubernetes.io/instance-type": f"gpu-{gpus}x",
            }
        )
        capacity["nvidia.com/gpu"] = str(gpus)
        taints.append(dict(GPU_TAINT))
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": labels,
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
        },
        "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr], "taints": taints},
        "status": {
            "capacity": capacity,
            "allocatable": dict(capacity),
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
        },
    }


def ensure_nodes(
    api: k8s.ApiClient, count: int, product: str = "NVIDIA-H100-80GB-HBM3", gpus: int = 8
) -> list[str]:
    core = k8s.CoreV1Api(api)
    existing = {n.metadata.name for n in core.list_node().items}
    wanted = [
        node_manifest(SYSTEM_NODE, gpus=0, product=None, pod_cidr="10.251.254.0/24", zone="dev-a")
    ]
    wanted += [
        node_manifest(
            gpu_node_name(i),
            gpus=gpus,
            product=product,
            pod_cidr=_pod_cidr(i),
            zone="dev-a" if i % 2 == 0 else "dev-b",
        )
        for i in range(count)
    ]
    created = []
    for manifest in wanted:
        name = manifest["metadata"]["name"]
        if name in existing:
            continue
        try:
            core.create_node(manifest)
            created.append(name)
        except ApiException as exc:
            if exc.status != 409:
                raise
    return created


def nodes_ready(api: k8s.ApiClient) -> int:
    ready = 0
    for node in k8s.CoreV1Api(api).list_node().items:
        for cond in node.status.conditions or []:
            if cond.type == "Ready" and cond.status == "True":
                ready += 1
    return ready


def crd_manifests(directory: Path | None = None) -> list[dict[str, Any]]:
    """The CRDs as committed in crds/ when given a directory, else freshly generated."""
    if directory is not None:
        return [yaml.safe_load(p.read_text()) for p in sorted(directory.glob("*.yaml"))]
    return [crdgen.crd_manifest(info) for info in crdgen.CRDS]


def install_crds(api: k8s.ApiClient, manifests: list[dict[str, Any]] | None = None) -> None:
    ext = k8s.ApiextensionsV1Api(api)
    for manifest in manifests or crd_manifests():
        name = manifest["metadata"]["name"]
        try:
            current = ext.read_custom_resource_definition(name)
        except ApiException as exc:
            if exc.status != 404:
                raise
            ext.create_custom_resource_definition(manifest)
            continue
        manifest = dict(manifest)
        manifest["metadata"] = {
            **manifest["metadata"],
            "resourceVersion": current.metadata.resource_version,
        }
        ext.replace_custom_resource_definition(name, manifest)


def wait_crds_established(api: k8s.ApiClient, timeout: float = 30) -> None:
    ext = k8s.ApiextensionsV1Api(api)
    names = {f"{info.plural}.{GROUP}" for info in crdgen.CRDS}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        established = set()
        for crd in ext.list_custom_resource_definition().items:
            for cond in crd.status.conditions or []:
                if cond.type == "Established" and cond.status == "True":
                    established.add(crd.metadata.name)
        if names <= established:
            return
        time.sleep(0.1)
    raise TimeoutError(f"CRDs not Established after {timeout}s: {sorted(names)}")


def wait_default_service_account(
    api: k8s.ApiClient, namespace: str = "default", timeout: float = 30
) -> None:
    """Pods are refused until the controller-manager has made the namespace's default SA."""
    core = k8s.CoreV1Api(api)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            core.read_namespaced_service_account("default", namespace)
            return
        except ApiException as exc:
            if exc.status != 404:
                raise
        time.sleep(0.1)
    raise TimeoutError(f"no default ServiceAccount in {namespace} after {timeout}s")
