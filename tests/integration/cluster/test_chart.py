"""The Helm chart against the real local API server: lint, server-side dry run,
install/upgrade/uninstall, the values schema, the restricted Pod Security
Standard judged by the API server, and least-privilege RBAC proven by running
the operator and router with the chart's ServiceAccount tokens."""

from __future__ import annotations

import copy
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

from api_cases import example
from conftest import REPO, LocalCluster, wait_for
from modelfleet.api import crdgen
from modelfleet.api.modelpool import ModelPool
from modelfleet.builders import modelpool as build

pytestmark = pytest.mark.cluster
CHART = REPO / "charts" / "modelfleet"
KUBE_VERSION = "v1.35.4"
RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted"}


def run(
    cluster: LocalCluster, *cmd: str, check: bool = True, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(cmd), env=cluster.env(), capture_output=True, text=True, input=stdin)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def test_chart_crds_match_generated() -> None:
    assert not crdgen.stale_files(CHART / "crds"), (
        "charts/modelfleet/crds is stale; run `make crds`"
    )


def test_crd_upgrade_path_as_documented(cluster: LocalCluster) -> None:
    """docs/install.md#upgrading: Helm never upgrades crds/, users apply them first.
    Over CRDs that are already installed (by someone else's field manager), this is
    what a user runs before `helm upgrade`."""
    crds = run(cluster, "helm", "show", "crds", str(CHART)).stdout
    out = run(
        cluster,
        "kubectl",
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        "-",
        stdin=crds,
    ).stdout
    applied = sorted(line.split()[0] for line in out.splitlines() if "serverside-applied" in line)
    assert applied == [
        f"customresourcedefinition.apiextensions.k8s.io/{plural}.modelfleet.io"
        for plural in ("canaries", "modelpools", "routingpolicies")
    ], out
    docs = (REPO / "docs" / "install.md").read_text()
    assert "| kubectl apply --server-side --force-conflicts -f -" in docs


def test_helm_lint_strict(cluster: LocalCluster) -> None:
    out = run(cluster, "helm", "lint", "--strict", str(CHART))
    assert "0 chart(s) failed" in out.stdout


def test_template_passes_server_side_dry_run(cluster: LocalCluster, namespace: str) -> None:
    for values in (
        [],
        [
            "--set",
            "namespaced=true",
            "--set",
            "router.autoscaling.enabled=true",
            "--set",
            "grafana.dashboard.enabled=true",
            "--set",
            "router.assets.store=redis",
            "--set",
            "router.assets.redis.url=redis://redis:6379/0",
            "--set",
            "router.assets.redis.existingSecret=redis-auth",
        ],
    ):
        rendered = run(
            cluster,
            "helm",
            "template",
            "mf",
            str(CHART),
            "-n",
            namespace,
            "--kube-version",
            KUBE_VERSION,
            *values,
        ).stdout
        kinds = {d["kind"] for d in yaml.safe_load_all(rendered) if d}
        assert {"Deployment", "Service", "ServiceAccount", "NetworkPolicy"} <= kinds
        run(
            cluster,
            "kubectl",
            "apply",
            "--dry-run=server",
            "-n",
            namespace,
            "-f",
            "-",
            stdin=rendered,
        )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "router.replicas=-1"], "/router/replicas"),
        (["--set", "bogus=1"], "bogus"),
        (["--set-string", "operator.replicas=two"], "/operator/replicas"),
        (["--set", "image.pullPolicy=Sometimes"], "/image/pullPolicy"),
        # Sticky asset records in memory are per replica: more than one needs Redis.
        (["--set", "router.replicas=2"], "cannot keep sticky asset records in memory"),
        (["--set", "router.autoscaling.enabled=true"], "or autoscaling, cannot keep"),
        (["--set", "router.assets.store=redis"], "/router/assets/redis/url"),
        (["--set", "router.assets.redis.url=redis://:pw@h:6379/0"], "/router/assets/redis/url"),
    ],
)
def test_bad_values_fail_with_schema_message(
    cluster: LocalCluster, args: list[str], message: str
) -> None:
    proc = run(
        cluster,
        "helm",
        "template",
        "mf",
        str(CHART),
        "--kube-version",
        KUBE_VERSION,
        *args,
        check=False,
    )
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr


