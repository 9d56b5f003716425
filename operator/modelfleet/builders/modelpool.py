"""Pure builders: a ModelPool becomes a Deployment, a Service, a PDB and (when the
operator is told to) a NetworkPolicy that admits only router pods to its workers."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from modelfleet import API_VERSION, LOCAL_RUN_ANNOTATION
from modelfleet.api.modelpool import ModelPool, ModelSpec

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


def _host_env() -> dict[str, Any]:
    # Bind the pod IP: the same on a real node and under the local pod runner.
    return {
        "name": "MODELFLEET_WORKER_HOST",
        "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}},
    }


def _with_user_env(
    pool: ModelPool, env: list[dict[str, Any]], reserved: frozenset[str] = frozenset()
) -> list[dict[str, Any]]:
    """spec.worker.env wins over the operator's values of the same name, except the
    reserved ones (the key's variable belongs to the Secret alone)."""
    user = [e for e in pool.spec.worker.env if e.name not in reserved]
    overridden = {e.name for e in user}
    env = [e for e in env if e["name"] not in overridden]
    return env + [
        {"name": e.name, "valueFrom": e.value_from.wire()}
        if e.value_from is not None
        else {"name": e.name, "value": e.value}
        for e in user
    ]


# The fetch step names the Secret (never its values) when the store refuses it.
CREDENTIALS_SECRET_ENV = "MODELFLEET_WORKER_CREDENTIALS_SECRET"
CREDENTIAL_ENVS = frozenset(
    {
        CREDENTIALS_SECRET_ENV,
        "HF_TOKEN",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_ENDPOINT_URL",
    }
)


def credentials_env(model: ModelSpec) -> list[dict[str, Any]]:
    """spec.model.credentials as secretKeyRef env for the stores the model and VAE use."""
    ref = model.credentials
    if ref is None:
        return []
    sources = [model.source] + ([model.vae.source] if model.vae is not None else [])
    schemes = {s.partition("://")[0] for s in sources}

    def from_secret(name: str, key: str, optional: bool = False) -> dict[str, Any]:
        sel: dict[str, Any] = {"name": ref.name, "key": key}
        if optional:
            sel["optional"] = True
        return {"name": name, "valueFrom": {"secretKeyRef": sel}}

    env: list[dict[str, Any]] = [{"name": CREDENTIALS_SECRET_ENV, "value": ref.name}]
    if "hf" in schemes:
        env.append(from_secret("HF_TOKEN", ref.token_key))
    if "s3" in schemes:
        env.append(from_secret("AWS_ACCESS_KEY_ID", ref.access_key_id_key))
        env.append(from_secret("AWS_SECRET_ACCESS_KEY", ref.secret_access_key_key))
        # AWS itself needs no endpoint; MinIO and R2 do.
        env.append(from_secret("AWS_ENDPOINT_URL", ref.endpoint_key, optional=True))
        # Without a region the client asks the store (GetBucketLocation) or assumes us-east-1.
        env.append(from_secret("AWS_REGION", ref.region_key, optional=True))
    return env


def worker_env(pool: ModelPool) -> list[dict[str, Any]]:
    spec = pool.spec
    if spec.hosted:
        return adapter_env(pool)
    model = spec.diffusers_model()
    batching, limits = spec.batching_or_default(), spec.limits_or_default()
    model_uri, _, needs_fetch = model_location(model.source)
    values: dict[str, str] = {
        "MODELFLEET_WORKER_MODEL": model_uri,
        "MODELFLEET_WORKER_FAMILY": model.family,
        "MODELFLEET_WORKER_DTYPE": model.dtype,
        "MODELFLEET_WORKER_PORT": str(WORKER_PORT),
        "MODELFLEET_WORKER_MAX_BATCH_SIZE": str(batching.max_batch_size),
        "MODELFLEET_WORKER_MAX_LATENCY_MS": str(batching.max_latency_ms),
        "MODELFLEET_WORKER_MEMORY_AWARE": "true" if batching.memory_aware else "false",
        "MODELFLEET_WORKER_MAX_RESOLUTION": str(limits.max_resolution),
        "MODELFLEET_WORKER_MAX_STEPS": str(limits.max_steps),
        "MODELFLEET_WORKER_POOL": pool.metadata.name,
        "MODELFLEET_WORKER_CACHE_DIR": CACHE_DIR,
        "HF_HOME": f"{CACHE_DIR}/hf",
    }
    if model.revision:
        values["MODELFLEET_WORKER_REVISION"] = model.revision
    if model.vae is not None:
        values["MODELFLEET_WORKER_VAE"] = model.vae.source
    if needs_fetch:
        values["HF_HUB_OFFLINE"] = "1"  # the init step fetched everything
    if spec.cost is not None:  # cost = GPU-seconds (service time x GPUs) x price
        values["MODELFLEET_WORKER_GPU_HOUR_PRICE"] = _number(spec.cost.gpu_hour_price)
        values["MODELFLEET_WORKER_GPUS"] = str(spec.gpu_or_default().count)
    w = spec.worker
    for name, on in (
        ("MODELFLEET_WORKER_MODEL_CPU_OFFLOAD", w.model_cpu_offload),
        ("MODELFLEET_WORKER_VAE_TILING", w.vae_tiling),
        ("MODELFLEET_WORKER_VAE_SLICING", w.vae_slicing),
    ):
        if on:
            values[name] = "true"
    if not w.truncate:
        values["MODELFLEET_WORKER_TRUNCATE"] = "false"
    env = [_host_env(), *({"name": k, "value": v} for k, v in values.items())]
    env += credentials_env(model)
    reserved = CREDENTIAL_ENVS if model.credentials is not None else frozenset()
    return _with_user_env(pool, env, reserved=reserved)


API_KEY_ENV = "MODELFLEET_PROVIDER_API_KEY"


def _number(value: float) -> str:
    """A price as text the worker's float() reads back exactly enough (2.5, 12, 0.0001)."""
    return format(value, ".12g")


def adapter_args(pool: ModelPool) -> list[str]:
    """The adapter's flags: which API and model; never the key (it comes from a Secret)."""
    provider = pool.spec.hosted_provider()
    args = ["--backend", pool.spec.backend, "--provider-model", provider.model]
    if provider.endpoint:
        args += ["--endpoint", provider.endpoint]
    return args + list(pool.spec.worker.args)


def adapter_env(pool: ModelPool) -> list[dict[str, Any]]:
    """Settings of a hosted pool's adapter (names agreed with the adapter, /tmp/h/E-to-F.md)."""
    provider = pool.spec.hosted_provider()
    values: dict[str, str] = {
        "MODELFLEET_WORKER_PORT": str(WORKER_PORT),
        "MODELFLEET_WORKER_POOL": pool.metadata.name,
        "MODELFLEET_WORKER_MAX_CONCURRENCY": str(provider.max_concurrency),
        "MODELFLEET_WORKER_SIZE_POLICY": provider.size_policy,
        "MODELFLEET_WORKER_REQUEST_TIMEOUT_S": str(provider.timeout_seconds),
    }
    if provider.requests_per_minute is not None:
        # Per pod, not divided by replicas: a value that followed spec.replicas would
        # restart every adapter on each scale (the autoscaler writes replicas often).
        values["MODELFLEET_WORKER_REQUESTS_PER_MINUTE"] = str(provider.requests_per_minute)
    defaults = provider.defaults.model_dump(exclude_none=True, mode="json")
    if defaults:
        values["MODELFLEET_WORKER_PROVIDER_DEFAULTS"] = json.dumps(defaults, sort_keys=True)
    if provider.price is not None and provider.price.overrides:
        overrides = [
            {"quality": o.quality, "size": o.size, "usd_per_image": o.usd_per_image}
            for o in provider.price.overrides
        ]
        values["MODELFLEET_WORKER_PRICE_OVERRIDES"] = json.dumps(overrides)
    env = [_host_env(), *({"name": k, "value": v} for k, v in values.items())]
    if provider.credentials is not None:
        ref = provider.credentials
        env.append(
            {
                "name": API_KEY_ENV,
                "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}},
            }
        )
    return _with_user_env(pool, env, reserved=frozenset({API_KEY_ENV}))


def adapter_container(pool: ModelPool, image: str) -> dict[str, Any]:
    """A hosted pool's one container: the worker in adapter mode, CPU only."""
    return {
        "name": "worker",
        "image": image,
        "command": ["modelfleet-worker", "serve"],
        "args": adapter_args(pool),
        "env": adapter_env(pool),
        "ports": [{"name": "http", "containerPort": WORKER_PORT, "protocol": "TCP"}],
        # No weights to load: a minute is plenty for the adapter to listen.
        **_probes(startup_failures=12),
        # Waiting on a remote API costs little CPU; images pass through memory (base64).
        "resources": {
            "requests": {"cpu": "100m", "memory": "256Mi", "ephemeral-storage": "64Mi"},
            "limits": {"memory": "1Gi"},
        },
        "securityContext": _security_context(),
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }


def adapter_pod_fields() -> dict[str, Any]:
    """No GPU toleration or node selector, no init step: any node will do."""
    return {"volumes": [{"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}}]}


def _security_context() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _probes(startup_failures: int) -> dict[str, Any]:
    http_get = {"port": "http"}
    return {
        "startupProbe": {
            "httpGet": {**http_get, "path": "/healthz"},
            "periodSeconds": 5,
            "failureThreshold": startup_failures,
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
    }


def _diffusers_pod(pool: ModelPool, image: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(container, extra pod spec fields) of a GPU pod that loads the model itself."""
    spec = pool.spec
    model, gpu = spec.diffusers_model(), spec.gpu_or_default()
    model_uri, pvc_volume, needs_fetch = model_location(model.source)
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
    if gpu.count:
        resources["limits"]["nvidia.com/gpu"] = str(gpu.count)
        resources["requests"]["nvidia.com/gpu"] = str(gpu.count)
    container: dict[str, Any] = {
        "name": "worker",
        "image": image,
        "command": ["modelfleet-worker", "serve"],
        "args": list(spec.worker.args),
        "env": worker_env(pool),
        "ports": [{"name": "http", "containerPort": WORKER_PORT, "protocol": "TCP"}],
        # Loading weights is slow: a startup probe guards it instead of letting
        # liveness kill a pod that is still reading 10 GB from disk.
        **_probes(startup_failures=120),
        "resources": resources,
        "securityContext": _security_context(),
        "volumeMounts": mounts,
    }
    extra: dict[str, Any] = {"volumes": volumes}
    if needs_fetch:
        extra["initContainers"] = [
            {
                "name": "fetch-model",
                "image": image,
                "command": ["modelfleet-worker", "fetch"],
                "args": ["--model", model_uri, "--cache-dir", CACHE_DIR]
                + (["--revision", model.revision] if model.revision else []),
                "env": [{"name": "HF_HOME", "value": f"{CACHE_DIR}/hf"}, *credentials_env(model)],
                # A download: some CPU and memory; the model lands on the cache volume.
                "resources": {
                    "requests": {"cpu": "500m", "memory": "1Gi", "ephemeral-storage": "1Gi"},
                    "limits": {"memory": "4Gi"},
                },
                "securityContext": _security_context(),
                "volumeMounts": mounts,
            }
        ]
    if gpu.count:
        extra["tolerations"] = [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
        ]
    if gpu.product:
        extra["nodeSelector"] = {"nvidia.com/gpu.product": gpu.product}
    return container, extra


def deployment(pool: ModelPool, settings: BuildSettings) -> dict[str, Any]:
    spec = pool.spec
    name = pool.metadata.name
    image = spec.image or settings.default_image
    if spec.hosted:
        container, extra = adapter_container(pool, image), adapter_pod_fields()
    else:
        container, extra = _diffusers_pod(pool, image)
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
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": selector_labels(name)},
            }
        ],
        **extra,
    }
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
            # New pods come up before old ones go: no capacity dip mid-rollout.
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


OPERATOR_SELECTOR = {"app.kubernetes.io/name": "modelfleet-operator"}


def network_policy(pool: ModelPool, settings: BuildSettings) -> dict[str, Any]:
    """Only router pods reach the pool's workers (kubelet probes are not subject to it);
    a hosted pool's adapters also the operator's, which reads their /readyz for an
    exhausted quota. The operator runs in the routers' (release) namespace."""
    selectors = [ROUTER_SELECTOR] + ([OPERATOR_SELECTOR] if pool.spec.hosted else [])
    peers: list[dict[str, Any]] = []
    for selector in selectors:
        peer: dict[str, Any] = {"podSelector": {"matchLabels": selector}}
        if settings.router_namespace:
            peer["namespaceSelector"] = {
                "matchLabels": {"kubernetes.io/metadata.name": settings.router_namespace}
            }
        peers.append(peer)
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(pool),
        "spec": {
            "podSelector": {"matchLabels": selector_labels(pool.metadata.name)},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": peers, "ports": [{"port": WORKER_PORT, "protocol": "TCP"}]}],
        },
    }


def children(pool: ModelPool, settings: BuildSettings) -> list[dict[str, Any]]:
    out = [deployment(pool, settings), service(pool), pod_disruption_budget(pool)]
    if settings.worker_network_policy:
        out.append(network_policy(pool, settings))
    return out
