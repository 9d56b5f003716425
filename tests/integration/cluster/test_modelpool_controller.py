"""ModelPool controller against the real local cluster (API server, controller-
manager, scheduler, kwok) with the real operator process."""

from __future__ import annotations

import copy
import signal
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

from api_cases import example
from conftest import LocalCluster, wait_for

pytestmark = pytest.mark.cluster
GROUP, VERSION, PLURAL = "modelfleet.io", "v1alpha1", "modelpools"


def _pool(name: str, **spec: Any) -> dict[str, Any]:
    doc = copy.deepcopy(example("modelpool-production.yaml"))
    doc["metadata"] = {"name": name}
    doc["spec"]["replicas"] = 2
    doc["spec"].update(spec)
    return doc


def _custom(cluster: LocalCluster) -> k8s.CustomObjectsApi:
    return k8s.CustomObjectsApi(cluster.api)


def _get(cluster: LocalCluster, ns: str, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = _custom(cluster).get_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, name
    )
    return obj


def _condition(pool: dict[str, Any], type_: str) -> dict[str, Any]:
    for cond in (pool.get("status") or {}).get("conditions", []):
        if cond["type"] == type_:
            return dict(cond)
    return {}


def _ready(
    cluster: LocalCluster, ns: str, name: str, generation: int | None = None
) -> dict[str, Any] | None:
    pool = _get(cluster, ns, name)
    status = pool.get("status") or {}
    gen = generation or pool["metadata"]["generation"]
    if status.get("phase") == "Ready" and status.get("observedGeneration") == gen:
        return pool
    return None


def _create(cluster: LocalCluster, ns: str, doc: dict[str, Any]) -> None:
    _custom(cluster).create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, doc)


def test_pool_creates_children_and_becomes_ready(
    cluster: LocalCluster, namespace: str, operator: Any
) -> None:
    _create(cluster, namespace, _pool("sdxl"))
    pool = wait_for(lambda: _ready(cluster, namespace, "sdxl"), timeout=120, what="pool Ready")
    assert pool["status"]["readyReplicas"] == pool["status"]["replicas"] == 2
    assert _condition(pool, "Ready")["status"] == "True"
    assert _condition(pool, "Degraded")["status"] == "False"
    assert pool["status"]["service"] == "sdxl"

    apps, core, policy = (
        k8s.AppsV1Api(cluster.api),
        k8s.CoreV1Api(cluster.api),
        k8s.PolicyV1Api(cluster.api),
    )
    dep = apps.read_namespaced_deployment("sdxl", namespace)
    assert dep.metadata.owner_references[0].kind == "ModelPool"
    pod_spec = dep.spec.template.spec
    container = pod_spec.containers[0]
    assert container.resources.limits["nvidia.com/gpu"] == "1"
    assert any(t.key == "nvidia.com/gpu" for t in pod_spec.tolerations)
    assert container.startup_probe.http_get.path == "/healthz"
    assert container.readiness_probe.http_get.path == "/readyz"
    sc = container.security_context
    assert sc.run_as_non_root and sc.read_only_root_filesystem and not sc.allow_privilege_escalation
    assert sc.capabilities.drop == ["ALL"]
    env = {e.name: e.value for e in container.env}
    assert env["MODELFLEET_WORKER_MAX_BATCH_SIZE"] == "4"
    assert env["MODELFLEET_WORKER_VAE"] == "s3://models/sdxl-vae-fp16-fix"
    assert pod_spec.init_containers[0].command == ["modelfleet-worker", "fetch"]
    assert dep.spec.template.metadata.labels["modelfleet.io/pool"] == "sdxl"

    svc = core.read_namespaced_service("sdxl", namespace)
    assert svc.spec.selector["modelfleet.io/pool"] == "sdxl"
    assert policy.read_namespaced_pod_disruption_budget("sdxl", namespace).spec.max_unavailable == 1

    pods = core.list_namespaced_pod(namespace, label_selector="modelfleet.io/pool=sdxl").items
    assert len(pods) == 2
    for pod in pods:
        assert pod.status.phase == "Running"
        assert (
            core.read_node(pod.spec.node_name).metadata.labels.get("nvidia.com/gpu.present")
            == "true"
        )

    wait_for(
        lambda: (
            {"Created", "Ready"}
            <= {
                e.reason
                for e in core.list_namespaced_event(
                    namespace, field_selector="involvedObject.kind=ModelPool"
                ).items
            }
        ),
        timeout=10,
        what="Created and Ready events",
    )


