"""Client keys on the real API server: the router (`--client-auth keys`) watches Secrets
labelled modelfleet.io/client-key=true in its namespace. A new Secret's key is accepted, a
rotated one (data.key changed) replaces the old within 5 s, an unlabelled or deleted one
is refused, a Secret with a bad annotation is refused naming it; the key never appears in
the router's log, /metrics, error bodies or Events. The chart's router ServiceAccount may
read Secrets in the release namespace and nowhere else (SubjectAccessReview)."""

from __future__ import annotations

import base64
import json
import subprocess
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
from kubernetes import client as k8s

from conftest import REPO, LocalCluster
from modelfleet_dev.routerproc import RouterProcess
from modelfleet_dev.story import single_route_policy
from polling import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]
G, V = "modelfleet.io", "v1alpha1"
OLD = "mf-cluster-old-key-5d2a91c4e7"
NEW = "mf-cluster-new-key-83bf06a1d2"
OTHER = "mf-cluster-other-key-19e4c07b"
LABEL = {"modelfleet.io/client-key": "true"}


def _secret(name: str, key: str, **annotations: str) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "labels": LABEL,
            "annotations": {f"modelfleet.io/{k.replace('_', '-')}": v for k, v in annotations.items()},
        },
        "data": {"key": base64.b64encode(key.encode()).decode()},
    }  # fmt: skip


def _status(url: str, key: str | None) -> tuple[int, str]:
    """The status of a generation with this key, and the body. Authenticated requests
    get 503 no_endpoints (the pool has none); refused ones 401."""
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(
        url + "/v1/images/generations", json.dumps({"prompt": "x"}).encode(), headers
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_keys_follow_the_secrets(cluster: LocalCluster, namespace: str) -> None:
    core = k8s.CoreV1Api(cluster.api)
    k8s.CustomObjectsApi(cluster.api).create_namespaced_custom_object(
        G, V, namespace, "routingpolicies", single_route_policy("images", "nowhere")
    )
    core.create_namespaced_secret(namespace, _secret("team-a", OLD, key_id="team-a"))
    bodies: list[str] = []

    def status(url: str, key: str | None) -> int:
        code, body = _status(url, key)
        bodies.append(body)
        return code

    args = ["--client-auth", "keys", "--auth-failures-per-minute", "1000"]
    with RouterProcess.kube(namespace, cluster.kubeconfig, *args) as r:
        assert status(r.url, OLD) == 503  # authenticated; the pool has no endpoints
        assert status(r.url, None) == 401
        assert status(r.url, OTHER) == 401

        # Rotation: the same Secret, a new key. The old one stops, the new one works.
        t0 = time.monotonic()
        core.patch_namespaced_secret(
            "team-a", namespace, {"data": {"key": base64.b64encode(NEW.encode()).decode()}}
        )
        wait_for(
            lambda: (status(r.url, OLD), status(r.url, NEW)),
            until=lambda got: got == (401, 503),
            timeout=5,
            interval=0.05,
            what="rotated key in effect",
        )
        rotated_s = time.monotonic() - t0

        # A second key, created while running; a bad one is refused naming Secret and field.
        core.create_namespaced_secret(namespace, _secret("ci", OTHER))
        core.create_namespaced_secret(namespace, _secret("bad", OLD + "x", budget="lots"))
        wait_for(lambda: status(r.url, OTHER), until=lambda s: s == 503, timeout=5, interval=0.05)
        wait_for(
            lambda: (
                "Secret " + namespace + "/bad refused: annotations[modelfleet.io/budget]"
                in r.logs()
            ),
            timeout=5,
            what="the bad Secret refused in the log",
        )

        # Revoked by removing the label, and by deleting the Secret.
        core.patch_namespaced_secret(
            "team-a", namespace, {"metadata": {"labels": {"modelfleet.io/client-key": None}}}
        )
        wait_for(lambda: status(r.url, NEW), until=lambda s: s == 401, timeout=5, interval=0.05)
        core.delete_namespaced_secret("ci", namespace)
        wait_for(lambda: status(r.url, OTHER), until=lambda s: s == 401, timeout=5, interval=0.05)

        with urllib.request.urlopen(r.url + "/metrics", timeout=5) as resp:
            metrics = resp.read().decode()
        assert (
            f'modelfleet_router_client_keys_refused{{field="annotations[modelfleet.io/budget]",'
            f'namespace="{namespace}",secret="bad"}} 1.0'
        ) in metrics
        assert (
            f'modelfleet_router_client_requests_total{{key="team-a",namespace="{namespace}",'
            'outcome="upstream_error"}'
        ) in metrics
        logs = r.logs()
    events = core.list_namespaced_event(namespace).items
    seen = [logs, metrics, *bodies, *(f"{e.message} {e.reason}" for e in events)]
    for key in (OLD, NEW, OTHER):
        for b64 in (key, base64.b64encode(key.encode()).decode()):
            assert not any(b64 in text for text in seen), key
    print(f"rotation took effect in {rotated_s:.2f} s")
    assert rotated_s < 5


def _can(cluster: LocalCluster, user: str, verb: str, namespace: str) -> bool:
    review = k8s.AuthorizationV1Api(cluster.api).create_subject_access_review(
        {
            "spec": {
                "user": user,
                "resourceAttributes": {"verb": verb, "resource": "secrets", "namespace": namespace},
            }
        }
    )
    return bool(review.status.allowed)


def test_chart_router_reads_secrets_of_its_namespace_only(
    cluster: LocalCluster, namespace: str
) -> None:
    """Cluster-wide install (a ClusterRole for routes and endpoints): Secrets still only
    through a Role in the release namespace."""
    chart = str(REPO / "charts" / "modelfleet")
    release = "keys" + namespace[-6:]
    run = [*("helm", "install", release, chart, "-n", namespace), "--set", "namespaced=false"]
    subprocess.run(run, env=cluster.env(), check=True, capture_output=True)
    try:
        user = f"system:serviceaccount:{namespace}:{release}-modelfleet-router"
        for verb in ("get", "list", "watch"):
            assert _can(cluster, user, verb, namespace), verb
            assert not _can(cluster, user, verb, "kube-system"), verb
            assert not _can(cluster, user, verb, ""), verb  # cluster-wide
        for verb in ("create", "patch", "delete"):
            assert not _can(cluster, user, verb, namespace), verb
    finally:
        subprocess.run(
            ["helm", "uninstall", release, "-n", namespace],
            env=cluster.env(),
            capture_output=True,
        )
