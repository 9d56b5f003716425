"""Pure builders: a ModelPool becomes a Deployment, a Service, a PDB and (when the
operator is told to) a NetworkPolicy that admits only router pods to its workers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from modelfleet import API_VERSION, LOCAL_RUN_ANNOTATION
from modelfleet.api.modelpool import ModelPool

FIELD_MANAGER = "modelfleet-operator"
MANAGED_BY = "modelfleet-operator"
POOL_LABEL = "modelfleet.io/pool"
WORKER_PORT = 8080
WORKER_UID = 10001
CACHE_DIR = "/var/cache/modelfleet"
MODELS_DIR = "/models"


@dataclass(frozen=True)
class BuildSettings:
    """Operator-wide knobs that shape every pool's objects."""

    default_image: str = "ghcr.io/modelfleet/worker:0.1.0"
    # Dev/e2e only: pods on kwok nodes run as local processes (see dev/podrunner).
    local_run: bool = False
    termination_grace_seconds: int = 120
    # A NetworkPolicy per pool: only router pods reach the workers (namespace of the
    # routers, or None for the pool's own namespace).
    worker_network_policy: bool = False
    router_namespace: str | None = None


def selector_labels(pool: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "modelfleet-worker", POOL_LABEL: pool}


def labels(pool: str) -> dict[str, str]:
    return {
        **selector_labels(pool),
        "app.kubernetes.io/instance": pool,
        "app.kubernetes.io/component": "worker",
        "app.kubernetes.io/part-of": "modelfleet",
        "app.kubernetes.io/managed-by": MANAGED_BY,
    }


def owner_reference(pool: ModelPool) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "ModelPool",
        "name": pool.metadata.name,
        "uid": pool.metadata.uid or "",
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(pool: ModelPool) -> dict[str, Any]:
    return {
        "name": pool.metadata.name,
        "namespace": pool.metadata.namespace,
        "labels": labels(pool.metadata.name),
        "ownerReferences": [owner_reference(pool)],
    }


