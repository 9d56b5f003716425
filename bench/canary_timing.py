"""Canary timing benchmark on the local cluster with real tiny-model workers.

Measures, with `interval: 10s` and steps 10/30/60/100 under live load:
  1. rollback: time from the candidate first receiving traffic (it fails every
     request) until its weight is 0 again (goal <= 15 s);
  2. a healthy 4-step canary from creation to Succeeded (goal < 50 s);
  3. the operator's CPU and memory while it drives 50 canaries at once.

    .venv/bin/python bench/canary_timing.py
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

from modelfleet_dev import bootstrap, story
from modelfleet_dev.cluster import Cluster
from modelfleet_dev.routerproc import free_port

NS = "bench-canary"


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--many", type=int, default=50, help="canaries driven at once for the CPU/memory part"
    )
    parser.add_argument(
        "--observe-s", type=float, default=60, help="how long to watch the operator then"
    )
    args = parser.parse_args()

    cluster = Cluster()
    cluster.up()
    api = bootstrap.api_client(cluster.paths.kubeconfig)
    core = k8s.CoreV1Api(api)
    custom = k8s.CustomObjectsApi(api)
    try:
        core.delete_namespace(NS)
        story.wait_until(lambda: story.namespace_gone(core, NS), 180, "old namespace gone")
    except ApiException as exc:
        if exc.status != 404:
            raise
    core.create_namespace({"metadata": {"name": NS}})
    bootstrap.wait_default_service_account(api, NS)

    model = story.ensure_tiny_model(cluster.paths.root)
    pools = {"stable": {}, "good": {}, "bad": {"MODELFLEET_WORKER_FAULT_ERROR_RATE": "1.0"}}
    for name, env in pools.items():
        story.create_or_update(api, NS, "modelpools", story.pool_manifest(name, str(model), env))

    env = {**os.environ, "KUBECONFIG": str(cluster.paths.kubeconfig)}
    port = free_port()
    router = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "modelfleet.cli",
            "router",
            "--kube",
            "--namespace",
            NS,
            "--client-auth",
            "off",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    cluster.stop_extra("operator")  # measure an operator of our own
    operator = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "modelfleet.cli",
            "operator",
            "--router-url",
            f"http://127.0.0.1:{port}",
            "--lease-namespace",
            NS,
        ],
        env=env,
        stdout=open("/tmp/bench-canary-operator.log", "wb"),  # noqa: SIM115 (lives as long as the operator)
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            items = custom.list_namespaced_custom_object(story.G, story.V, NS, "modelpools")[
                "items"
            ]
            return len(items) == len(pools) and all(
                (p.get("status") or {}).get("phase") == "Ready" for p in items
            )

        story.wait_until(ready, 300, "pools Ready")
        rows = []
        for name, candidate in (("rollback", "bad"), ("healthy", "good")):
            story.create_or_update(
                api, NS, "routingpolicies", story.single_route_policy(name, "stable")
            )
            story.wait_until(lambda n=name: story.router_serves(url, n), 30, f"router knows {name}")
            with story.Load(url, name, clients=4):
                spec = story.canary_manifest(
                    name, name, "stable", candidate, "10s", [10, 30, 60, 100]
                )
                spec["spec"]["scaleDownDelay"] = "1h"
                story.create_or_update(api, NS, "canaries", spec)
                rows.append(story.watch_canary(api, NS, name, say=print, timeout=300))

        # Many canaries at once (no traffic: each analyses, finds no samples, pauses).
        for i in range(args.many):
            name = f"many-{i}"
            story.create_or_update(
                api, NS, "routingpolicies", story.single_route_policy(name, "stable")
            )
            story.create_or_update(
                api,
                NS,
                "canaries",
                story.canary_manifest(name, name, "stable", "good", "10s", [10, 30, 60, 100]),
            )
        cpu0, t0, peak = _cpu_seconds(operator.pid), time.monotonic(), 0.0
        while time.monotonic() - t0 < args.observe_s:
            peak = max(peak, _rss_mb(operator.pid))
            time.sleep(1)
        cpu_share = (_cpu_seconds(operator.pid) - cpu0) / (time.monotonic() - t0)
        phases: dict[str, int] = {}
        for c in custom.list_namespaced_custom_object(story.G, story.V, NS, "canaries")["items"]:
            if c["metadata"]["name"].startswith("many-"):
                p = (c.get("status") or {}).get("phase", "none")
                phases[p] = phases.get(p, 0) + 1
    finally:
        operator.terminate()
        router.terminate()
        operator.wait(30)
        router.wait(30)
        core.delete_namespace(NS)

    print("\n| measurement | result | goal |")
    print("|---|---|---|")
    rb, ok = rows[0], rows[1]
    print(
        f"| failing candidate: first traffic -> weight 0 | {rb.weight_zero_after:.1f} s ({rb.phase}) | <= 15 s |"
    )
    print(f"| healthy 4-step canary, interval 10s | {ok.seconds:.1f} s ({ok.phase}) | < 50 s |")
    print(
        f"| operator driving {args.many} canaries | {100 * cpu_share:.1f}% of one core, peak RSS {peak:.0f} MB "
        f"(phases: {phases}) | - |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