@pytest.mark.parametrize("namespace", [RESTRICTED], indirect=True)
def test_install_upgrade_uninstall_under_restricted_pss(
    cluster: LocalCluster, namespace: str
) -> None:
    apps = k8s.AppsV1Api(cluster.api)
    core = k8s.CoreV1Api(cluster.api)
    run(cluster, "helm", "install", "mf", str(CHART), "-n", namespace, "--set", "namespaced=true")
    selector = "app.kubernetes.io/instance=mf"

    def pods_by_component() -> dict[str, int] | None:
        pods = core.list_namespaced_pod(namespace, label_selector=selector).items
        counts: dict[str, int] = {}
        for p in pods:
            if p.status.phase == "Running":
                comp = p.metadata.labels["app.kubernetes.io/component"]
                counts[comp] = counts.get(comp, 0) + 1
        return counts if counts == {"operator": 1, "router": 1} else None

    # The ReplicaSets' pods only exist if the API server admitted them as restricted.
    wait_for(pods_by_component, timeout=60, what="operator and router pods admitted and Running")
    notes = run(cluster, "helm", "get", "notes", "mf", "-n", namespace).stdout
    assert "kubectl modelfleet status" in notes

    run(
        cluster,
        "helm",
        "upgrade",
        "mf",
        str(CHART),
        "-n",
        namespace,
        "--set",
        "namespaced=true",
        "--set",
        "router.replicas=3",
        # Several replicas share the sticky asset records through Redis (the schema says so).
        "--set",
        "router.assets.store=redis",
        "--set",
        "router.assets.redis.url=redis://redis.invalid:6379/0",
    )
    wait_for(
        lambda: (
            apps.read_namespaced_deployment("mf-modelfleet-router", namespace).spec.replicas == 3
        ),
        timeout=30,
        what="router scaled by upgrade",
    )

    run(cluster, "helm", "uninstall", "mf", "-n", namespace, "--wait")
    left = [
        d.metadata.name
        for d in apps.list_namespaced_deployment(namespace, label_selector=selector).items
    ]
    left += [
        s.metadata.name
        for s in core.list_namespaced_service(namespace, label_selector=selector).items
    ]
    left += [
        s.metadata.name
        for s in core.list_namespaced_service_account(namespace, label_selector=selector).items
    ]
    roles = (
        k8s.RbacAuthorizationV1Api(cluster.api)
        .list_namespaced_role(namespace, label_selector=selector)
        .items
    )
    assert left == [] and roles == [], f"left behind: {left} {roles}"
    # CRDs stay, as Helm documents for crds/.
    k8s.ApiextensionsV1Api(cluster.api).read_custom_resource_definition("modelpools.modelfleet.io")


@pytest.mark.parametrize("namespace", [RESTRICTED], indirect=True)
def test_worker_pods_satisfy_restricted(cluster: LocalCluster, namespace: str) -> None:
    core = k8s.CoreV1Api(cluster.api)
    doc = copy.deepcopy(example("modelpool-production.yaml"))
    doc["metadata"].update({"namespace": namespace, "uid": "x"})
    template = build.deployment(ModelPool.model_validate(doc), build.BuildSettings())["spec"][
        "template"
    ]
    core.create_namespaced_pod(
        namespace, {"metadata": {"name": "worker"}, "spec": template["spec"]}
    )
    # Control: the namespace really enforces (a privileged pod is refused).
    with pytest.raises(ApiException) as err:
        core.create_namespaced_pod(
            namespace,
            {
                "metadata": {"name": "bad"},
                "spec": {
                    "containers": [
                        {"name": "c", "image": "x", "securityContext": {"privileged": True}}
                    ]
                },
            },
        )
    assert "violates PodSecurity" in err.value.body


def _can(
    cluster: LocalCluster, user: str, verb: str, resource: str, namespace: str, group: str = ""
) -> bool:
    review = k8s.AuthorizationV1Api(cluster.api).create_subject_access_review(
        {
            "spec": {
                "user": user,
                "resourceAttributes": {
                    "verb": verb,
                    "resource": resource,
                    "group": group,
                    "namespace": namespace,
                },
            }
        }
    )
    return bool(review.status.allowed)