def test_spec_change_rolls_deployment(cluster: LocalCluster, namespace: str, operator: Any) -> None:
    _create(cluster, namespace, _pool("roll"))
    wait_for(lambda: _ready(cluster, namespace, "roll"), timeout=120, what="pool Ready")
    apps = k8s.AppsV1Api(cluster.api)
    before = apps.read_namespaced_deployment("roll", namespace).metadata.generation
    patched = _custom(cluster).patch_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        PLURAL,
        "roll",
        {"spec": {"image": "registry.local/worker:2", "batching": {"maxBatchSize": 8}}},
    )
    gen = patched["metadata"]["generation"]
    wait_for(lambda: _ready(cluster, namespace, "roll", gen), timeout=120, what="rolled pool Ready")
    dep = apps.read_namespaced_deployment("roll", namespace)
    assert dep.metadata.generation > before
    container = dep.spec.template.spec.containers[0]
    assert container.image == "registry.local/worker:2"
    assert {e.name: e.value for e in container.env}["MODELFLEET_WORKER_MAX_BATCH_SIZE"] == "8"
    assert dep.status.updated_replicas == 2
    pool = _get(cluster, namespace, "roll")
    assert _condition(pool, "Progressing")["reason"] == "RolloutComplete"


def test_drift_is_repaired_and_deletion_cascades(
    cluster: LocalCluster, namespace: str, operator: Any
) -> None:
    _create(cluster, namespace, _pool("drift"))
    wait_for(lambda: _ready(cluster, namespace, "drift"), timeout=120, what="pool Ready")
    apps, core = k8s.AppsV1Api(cluster.api), k8s.CoreV1Api(cluster.api)
    first_uid = apps.read_namespaced_deployment("drift", namespace).metadata.uid

    apps.delete_namespaced_deployment("drift", namespace)

    def recreated() -> Any:
        try:
            dep = apps.read_namespaced_deployment("drift", namespace)
        except ApiException:
            return None
        return dep if dep.metadata.uid != first_uid else None

    wait_for(recreated, timeout=20, what="deleted Deployment recreated")

    apps.patch_namespaced_deployment(
        "drift",
        namespace,
        {"spec": {"template": {"spec": {"containers": [{"name": "worker", "image": "evil:1"}]}}}},
    )
    wait_for(
        lambda: (
            apps.read_namespaced_deployment("drift", namespace)
            .spec.template.spec.containers[0]
            .image
            != "evil:1"
        ),
        timeout=20,
        what="edited pod template restored",
    )
    core.delete_namespaced_service("drift", namespace)
    wait_for(
        lambda: _exists(lambda: core.read_namespaced_service("drift", namespace)),
        timeout=20,
        what="deleted Service recreated",
    )

    _custom(cluster).delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "drift")
    wait_for(
        lambda: (
            not _exists(lambda: apps.read_namespaced_deployment("drift", namespace))
            and not _exists(lambda: core.read_namespaced_service("drift", namespace))
        ),
        timeout=60,
        what="children garbage-collected",
    )


def _exists(read: Any) -> bool:
    try:
        read()
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


