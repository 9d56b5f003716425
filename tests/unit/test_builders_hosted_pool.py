"""Table tests for hosted pools (issue 13) in the pure builders and status decisions:
the CPU-only adapter Deployment, its settings, the key only by Secret reference, the
diffusers cost settings, and the QuotaExhausted status."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

from modelfleet.api.modelpool import EnvVar, ModelPool
from modelfleet.builders import modelpool as build
from modelfleet.builders import poolstatus as ps

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
CPU = ps.NodeSummary("c1", None, 0)


def pool(**spec: Any) -> ModelPool:
    base: dict[str, Any] = {"model": {"source": "file:///models/tiny", "family": "sd15"}}
    base.update(spec)
    return ModelPool.model_validate(
        {"kind": "ModelPool", "metadata": {"name": "p", "namespace": "ns"}, "spec": base}
    )


def deployment_status(replicas: int, ready: int, updated: int) -> dict[str, Any]:
    return {
        "metadata": {"generation": 2},
        "status": {
            "replicas": replicas,
            "readyReplicas": ready,
            "updatedReplicas": updated,
            "observedGeneration": 2,
        },
    }


SECRET_VALUE = "sk-proj-THIS-IS-THE-REAL-KEY-0123456789"


def hosted(backend: str = "openai", **provider: Any) -> ModelPool:
    prov: dict[str, Any] = {"model": "gpt-image-1", "credentials": {"name": "oa", "key": "k"}}
    prov.update(provider)
    return ModelPool.model_validate(
        {
            "kind": "ModelPool",
            "metadata": {"name": "h", "namespace": "ns", "uid": "u2", "generation": 1},
            "spec": {"backend": backend, "provider": prov, "replicas": 2},
        }
    )


def _container(p: ModelPool) -> dict[str, Any]:
    container: dict[str, Any] = build.deployment(p, build.BuildSettings())["spec"]["template"][
        "spec"
    ]["containers"][0]
    return container


@pytest.mark.parametrize(
    ("backend", "provider", "args"),
    [
        (
            "openai",
            {},
            ["--backend", "openai", "--provider-model", "gpt-image-1"],
        ),
        (
            "openai",
            {"model": "dall-e-3", "endpoint": "https://my.openai.azure.com/openai/v1"},
            [
                "--backend",
                "openai",
                "--provider-model",
                "dall-e-3",
                "--endpoint",
                "https://my.openai.azure.com/openai/v1",
            ],
        ),
        (
            "gemini-imagen",
            {"model": "imagen-4.0-generate-001"},
            ["--backend", "gemini-imagen", "--provider-model", "imagen-4.0-generate-001"],
        ),
        (
            "gemini",
            {"model": "gemini-3-pro-image-preview"},
            ["--backend", "gemini", "--provider-model", "gemini-3-pro-image-preview"],
        ),
        (
            "ideogram",
            {"model": "V_2A_TURBO"},
            ["--backend", "ideogram", "--provider-model", "V_2A_TURBO"],
        ),
        (
            "openai-compatible",
            {"model": "flux", "endpoint": "http://10.0.0.5:9000/v1"},
            [
                "--backend",
                "openai-compatible",
                "--provider-model",
                "flux",
                "--endpoint",
                "http://10.0.0.5:9000/v1",
            ],
        ),
    ],
)
def test_hosted_pool_command(backend: str, provider: dict[str, Any], args: list[str]) -> None:
    c = _container(hosted(backend, **provider))
    assert c["command"] == ["modelfleet-worker", "serve"]
    assert c["args"] == args


@pytest.mark.parametrize(
    "p",
    [
        hosted(),
        hosted("ideogram", model="V_3"),
        hosted("openai-compatible", model="m", endpoint="http://x/v1"),
    ],
    ids=["openai", "ideogram", "compatible"],
)
def test_hosted_pool_is_cpu_only_and_restricted(p: ModelPool) -> None:
    dep = build.deployment(p, build.BuildSettings())
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    resources = c["resources"]
    assert not any("gpu" in k for part in resources.values() for k in part)
    assert "tolerations" not in pod and "nodeSelector" not in pod and "initContainers" not in pod
    assert resources["requests"]["cpu"] == "100m" and resources["limits"]["memory"] == "1Gi"
    assert c["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert {v["name"] for v in pod["volumes"]} == {"tmp"}
    assert c["readinessProbe"]["httpGet"] == {"port": "http", "path": "/readyz"}
    assert dep["spec"]["replicas"] == 2


def test_hosted_key_only_by_secret_reference() -> None:
    p = hosted(credentials={"name": "openai-creds", "key": "api-key"})
    c = _container(p)
    keyed = [e for e in c["env"] if e["name"] == build.API_KEY_ENV]
    assert keyed == [
        {
            "name": "MODELFLEET_PROVIDER_API_KEY",
            "valueFrom": {"secretKeyRef": {"name": "openai-creds", "key": "api-key"}},
        }
    ]
    # No literal anywhere in the pod: the only reference is by Secret name.
    assert "value" not in keyed[0]
    assert not any("key" in a.lower() for a in c["args"])


def test_hosted_key_never_in_args_or_env_even_when_the_user_tries() -> None:
    # The API rejects a literal key in spec.worker; the builder still never lets a
    # user value replace the Secret's variable (defence in depth for older objects).
    p = hosted()
    p.spec.worker.env.append(EnvVar.model_construct(name=build.API_KEY_ENV, value=SECRET_VALUE))
    c = _container(p)
    text = repr(c)
    assert SECRET_VALUE not in text
    assert next(e for e in c["env"] if e["name"] == build.API_KEY_ENV)["valueFrom"]


@pytest.mark.parametrize(
    ("provider", "expected"),
    [
        (
            {},
            {
                "MODELFLEET_WORKER_MAX_CONCURRENCY": "4",
                "MODELFLEET_WORKER_SIZE_POLICY": "reject",
                "MODELFLEET_WORKER_REQUEST_TIMEOUT_S": "120",
                "MODELFLEET_WORKER_REQUESTS_PER_MINUTE": None,
                "MODELFLEET_WORKER_PROVIDER_DEFAULTS": None,
                "MODELFLEET_WORKER_PRICE_OVERRIDES": None,
            },
        ),
        (
            {
                "maxConcurrency": 16,
                "requestsPerMinute": 90,
                "sizePolicy": "nearest",
                "timeoutSeconds": 30,
                "defaults": {"quality": "high", "background": "transparent"},
                "price": {
                    "overrides": [
                        {"quality": "high", "size": "1024x1536", "usdPerImage": 0.25},
                        {"usdPerImage": 0.04},
                    ]
                },
            },
            {
                "MODELFLEET_WORKER_MAX_CONCURRENCY": "16",
                "MODELFLEET_WORKER_SIZE_POLICY": "nearest",
                "MODELFLEET_WORKER_REQUEST_TIMEOUT_S": "30",
                "MODELFLEET_WORKER_REQUESTS_PER_MINUTE": "90",
                "MODELFLEET_WORKER_PROVIDER_DEFAULTS": json.dumps(
                    {"background": "transparent", "quality": "high"}
                ),
                "MODELFLEET_WORKER_PRICE_OVERRIDES": json.dumps(
                    [
                        {"quality": "high", "size": "1024x1536", "usd_per_image": 0.25},
                        {"quality": None, "size": None, "usd_per_image": 0.04},
                    ]
                ),
            },
        ),
    ],
    ids=["defaults", "everything"],
)
def test_hosted_env(provider: dict[str, Any], expected: dict[str, str | None]) -> None:
    env = {e["name"]: e.get("value") for e in build.worker_env(hosted(**provider))}
    for name, value in expected.items():
        assert env.get(name) == value, name
    assert env["MODELFLEET_WORKER_POOL"] == "h"
    assert env["MODELFLEET_WORKER_PORT"] == "8080"
    assert "MODELFLEET_WORKER_MODEL" not in env and "MODELFLEET_WORKER_MAX_BATCH_SIZE" not in env


@pytest.mark.parametrize(
    ("cost", "expected"),
    [
        (None, None),
        ({"gpuHourPrice": 2.5}, "2.5"),
        ({"gpuHourPrice": 0}, "0"),
        ({"gpuHourPrice": 0.0001}, "0.0001"),
        ({"gpuHourPrice": 12}, "12"),
    ],
)
def test_diffusers_gpu_hour_price(cost: dict[str, Any] | None, expected: str | None) -> None:
    p = pool(cost=cost) if cost is not None else pool()
    env = {e["name"]: e.get("value") for e in build.worker_env(p)}
    assert env.get("MODELFLEET_WORKER_GPU_HOUR_PRICE") == expected
    assert env.get("MODELFLEET_WORKER_GPUS") == (None if cost is None else "1")


@pytest.mark.parametrize(("gpu", "gpus"), [(None, "1"), ({"count": 4}, "4"), ({"count": 0}, "0")])
def test_diffusers_cost_counts_every_gpu_of_a_pod(gpu: dict[str, Any] | None, gpus: str) -> None:
    spec: dict[str, Any] = {"cost": {"gpuHourPrice": 3}}
    if gpu is not None:
        spec["gpu"] = gpu
    env = {e["name"]: e.get("value") for e in build.worker_env(pool(**spec))}
    assert (env["MODELFLEET_WORKER_GPU_HOUR_PRICE"], env["MODELFLEET_WORKER_GPUS"]) == ("3", gpus)


def test_pod_template_does_not_follow_replicas() -> None:
    # Scaling (kubectl scale, the autoscaler) must not restart the adapters.
    one, four = hosted(requestsPerMinute=120), hosted(requestsPerMinute=120)
    four.spec.replicas = 4
    templates = [
        build.deployment(p, build.BuildSettings())["spec"]["template"] for p in (one, four)
    ]
    assert templates[0] == templates[1]


def test_hosted_pool_skips_gpu_placement() -> None:
    assert ps.placement_problem(hosted(), [CPU]) is None


def _pod(name: str, ip: str | None, ready: bool, phase: str = "Running") -> dict[str, Any]:
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
    }
    if ip:
        status["podIP"] = ip
    return {"metadata": {"name": name}, "status": status}


@pytest.mark.parametrize(
    ("pod", "digest_ip"),
    [
        (_pod("a", "10.250.0.4", ready=False), "10.250.0.4"),
        (_pod("a", "10.250.0.4", ready=True), None),
        (_pod("a", None, ready=False), None),
        (_pod("a", "10.250.0.4", ready=False, phase="Pending"), None),
    ],
    ids=["not-ready", "ready", "no-ip", "pending"],
)
def test_pod_digest_keeps_the_ip_of_a_running_not_ready_pod(
    pod: dict[str, Any], digest_ip: str | None
) -> None:
    assert ps.pod_digest(pod)["status"].get("podIP") == digest_ip


def test_quota_probe_targets_only_hosted_not_ready_pods_and_a_few() -> None:
    pods = [ps.pod_digest(_pod(f"h-{i}", f"10.250.0.{i}", ready=False)) for i in range(5)]
    pods.append(ps.pod_digest(_pod("h-ready", "10.250.0.9", ready=True)))
    targets = ps.quota_probe_targets(hosted(), pods)
    assert targets == [(f"h-{i}", f"10.250.0.{i}") for i in range(ps.QUOTA_PROBE_PODS)]
    assert ps.quota_probe_targets(pool(), pods) == []  # diffusers: never asked


@pytest.mark.parametrize(
    ("status", "body", "until"),
    [
        (503, {"status": "quota_exhausted", "until": 1767232800}, 1767232800.0),
        (503, {"status": "quota_exhausted", "until": 1767232800.5}, 1767232800.5),
        (503, {"status": "loading"}, None),
        (503, {"status": "quota_exhausted"}, None),
        (503, {"status": "quota_exhausted", "until": "tomorrow"}, None),
        (503, {"status": "quota_exhausted", "until": True}, None),
        (503, ["quota_exhausted"], None),
        (503, None, None),
        (200, {"status": "quota_exhausted", "until": 1767232800}, None),
    ],
)
def test_quota_until(status: int, body: Any, until: float | None) -> None:
    assert ps.quota_until(status, body) == until


def test_quota_problem_names_the_latest_reset_and_ignores_the_past() -> None:
    soon, later, past = NOW.timestamp() + 60, NOW.timestamp() + 3600, NOW.timestamp() - 1
    reason, message = ps.quota_problem({"h-1": soon, "h-2": later, "h-0": past}, NOW) or ("", "")
    assert reason == ps.QUOTA_EXHAUSTED
    assert "2026-01-01T01:00:00.000Z" in message and "h-1, h-2" in message and "h-0" not in message
    assert ps.quota_problem({"h-0": past}, NOW) is None
    assert ps.quota_problem({}, NOW) is None


def test_quota_exhausted_pool_is_degraded_not_ready_then_recovers() -> None:
    p = hosted()
    quota = ps.quota_problem({"h-1": NOW.timestamp() + 600}, NOW)
    down = ps.compute_status(p, None, deployment_status(2, 0, 2), [], None, NOW, quota=quota)
    assert down.phase == "Degraded"
    conds = {c.type: c for c in down.conditions}
    assert (conds["Degraded"].status, conds["Degraded"].reason) == ("True", ps.QUOTA_EXHAUSTED)
    assert (conds["Ready"].status, conds["Ready"].reason) == ("False", ps.QUOTA_EXHAUSTED)
    # The Deployment still counting the pods ready (it lags the pods): not Ready anyway.
    lagging = ps.compute_status(p, None, deployment_status(2, 2, 2), [], None, NOW, quota=quota)
    assert {c.type: c.status for c in lagging.conditions}["Ready"] == "False"
    assert lagging.phase == "Degraded"
    later = NOW + dt.timedelta(minutes=11)
    up = ps.compute_status(p, down, deployment_status(2, 2, 2), [], None, later)
    assert up.phase == "Ready"
    assert {c.type: c.reason for c in up.conditions}["Degraded"] == ps.HEALTHY


@pytest.mark.parametrize(
    ("p", "names"),
    [
        (pool(), ["modelfleet-router"]),
        (hosted(), ["modelfleet-router", "modelfleet-operator"]),
    ],
    ids=["diffusers", "hosted"],
)
def test_network_policy_admits_routers_and_for_hosted_pools_the_operator(
    p: ModelPool, names: list[str]
) -> None:
    settings = build.BuildSettings(worker_network_policy=True, router_namespace="mf-system")
    policy = next(o for o in build.children(p, settings) if o["kind"] == "NetworkPolicy")
    (rule,) = policy["spec"]["ingress"]
    assert [
        peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"] for peer in rule["from"]
    ] == names
    assert all(
        peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "mf-system"}
        for peer in rule["from"]
    )
    assert rule["ports"] == [{"port": 8080, "protocol": "TCP"}]


@pytest.mark.parametrize(
    "spec",
    [
        {"backend": "openai", "provider": {"model": "gpt-image-1", "credentials": SECRET_VALUE}},
        {"backend": "openai", "provider": {"model": "gpt-image-1", "apiKey": SECRET_VALUE}},
        {
            "backend": "openai",
            "provider": {"model": "gpt-image-1", "endpoint": f"https://x:{SECRET_VALUE}@h/v1"},
        },
        {
            "model": {"source": "file:///m"},
            "worker": {"env": [{"name": "K", "value": SECRET_VALUE}]},
        },
        {"model": {"source": "file:///m"}, "worker": {"args": [SECRET_VALUE]}},
    ],
    ids=["credentials", "unknown-field", "endpoint", "env", "args"],
)
def test_invalid_spec_message_never_quotes_the_key(spec: dict[str, Any]) -> None:
    # An object that slipped past admission (an older CRD): status names the field only.
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as info:
        ModelPool.model_validate({"kind": "ModelPool", "metadata": {"name": "x"}, "spec": spec})
    message = ps.validation_message(info.value)
    assert message.startswith("spec.")
    assert SECRET_VALUE not in message and "THIS-IS-THE-REAL-KEY" not in message
    status = ps.invalid_status(1, None, message, NOW)
    assert SECRET_VALUE not in status.model_dump_json()
