"""Leadership terms: an operator that loses leadership and later regains it starts
its new term from the cluster, not from what it remembered in the old one."""

from __future__ import annotations

import copy
import signal
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

from api_cases import example
from conftest import LocalCluster, wait_for
from operator_fixture import LEASE_NAMESPACE

pytestmark = pytest.mark.cluster
G, V = "modelfleet.io", "v1alpha1"
LEASE = "modelfleet-operator"


def _pool(name: str) -> dict[str, Any]:
    doc = copy.deepcopy(example("modelpool-preview.yaml"))
    doc["metadata"] = {"name": name}
    doc["spec"]["model"]["source"] = "file:///models/x"
    doc["spec"]["replicas"] = 0  # membership is all a RoutingPolicy checks
    return doc


def _policy() -> dict[str, Any]:
    return {
        "apiVersion": f"{G}/{V}",
        "kind": "RoutingPolicy",
        "metadata": {"name": "terms"},
        "spec": {
            "routes": [
                {"name": "doomed", "match": {"tiers": ["preview"]}, "pool": "doomed"},
                {"name": "default", "pool": "kept"},
            ]
        },
    }


def _policy_status(custom: k8s.CustomObjectsApi, ns: str) -> dict[str, Any]:
    rp = custom.get_namespaced_custom_object(G, V, ns, "routingpolicies", "terms")
    status: dict[str, Any] = rp.get("status") or {}
    return status


def _ready(status: dict[str, Any]) -> dict[str, Any]:
    return next((c for c in status.get("conditions", []) if c["type"] == "Ready"), {})


def _holder(cluster: LocalCluster) -> str | None:
    try:
        lease = k8s.CoordinationV1Api(cluster.api).read_namespaced_lease(LEASE, LEASE_NAMESPACE)
    except ApiException as exc:
        if exc.status == 404:  # no operator has led yet
            return None
        raise
    holder: str | None = lease.spec.holder_identity
    return holder


def test_regained_leadership_forgets_a_pool_deleted_while_standing_by(
    cluster: LocalCluster, namespace: str, operator: Any
) -> None:
    custom = k8s.CustomObjectsApi(cluster.api)
    a = operator.ensure_running()
    # B starts only once A leads: two operators started together race for the lease.
    wait_for(lambda: _holder(cluster) == a.identity, timeout=60, what=f"{a.identity} leads")
    b = operator.spawn()
    paused = False
    try:
        wait_for(lambda: "standing by" in b.log(), timeout=30, what=f"{b.identity} stands by")
        for name in ("doomed", "kept"):
            custom.create_namespaced_custom_object(G, V, namespace, "modelpools", _pool(name))
        custom.create_namespaced_custom_object(G, V, namespace, "routingpolicies", _policy())
        wait_for(
            lambda: _ready(_policy_status(custom, namespace)).get("status") == "True",
            timeout=30,
            what="policy Ready under A",
        )

        # A freezes past its lease; B takes over.
        a.proc.send_signal(signal.SIGSTOP)
        paused = True
        wait_for(lambda: _holder(cluster) == b.identity, timeout=60, what=f"{b.identity} leads")
        # A wakes up, finds the lease taken and stands by (its kopf stopped).
        standing_by = a.log().count("standing by")
        a.proc.send_signal(signal.SIGCONT)
        paused = False
        wait_for(
            lambda: a.log().count("standing by") > standing_by,
            timeout=60,
            what=f"{a.identity} stands by after losing the lease",
        )

        # The pool goes while A stands by: only B sees the deletion.
        custom.delete_namespaced_custom_object(G, V, namespace, "modelpools", "doomed")
        wait_for(
            lambda: _ready(_policy_status(custom, namespace)).get("reason") == "MissingPool",
            timeout=30,
            what="policy MissingPool under B",
        )

        b.kill(signal.SIGTERM)
        wait_for(
            lambda: _holder(cluster) == a.identity, timeout=60, what=f"{a.identity} leads again"
        )
        # A new generation makes A write status from what its new term knows.
        patched = custom.patch_namespaced_custom_object(
            G,
            V,
            namespace,
            "routingpolicies",
            "terms",
            {"spec": {"admission": {"maxInFlight": 32}}},
        )
        generation = patched["metadata"]["generation"]
        status = wait_for(
            lambda: (
                (s := _policy_status(custom, namespace)).get("observedGeneration") == generation
                and s
            ),
            timeout=30,
            what=f"generation {generation} observed under A",
        )
        ready = _ready(status)
        assert (ready.get("status"), ready.get("reason")) == ("False", "MissingPool"), ready
        assert "ModelPool 'doomed'" in ready["message"]
    finally:
        if paused:
            a.proc.send_signal(signal.SIGCONT)
        b.kill(signal.SIGTERM)