def _token_kubeconfig(cluster: LocalCluster, namespace: str, sa: str, path: Path) -> Path:
    token = run(
        cluster, "kubectl", "create", "token", sa, "-n", namespace, "--duration=1h"
    ).stdout.strip()
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "sa",
                "clusters": admin["clusters"],
                "users": [{"name": sa, "user": {"token": token}}],
                "contexts": [
                    {"name": "sa", "context": {"cluster": admin["clusters"][0]["name"], "user": sa}}
                ],
            }
        )
    )
    return path


def test_least_privilege_rbac(
    cluster: LocalCluster, namespace: str, operator: Any, tmp_path: Path
) -> None:
    """Install cluster-wide, then run the real operator and router as the chart's
    ServiceAccounts: a pool reaches Ready and the router serves its policy, while
    forbidden things stay forbidden."""
    # Namespaced mode (a Role, not a ClusterRole): the operator sees only this namespace.
    run(cluster, "helm", "install", "rbac", str(CHART), "-n", namespace, "--set", "namespaced=true")
    op_user = f"system:serviceaccount:{namespace}:rbac-modelfleet-operator"
    router_user = f"system:serviceaccount:{namespace}:rbac-modelfleet-router"
    try:
        for verb, resource, group in (
            ("patch", "deployments", "apps"),
            ("watch", "modelpools", "modelfleet.io"),
            ("patch", "canaries/status", "modelfleet.io"),
            ("create", "events", ""),
            ("get", "configmaps", ""),  # golden prompts of the canary replay; get only
            ("patch", "modelpools/scale", "modelfleet.io"),  # the autoscaler's replicas
            ("list", "endpointslices", "discovery.k8s.io"),  # every router replica's demand
        ):
            assert _can(cluster, op_user, verb, resource, namespace, group), (verb, resource)
            assert not _can(cluster, op_user, verb, resource, "elsewhere", group), (verb, resource)
        for user, verb, resource, group in (
            (op_user, "get", "secrets", ""),
            (op_user, "list", "secrets", ""),
            (op_user, "delete", "namespaces", ""),
            (op_user, "delete", "deployments", "apps"),
            (op_user, "create", "pods", ""),
            (op_user, "list", "configmaps", ""),
            (router_user, "patch", "routingpolicies", "modelfleet.io"),
            # The router reads Secrets of its own namespace only, the client keys
            # (test_client_keys_cluster.py checks where it may and may not).
            (router_user, "list", "pods", ""),
        ):
            assert not _can(cluster, user, verb, resource, namespace, group), (user, verb, resource)

        # The session operator (admin) steps aside while the ServiceAccount one runs.
        operator.main.kill(signal.SIGTERM)
        env_op = _token_kubeconfig(
            cluster, namespace, "rbac-modelfleet-operator", tmp_path / "op.kubeconfig"
        )
        env_router = _token_kubeconfig(
            cluster, namespace, "rbac-modelfleet-router", tmp_path / "router.kubeconfig"
        )
        log = (tmp_path / "op.log").open("wb")
        op = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "modelfleet.cli",
                "operator",
                "--namespace",
                namespace,
                "--lease-namespace",
                namespace,
                "--lease-seconds",
                "6",
            ],
            env={**cluster.env(), "KUBECONFIG": str(env_op)},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        from modelfleet_dev.routerproc import RouterProcess

        try:
            custom = k8s.CustomObjectsApi(cluster.api)
            pool = copy.deepcopy(example("modelpool-production.yaml"))
            pool["metadata"] = {"name": "rbac-pool"}
            custom.create_namespaced_custom_object(
                "modelfleet.io", "v1alpha1", namespace, "modelpools", pool
            )
            policy = {
                "apiVersion": "modelfleet.io/v1alpha1",
                "kind": "RoutingPolicy",
                "metadata": {"name": "p"},
                "spec": {"routes": [{"name": "all", "pool": "rbac-pool"}]},
            }
            custom.create_namespaced_custom_object(
                "modelfleet.io", "v1alpha1", namespace, "routingpolicies", policy
            )

            def ready() -> bool:
                obj = custom.get_namespaced_custom_object(
                    "modelfleet.io", "v1alpha1", namespace, "modelpools", "rbac-pool"
                )
                return (obj.get("status") or {}).get("phase") == "Ready"

            wait_for(ready, timeout=60, what="pool Ready under the operator's ServiceAccount")
            rp = custom.get_namespaced_custom_object(
                "modelfleet.io", "v1alpha1", namespace, "routingpolicies", "p"
            )
            wait_for(
                lambda: any(
                    c["status"] == "True"
                    for c in (
                        custom.get_namespaced_custom_object(
                            "modelfleet.io", "v1alpha1", namespace, "routingpolicies", "p"
                        ).get("status")
                        or {}
                    ).get("conditions", [])
                ),
                timeout=30,
                what="policy compiled under the operator's ServiceAccount",
            )
            assert rp is not None
            events = k8s.CoreV1Api(cluster.api).list_namespaced_event(namespace).items
            assert any(e.reason == "Created" for e in events)

            # Every write a canary makes: its status, the compiled weights, the promotion
            # (RoutingPolicy spec), the old stable's scale-down (ModelPool spec), Events.
            candidate = copy.deepcopy(pool)
            candidate["metadata"] = {"name": "rbac-candidate"}
            custom.create_namespaced_custom_object(
                "modelfleet.io", "v1alpha1", namespace, "modelpools", candidate
            )
            canary = {
                "apiVersion": "modelfleet.io/v1alpha1",
                "kind": "Canary",
                "metadata": {"name": "c"},
                "spec": {
                    "routingPolicy": "p",
                    "route": "all",
                    "stablePool": "rbac-pool",
                    "candidatePool": "rbac-candidate",
                    "interval": "1h",
                    "scaleDownDelay": "0s",
                },
            }
            custom.create_namespaced_custom_object(
                "modelfleet.io", "v1alpha1", namespace, "canaries", canary
            )

            def canary_phase() -> str:
                obj = custom.get_namespaced_custom_object(
                    "modelfleet.io", "v1alpha1", namespace, "canaries", "c"
                )
                return str((obj.get("status") or {}).get("phase"))

            wait_for(
                lambda: canary_phase() == "Progressing", timeout=60, what="canary Progressing (SA)"
            )
            wait_for(
                lambda: (
                    len(
                        (
                            custom.get_namespaced_custom_object(
                                "modelfleet.io", "v1alpha1", namespace, "routingpolicies", "p"
                            ).get("status")
                            or {}
                        )
                        .get("routes", [{}])[0]
                        .get("pools", [])
                    )
                    == 2
                ),
                timeout=30,
                what="canary weight compiled (SA)",
            )
            custom.patch_namespaced_custom_object(
                "modelfleet.io",
                "v1alpha1",
                namespace,
                "canaries",
                "c",
                {"metadata": {"annotations": {"modelfleet.io/action": "promote:1"}}},
            )
            wait_for(lambda: canary_phase() == "Succeeded", timeout=60, what="canary promoted (SA)")
            wait_for(
                lambda: (
                    custom.get_namespaced_custom_object(
                        "modelfleet.io", "v1alpha1", namespace, "routingpolicies", "p"
                    )["spec"]["routes"][0]["pool"]
                    == "rbac-candidate"
                    and custom.get_namespaced_custom_object(
                        "modelfleet.io", "v1alpha1", namespace, "modelpools", "rbac-pool"
                    )["spec"]["replicas"]
                    == 0
                ),
                timeout=30,
                what="route promoted and old stable scaled down (SA)",
            )
            forbidden = [
                line
                for line in (tmp_path / "op.log").read_text().splitlines()
                if "forbidden" in line.lower() and "being terminated" not in line
            ]
            assert forbidden == [], forbidden[:5]
            with RouterProcess(
                None,
                # --client-auth keys: it lists the namespace's client-key Secrets too.
                [
                    *("--kube", "--namespace", namespace, "--kubeconfig", str(env_router)),
                    *("--client-auth", "keys"),
                ],
            ) as router:
                import urllib.request

                with urllib.request.urlopen(router.url + "/readyz", timeout=5) as resp:
                    assert resp.status == 200, "the router loaded policies with its ServiceAccount"
        finally:
            op.send_signal(signal.SIGTERM)
            op.wait(timeout=30)
            log.close()
    finally:
        operator.ensure_running()
        run(cluster, "helm", "uninstall", "rbac", "-n", namespace, check=False)