@pytest.mark.parametrize(
    ("gpu", "reason"),
    [
        ({"count": 1, "product": "NVIDIA-B200"}, "NoMatchingGPUNodes"),
        ({"count": 9}, "InsufficientGPUsPerNode"),
    ],
)
def test_unplaceable_pool_is_degraded_then_recovers(
    cluster: LocalCluster, namespace: str, operator: Any, gpu: dict[str, Any], reason: str
) -> None:
    _create(cluster, namespace, _pool("bad", gpu=gpu))

    def degraded() -> dict[str, Any] | None:
        pool = _get(cluster, namespace, "bad")
        cond = _condition(pool, "Degraded")
        return pool if cond.get("status") == "True" and cond.get("reason") == reason else None

    pool = wait_for(degraded, timeout=30, what=f"Degraded/{reason}")
    assert pool["status"]["phase"] == "Degraded"
    assert "spec.gpu" in _condition(pool, "Degraded")["message"]
    assert _condition(pool, "Ready")["status"] == "False"
    core = k8s.CoreV1Api(cluster.api)
    wait_for(
        lambda: any(
            e.reason == reason and e.type == "Warning"
            for e in core.list_namespaced_event(namespace).items
        ),
        timeout=10,
        what=f"Warning event {reason}",
    )

    fixed = _custom(cluster).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "bad", {"spec": {"gpu": {"count": 1, "product": None}}}
    )
    wait_for(
        lambda: _ready(cluster, namespace, "bad", fixed["metadata"]["generation"]),
        timeout=60,
        what="pool Ready after fix",
    )


def test_two_operators_one_leader_and_takeover(
    cluster: LocalCluster, namespace: str, operator: Any
) -> None:
    active = operator.ensure_running()
    # The standby starts only once the active leads: operators started together race.
    wait_for(active.has_led, timeout=60, what=f"{active.identity} leads")
    standby = operator.spawn()
    try:
        wait_for(
            lambda: "standing by" in standby.log(), timeout=30, what="second operator stands by"
        )
        coord = k8s.CoordinationV1Api(cluster.api)
        lease = coord.read_namespaced_lease("modelfleet-operator", "kube-system")
        assert lease.spec.holder_identity == active.identity

        active.kill(signal.SIGKILL)
        _create(cluster, namespace, _pool("after-failover"))
        wait_for(
            lambda: _ready(cluster, namespace, "after-failover"),
            timeout=60,
            what="standby takes over and reconciles",
        )
        lease = coord.read_namespaced_lease("modelfleet-operator", "kube-system")
        assert lease.spec.holder_identity == standby.identity
        operator.main = standby  # the standby is now the session's operator
    finally:
        if operator.main is not standby:
            standby.kill(signal.SIGTERM)


def test_operator_killed_mid_reconcile_converges(
    cluster: LocalCluster, namespace: str, operator: Any
) -> None:
    main = operator.ensure_running()
    names = [f"p{i}" for i in range(6)]
    for name in names:
        _create(cluster, namespace, _pool(name))
    main.kill(signal.SIGKILL)  # mid-reconcile: some pools are half done
    operator.ensure_running()
    for name in names:
        wait_for(
            lambda n=name: _ready(cluster, namespace, n), timeout=90, what=f"pool {name} Ready"
        )
    apps = k8s.AppsV1Api(cluster.api)
    deps = apps.list_namespaced_deployment(namespace).items
    assert sorted(d.metadata.name for d in deps) == sorted(names)
    rs = apps.list_namespaced_replica_set(namespace).items
    assert len(rs) == len(names), "a restart must not roll the pods"


def test_failed_apply_is_reported_and_retried_with_backoff(
    cluster: LocalCluster, namespace: str, operator: Any
) -> None:
    """A transient API refusal (here: a ResourceQuota allowing no Deployments) shows in
    status, and the operator retries on its own: no further event is needed."""
    core = k8s.CoreV1Api(cluster.api)
    core.create_namespaced_resource_quota(
        namespace,
        {"metadata": {"name": "no-deployments"}, "spec": {"hard": {"count/deployments.apps": "0"}}},
    )
    _create(cluster, namespace, _pool("quota", replicas=1))

    def apply_failed() -> dict[str, Any] | None:
        cond = _condition(_get(cluster, namespace, "quota"), "Degraded")
        return cond if cond.get("reason") == "ApplyFailed" else None

    cond = wait_for(apply_failed, timeout=30, what="Degraded/ApplyFailed")
    assert "quota" in cond["message"], cond["message"]

    core.delete_namespaced_resource_quota("no-deployments", namespace)
    # Well inside the 60 s resync: only the backoff retry can make this in time.
    wait_for(lambda: _ready(cluster, namespace, "quota"), timeout=40, what="pool Ready after retry")
    assert _condition(_get(cluster, namespace, "quota"), "Degraded")["status"] == "False"
