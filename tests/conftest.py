"""Shared fixtures: the session-scoped local cluster and a namespace per test."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from polling import wait_for as wait_for  # re-exported: tests import it from here too

# Stand-in workers, HTTP client and router subprocess fixtures (the router process tests).
pytest_plugins = ["router_fixtures", "redis_fixture"]  # redis_fixture: real redis-server

REPO = Path(__file__).resolve().parents[1]


@dataclass
class LocalCluster:
    kubeconfig: Path
    api: Any  # kubernetes.client.ApiClient

    def env(self) -> dict[str, str]:
        from modelfleet_dev import binaries

        path = ":".join(str(d) for d in binaries.bin_dirs())
        return {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "PATH": f"{path}:{os.environ['PATH']}",
        }


@pytest.fixture(scope="session")
def cluster() -> Iterator[LocalCluster]:
    """Start the local control plane once per session, or reuse a running one."""
    from modelfleet_dev import bootstrap
    from modelfleet_dev.cluster import Cluster

    c = Cluster()
    started_here = not c.is_up()
    c.up()
    api = bootstrap.api_client(c.paths.kubeconfig)
    yield LocalCluster(kubeconfig=c.paths.kubeconfig, api=api)
    if started_here and not os.environ.get("MODELFLEET_KEEP_CLUSTER"):
        c.down(quiet=True)


@pytest.fixture
def namespace(cluster: LocalCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace per test; deleted afterwards (deletion is not awaited)."""
    from kubernetes import client as k8s

    from modelfleet_dev import bootstrap

    # Unique per run: a namespace of an earlier run may still be terminating.
    digest = hashlib.sha1(f"{request.node.nodeid}{time.time_ns()}".encode()).hexdigest()[:6]
    base = request.node.name.lower().replace("_", "-")
    base = "".join(ch for ch in base if ch.isalnum() or ch == "-")[:40].strip("-")
    name = f"t-{base}-{digest}"
    core = k8s.CoreV1Api(cluster.api)
    labels = getattr(request, "param", None) or {}
    core.create_namespace(
        {"metadata": {"name": name, "labels": {"modelfleet.io/test": "true", **labels}}}
    )
    bootstrap.wait_default_service_account(cluster.api, name, timeout=30)
    yield name
    core.delete_namespace(name)


def modelfleet_cluster() -> Any:
    from modelfleet_dev.cluster import Cluster

    return Cluster()


@pytest.fixture(scope="session")
def operator(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One real operator process for the whole session (tests may kill and replace it)."""
    from operator_fixture import OperatorManager

    # Exactly one operator may act: stop the one `make demo` left running.
    modelfleet_cluster().stop_extra("operator")
    manager = OperatorManager(cluster.kubeconfig, tmp_path_factory.mktemp("operator-logs"))
    manager.ensure_running()
    yield manager
    manager.stop_all()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """On a failed cluster test, attach what a person would look at first: the
    operator's log tail and the test namespace's objects and events."""
    outcome: Any = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    funcargs = getattr(item, "funcargs", {})
    manager = funcargs.get("operator")
    main = getattr(manager, "main", None)
    if main is not None:
        tail = "\n".join(main.log().splitlines()[-80:])
        report.sections.append(("operator log (last 80 lines)", tail))
    ns, cluster_ = funcargs.get("namespace"), funcargs.get("cluster")
    if isinstance(ns, str) and isinstance(cluster_, LocalCluster):
        report.sections.append(("namespace state", _describe_namespace(cluster_, ns)))


def _describe_namespace(cluster: LocalCluster, ns: str) -> str:
    import subprocess

    from modelfleet_dev import binaries

    kubectl = str(binaries.binary_path("kubectl"))
    out = []
    for args in (
        ["get", "modelpools,canaries,routingpolicies,deploy,rs,pods", "-o", "wide"],
        [
            "get",
            "modelpools",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name}: {.status}{'\\n'}{end}",
        ],
        ["get", "events", "--sort-by=.lastTimestamp"],
    ):
        proc = subprocess.run(
            [kubectl, "-n", ns, *args],
            env=cluster.env(),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        out.append(f"$ kubectl -n {ns} {' '.join(args)}\n{proc.stdout}{proc.stderr}")
    out.append(gpu_allocation(cluster))
    return "\n".join(out)


def gpu_allocation(cluster: LocalCluster) -> str:
    """GPUs held per namespace (terminating namespaces included): a test's pods stay
    Pending when earlier tests' pods still hold the fake nodes' GPUs."""
    from kubernetes import client as k8s

    core = k8s.CoreV1Api(cluster.api)
    held: dict[str, int] = {}
    for pod in core.list_pod_for_all_namespaces().items:
        if pod.status.phase in ("Succeeded", "Failed") or not pod.spec.node_name:
            continue
        for c in pod.spec.containers:
            gpus = int(((c.resources and c.resources.limits) or {}).get("nvidia.com/gpu", 0))
            if gpus:
                held[pod.metadata.namespace] = held.get(pod.metadata.namespace, 0) + gpus
    capacity = sum(
        int((n.status.allocatable or {}).get("nvidia.com/gpu", 0)) for n in core.list_node().items
    )
    top = sorted(held.items(), key=lambda kv: -kv[1])[:10]
    lines = [f"GPUs held by scheduled pods: {sum(held.values())} of {capacity}"]
    lines += [f"  {ns}: {n}" for ns, n in top]
    return "\n".join(lines)
