"""The operator/router image, proven against the local API server: its operator
entrypoint runs from the image's root filesystem as the image's non-root user, with
the arguments the chart renders, in-cluster credentials of the chart's own
ServiceAccount mounted where a kubelet mounts them, and reconciles a ModelPool."""

from __future__ import annotations

import contextlib
import copy
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml
from kubernetes import client as k8s

import oci_image
from api_cases import example
from conftest import REPO, LocalCluster, wait_for
from modelfleet_dev.routerproc import free_port

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]
CHART = REPO / "charts" / "modelfleet"
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[oci_image.Unpacked]:
    missing = oci_image.missing_tools()
    if missing:
        pytest.fail(f"missing {missing}: install them (scripts/prereqs.sh does, as root)")
    yield oci_image.unpack(oci_image.archive("modelfleet"), tmp_path_factory.mktemp("image"))


def sh(cluster: LocalCluster, *cmd: str) -> str:
    proc = subprocess.run(list(cmd), env=cluster.env(), capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def chart_operator_args(cluster: LocalCluster, namespace: str, *values: str) -> list[str]:
    rendered = sh(cluster, "helm", "template", "img", str(CHART), "-n", namespace, *values)
    for doc in yaml.safe_load_all(rendered):
        if doc and doc["kind"] == "Deployment" and doc["metadata"]["name"].endswith("-operator"):
            container = doc["spec"]["template"]["spec"]["containers"][0]
            return [*container["command"], *container["args"]]
    raise AssertionError("the chart renders no operator Deployment")


def service_account_files(cluster: LocalCluster, namespace: str, sa: str, out: Path) -> Path:
    """What a kubelet projects into a pod: a token, the cluster CA, the namespace."""
    out.mkdir()
    token = sh(cluster, "kubectl", "create", "token", sa, "-n", namespace, "--duration=1h")
    (out / "token").write_text(token.strip())
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    ca = Path(admin["clusters"][0]["cluster"]["certificate-authority"])
    (out / "ca.crt").write_bytes(ca.read_bytes())
    (out / "namespace").write_text(namespace)
    for f in out.iterdir():
        f.chmod(0o644)  # readable by the image's user, as a projected volume is
    return out


def test_operator_image_reconciles_a_pool(
    cluster: LocalCluster,
    namespace: str,
    operator: Any,
    image: oci_image.Unpacked,
    tmp_path: Path,
) -> None:
    values = ("--set", "namespaced=true")
    sh(cluster, "helm", "install", "img", str(CHART), "-n", namespace, *values)
    custom = k8s.CustomObjectsApi(cluster.api)
    container = None
    stack = contextlib.ExitStack()
    try:
        creds = service_account_files(
            cluster, namespace, "img-modelfleet-operator", tmp_path / "sa"
        )
        server = urlparse(
            yaml.safe_load(cluster.kubeconfig.read_text())["clusters"][0]["cluster"]["server"]
        )
        # The chart's arguments, on free ports: the host network is shared.
        health, metrics = free_port(), free_port()
        args = [
            a
            for a in chart_operator_args(cluster, namespace, *values)
            if not a.startswith(("--liveness=", "--metrics-port="))
        ]
        args += [f"--liveness=http://127.0.0.1:{health}/healthz", f"--metrics-port={metrics}"]
        # As in a pod: kubernetes.default.svc:443 (kopf's in-cluster address) and the
        # KUBERNETES_SERVICE_* variables lead to the API server through a "Service".
        hosts = tmp_path / "hosts"
        hosts.write_text("127.0.0.1 localhost kubernetes.default.svc\n")
        upstream = (str(server.hostname), int(server.port or 443))
        stack.enter_context(oci_image.Forwarder(("127.0.0.1", 443), upstream))
        # The session operator steps aside: exactly one operator acts on the pool.
        operator.main.kill(signal.SIGTERM)
        container = oci_image.run(
            image,
            args=args,
            env={
                "KUBERNETES_SERVICE_HOST": "127.0.0.1",
                "KUBERNETES_SERVICE_PORT": "443",
                "POD_NAMESPACE": namespace,
            },
            mounts=(oci_image.Mount(creds, SA_DIR), oci_image.Mount(hosts, "/etc/hosts")),
            log_path=tmp_path / "operator.log",
        )
        pool = copy.deepcopy(example("modelpool-production.yaml"))
        pool["metadata"] = {"name": "from-image"}
        custom.create_namespaced_custom_object(
            "modelfleet.io", "v1alpha1", namespace, "modelpools", pool
        )

        def phase() -> str | None:
            assert container is not None and container.running(), container and container.log()
            obj = custom.get_namespaced_custom_object(
                "modelfleet.io", "v1alpha1", namespace, "modelpools", "from-image"
            )
            return (obj.get("status") or {}).get("phase")

        try:
            wait_for(phase, timeout=120, until=lambda p: p == "Ready", what="pool Ready (image)")
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}\noperator log (image):\n{container.log()[-4000:]}"
            ) from None
        assert container.uid_gid() == (10001, 10001)
        dep = k8s.AppsV1Api(cluster.api).read_namespaced_deployment("from-image", namespace)
        values = yaml.safe_load((CHART / "values.yaml").read_text())
        assert dep.spec.template.spec.containers[0].image == (
            f"{values['workerImage']['repository']}:{oci_image.version()}"
        )
        # The chart enables it: the pool's workers admit only router pods.
        policy = k8s.NetworkingV1Api(cluster.api).read_namespaced_network_policy(
            "from-image", namespace
        )
        assert policy.spec.ingress[0]._from[0].pod_selector.match_labels == {
            "app.kubernetes.io/name": "modelfleet-router"
        }
        with urllib.request.urlopen(f"http://127.0.0.1:{health}/healthz", timeout=5) as resp:
            assert resp.status == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5) as resp:
            assert resp.status == 200
        forbidden = [line for line in container.log().splitlines() if "orbidden" in line]
        assert forbidden == [], forbidden[:5]
        code = container.stop()
        assert code == 0, f"operator exited {code} on SIGTERM:\n{container.log()}"
    finally:
        if container is not None:
            container.stop()
        stack.close()
        operator.ensure_running()
        subprocess.run(
            ["helm", "uninstall", "img", "-n", namespace],
            env=cluster.env(),
            capture_output=True,
        )