def model_location(source: str) -> tuple[str, dict[str, Any] | None, bool]:
    """Where the worker finds the model: (uri, pvc volume or None, needs fetch step)."""
    scheme, _, rest = source.partition("://")
    if scheme == "pvc":
        claim, _, sub = rest.partition("/")
        volume = {"name": "model", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
        return f"file://{MODELS_DIR}/{sub}".rstrip("/"), volume, False
    if scheme in ("hf", "s3"):
        return source, None, True
    return source, None, False


def worker_env(pool: ModelPool) -> list[dict[str, Any]]:
    spec = pool.spec
    model_uri, _, needs_fetch = model_location(spec.model.source)
    values: dict[str, str] = {
        "MODELFLEET_WORKER_MODEL": model_uri,
        "MODELFLEET_WORKER_FAMILY": spec.model.family,
        "MODELFLEET_WORKER_DTYPE": spec.model.dtype,
        "MODELFLEET_WORKER_PORT": str(WORKER_PORT),
        "MODELFLEET_WORKER_MAX_BATCH_SIZE": str(spec.batching.max_batch_size),
        "MODELFLEET_WORKER_MAX_LATENCY_MS": str(spec.batching.max_latency_ms),
        "MODELFLEET_WORKER_MEMORY_AWARE": "true" if spec.batching.memory_aware else "false",
        "MODELFLEET_WORKER_MAX_RESOLUTION": str(spec.limits.max_resolution),
        "MODELFLEET_WORKER_MAX_STEPS": str(spec.limits.max_steps),
        "MODELFLEET_WORKER_POOL": pool.metadata.name,
        "MODELFLEET_WORKER_CACHE_DIR": CACHE_DIR,
        "HF_HOME": f"{CACHE_DIR}/hf",
    }
    if spec.model.revision:
        values["MODELFLEET_WORKER_REVISION"] = spec.model.revision
    if spec.model.vae is not None:
        values["MODELFLEET_WORKER_VAE"] = spec.model.vae.source
    if needs_fetch:
        values["HF_HUB_OFFLINE"] = "1"  # the init step fetched everything
    env: list[dict[str, Any]] = [
        # Bind the pod IP: the same on a real node and under the local pod runner.
        {
            "name": "MODELFLEET_WORKER_HOST",
            "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}},
        },
    ]
    env += [{"name": k, "value": v} for k, v in values.items()]
    overridden = {e.name for e in spec.worker.env}
    env = [e for e in env if e["name"] not in overridden]
    env += [{"name": e.name, "value": e.value} for e in spec.worker.env]
    return env


def _security_context() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def deployment(pool: ModelPool, settings: BuildSettings) -> dict[str, Any]:
    spec = pool.spec
    name = pool.metadata.name
    image = spec.image or settings.default_image
    model_uri, pvc_volume, needs_fetch = model_location(spec.model.source)
    volumes: list[dict[str, Any]] = [
        {"name": "cache", "emptyDir": {}},
        {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "cache", "mountPath": CACHE_DIR},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    if pvc_volume is not None:
        volumes.append(pvc_volume)
        mounts.append({"name": "model", "mountPath": MODELS_DIR, "readOnly": True})
    # Scratch disk (logs; a fetched model's cache emptyDir counts too) is requested so
    # the scheduler places the pod where it fits; no limit: a model's size is unknown
    # here, and exceeding a limit would evict the pod mid-download.
    resources: dict[str, Any] = {
        "requests": {"cpu": "1", "memory": "4Gi", "ephemeral-storage": "1Gi"},
        "limits": {"memory": "64Gi"},
    }
    if spec.gpu.count:
        resources["limits"]["nvidia.com/gpu"] = str(spec.gpu.count)
        resources["requests"]["nvidia.com/gpu"] = str(spec.gpu.count)
    http_get = {"port": "http"}
    container: dict[str, Any] = {
        "name": "worker",
        "image": image,
        "command": ["modelfleet-worker", "serve"],
        "args": list(spec.worker.args),
        "env": worker_env(pool),
        "ports": [{"name": "http", "containerPort": WORKER_PORT, "protocol": "TCP"}],
        # Loading weights is slow: a startup probe guards it instead of letting
        # liveness kill a pod that is still reading 10 GB from disk.
        "startupProbe": {
            "httpGet": {**http_get, "path": "/healthz"},
            "periodSeconds": 5,
            "failureThreshold": 120,
        },
        "livenessProbe": {
            "httpGet": {**http_get, "path": "/healthz"},
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
        "readinessProbe": {
            "httpGet": {**http_get, "path": "/readyz"},
            "periodSeconds": 2,
            "failureThreshold": 2,
        },
        "resources": resources,
        "securityContext": _security_context(),
        "volumeMounts": mounts,
    }
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": settings.termination_grace_seconds,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": WORKER_UID,
            "runAsGroup": WORKER_UID,
            "fsGroup": WORKER_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": volumes,
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": selector_labels(name)},
            }
        ],
    }
    if needs_fetch:
        pod_spec["initContainers"] = [
            {
                "name": "fetch-model",
                "image": image,
                "command": ["modelfleet-worker", "fetch"],
                "args": ["--model", model_uri, "--cache-dir", CACHE_DIR]
                + (["--revision", spec.model.revision] if spec.model.revision else []),
                "env": [{"name": "HF_HOME", "value": f"{CACHE_DIR}/hf"}],
                # A download: some CPU and memory; the model lands on the cache volume.
                "resources": {
                    "requests": {"cpu": "500m", "memory": "1Gi", "ephemeral-storage": "1Gi"},
                    "limits": {"memory": "4Gi"},
                },
                "securityContext": _security_context(),
                "volumeMounts": mounts,
            }
        ]
    if spec.gpu.count:
        pod_spec["tolerations"] = [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
        ]
    if spec.gpu.product:
        pod_spec["nodeSelector"] = {"nvidia.com/gpu.product": spec.gpu.product}
    # Dev/e2e: a pool can opt its pods in to the local pod runner by annotation.
    local_run = settings.local_run or pool.metadata.annotations.get(LOCAL_RUN_ANNOTATION) == "true"
    annotations = {LOCAL_RUN_ANNOTATION: "true"} if local_run else {}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(pool),
        "spec": {
            "replicas": spec.replicas,
            "selector": {"matchLabels": selector_labels(name)},
            # New GPU pods come up before old ones go: no capacity dip mid-rollout.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "revisionHistoryLimit": 3,
            "template": {
                "metadata": {"labels": labels(name), "annotations": annotations},
                "spec": pod_spec,
            },
        },
    }


def service(pool: ModelPool) -> dict[str, Any]:
    name = pool.metadata.name
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(pool),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(name),
            "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def pod_disruption_budget(pool: ModelPool) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(pool),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector_labels(pool.metadata.name)},
        },
    }


ROUTER_SELECTOR = {"app.kubernetes.io/name": "modelfleet-router"}


def network_policy(pool: ModelPool, settings: BuildSettings) -> dict[str, Any]:
    """Only router pods reach the pool's workers (kubelet probes are not subject to it)."""
    peer: dict[str, Any] = {"podSelector": {"matchLabels": ROUTER_SELECTOR}}
    if settings.router_namespace:
        peer["namespaceSelector"] = {
            "matchLabels": {"kubernetes.io/metadata.name": settings.router_namespace}
        }
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(pool),
        "spec": {
            "podSelector": {"matchLabels": selector_labels(pool.metadata.name)},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [peer], "ports": [{"port": WORKER_PORT, "protocol": "TCP"}]}],
        },
    }


def children(pool: ModelPool, settings: BuildSettings) -> list[dict[str, Any]]:
    out = [deployment(pool, settings), service(pool), pod_disruption_budget(pool)]
    if settings.worker_network_policy:
        out.append(network_policy(pool, settings))
    return out
