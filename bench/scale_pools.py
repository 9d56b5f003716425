"""Scale benchmark for the ModelPool controller.

Creates N ModelPools (1 replica, 1 GPU each) on the local cluster with enough
fake GPU nodes, starts a fresh operator, and measures the time until every
pool reports Ready, the operator's peak RSS, and API requests per pool (from
the API server's apiserver_request_total for the operator's user agent).

    .venv/bin/python bench/scale_pools.py --pools 100 500 1000 --nodes 200
"""

from __future__ import annotations

import argparse
import os
import re
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from kubernetes import client as k8s

from modelfleet_dev import bootstrap
from modelfleet_dev.cluster import Cluster, _ssl_context


def _rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _operator_requests(cluster: Cluster) -> int:
    """Requests the API server counted from Python clients (the operator is the only one running)."""
    ctx: ssl.SSLContext = _ssl_context(cluster.paths)
    url = f"https://127.0.0.1:{cluster.ports.apiserver}/metrics"
    with urllib.request.urlopen(url, context=ctx, timeout=10) as resp:
        text = resp.read().decode()
    total = 0
    for line in text.splitlines():
        if line.startswith("apiserver_request_total{") and re.search(
            r'resource="(deployments|services|poddisruptionbudgets|modelpools)"', line
        ):
            if 'verb="WATCH"' in line:
                continue
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


def run(n: int, cluster: Cluster, api: k8s.ApiClient) -> dict[str, float]:
    ns = f"scale-{n}-{int(time.time())}"
    core = k8s.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": ns}})
    bootstrap.wait_default_service_account(api, ns)
    custom = k8s.CustomObjectsApi(api)
    before = _operator_requests(cluster)
    env = {**os.environ, "KUBECONFIG": str(cluster.paths.kubeconfig)}
    log = open(f"/tmp/scale-operator-{n}.log", "wb")  # noqa: SIM115
    op = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "modelfleet.cli",
            "operator",
            "--namespace",
            ns,
            "--lease-namespace",
            ns,
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    t0 = time.monotonic()
    for i in range(n):
        custom.create_namespaced_custom_object(
            "modelfleet.io",
            "v1alpha1",
            ns,
            "modelpools",
            {
                "apiVersion": "modelfleet.io/v1alpha1",
                "kind": "ModelPool",
                "metadata": {"name": f"pool-{i}"},
                "spec": {"model": {"source": f"file:///models/m{i}"}, "replicas": 1},
            },
        )
    created = time.monotonic() - t0
    peak = 0
    ready = 0
    while time.monotonic() - t0 < 900:
        peak = max(peak, _rss_kb(op.pid))
        items = custom.list_namespaced_custom_object("modelfleet.io", "v1alpha1", ns, "modelpools")[
            "items"
        ]
        ready = sum(1 for p in items if (p.get("status") or {}).get("phase") == "Ready")
        if ready == n:
            break
        time.sleep(1)
    elapsed = time.monotonic() - t0
    requests = _operator_requests(cluster) - before
    op.terminate()
    op.wait(timeout=30)
    core.delete_namespace(ns)
    return {
        "pools": n,
        "ready": ready,
        "create_s": created,
        "all_ready_s": elapsed,
        "peak_rss_mb": peak / 1024,
        "api_requests_per_pool": requests / n,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pools", type=int, nargs="+", default=[100, 500, 1000])
    parser.add_argument("--nodes", type=int, default=200)
    args = parser.parse_args()
    cluster = Cluster()
    cluster.up(nodes=4)
    api = bootstrap.api_client(cluster.paths.kubeconfig)
    added = bootstrap.ensure_nodes(api, args.nodes)
    cluster.stop_extra("operator")
    try:
        rows = [run(n, cluster, api) for n in args.pools]
    finally:
        # Leave the dev cluster as `dev up` made it: tests size their GPU use to 4 nodes.
        core = k8s.CoreV1Api(api)
        for name in added:
            core.delete_node(name)
    print(
        "| pools | Ready | create (s) | all Ready (s) | operator peak RSS (MB) | API requests / pool |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['pools']} | {r['ready']} | {r['create_s']:.1f} | {r['all_ready_s']:.1f} | "
            f"{r['peak_rss_mb']:.0f} | {r['api_requests_per_pool']:.1f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
