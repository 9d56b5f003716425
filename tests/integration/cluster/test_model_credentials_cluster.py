"""The real API server on spec.model.credentials and spec.worker.env valueFrom: the
CRD's CEL rules accept a pool with a credentials Secret and secretKeyRef /
configMapKeyRef env and refuse value with valueFrom or a valueFrom with no or two
sources (server-side dry run); the Deployment the builder makes from it, with the
credentials as secretKeyRef env in the fetch step and the worker, is valid apps/v1."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

from conftest import LocalCluster
from modelfleet.api.modelpool import ModelPool
from modelfleet.builders.modelpool import BuildSettings, deployment

pytestmark = pytest.mark.cluster
GROUP, VERSION, PLURAL = "modelfleet.io", "v1alpha1", "modelpools"
CRDS = Path(__file__).resolve().parents[3] / "crds"


def _pool(ns: str, env: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelPool",
        "metadata": {"name": "gated", "namespace": ns},
        "spec": {
            "model": {
                "source": "hf://stabilityai/stable-diffusion-3.5-medium",
                "family": "sd3",
                "credentials": {"name": "hub-token"},
            },
            "worker": {"env": env, "modelCpuOffload": True, "truncate": False},
        },
    }


GOOD_ENV = [
    {"name": "EXTRA_TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
    {"name": "LOG_LEVEL", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "level"}}},
    {"name": "PLAIN", "value": "1"},
]


@pytest.fixture(scope="module")
def crds_installed(cluster: LocalCluster) -> None:
    from modelfleet_dev import bootstrap

    bootstrap.install_crds(cluster.api, bootstrap.crd_manifests(CRDS))
    bootstrap.wait_crds_established(cluster.api)


def _create(cluster: LocalCluster, body: dict[str, Any]) -> Any:
    api = k8s.CustomObjectsApi(cluster.api)
    ns = body["metadata"]["namespace"]
    return api.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, body, dry_run="All")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            [{"name": "A", "value": "x", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}],
            "exactly one of value and valueFrom",
        ),
        ([{"name": "A", "valueFrom": {}}], "exactly one of secretKeyRef and configMapKeyRef"),
        (
            [
                {
                    "name": "A",
                    "valueFrom": {
                        "secretKeyRef": {"name": "s", "key": "k"},
                        "configMapKeyRef": {"name": "c", "key": "k"},
                    },
                }
            ],
            "exactly one of secretKeyRef and configMapKeyRef",
        ),
        ([{"name": "HF_TOKEN", "value": "hf_literal"}], "names a credential"),
    ],
)
def test_cel_refuses_bad_env(
    cluster: LocalCluster, namespace: str, crds_installed: None, env: Any, message: str
) -> None:
    with pytest.raises(ApiException) as exc:
        _create(cluster, _pool(namespace, env))
    assert exc.value.status == 422 and message in str(exc.value.body)


def test_pool_and_its_deployment_are_accepted(
    cluster: LocalCluster, namespace: str, crds_installed: None
) -> None:
    body = _pool(namespace, GOOD_ENV)
    created = _create(cluster, body)
    assert created["spec"]["model"]["credentials"]["name"] == "hub-token"
    pool = ModelPool.model_validate({**created, "metadata": {**created["metadata"], "uid": "u"}})
    dep = deployment(pool, BuildSettings())
    dep["metadata"].pop("ownerReferences")  # the dry-run pool does not exist
    out = k8s.AppsV1Api(cluster.api).create_namespaced_deployment(namespace, dep, dry_run="All")
    pod = out.spec.template.spec
    for c in (pod.init_containers[0], pod.containers[0]):
        env = {e.name: e for e in c.env}
        ref = env["HF_TOKEN"].value_from.secret_key_ref
        assert (ref.name, ref.key) == ("hub-token", "HF_TOKEN") and env["HF_TOKEN"].value is None
    env = {e.name: e for e in pod.containers[0].env}
    assert env["LOG_LEVEL"].value_from.config_map_key_ref.key == "level"
    assert env["MODELFLEET_WORKER_MODEL_CPU_OFFLOAD"].value == "true"
    assert env["MODELFLEET_WORKER_TRUNCATE"].value == "false"
