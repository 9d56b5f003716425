"""`modelfleet dev ...`: the local Kubernetes control plane."""

from __future__ import annotations

import argparse
import json
import shlex
import sys

from kubernetes.client.rest import ApiException

from modelfleet_dev import binaries
from modelfleet_dev.cluster import Cluster, ClusterError


def _up(args: argparse.Namespace) -> int:
    missing = binaries.missing_prerequisites()
    if missing and not all(c.is_built() for c in binaries.components()):
        print("modelfleet dev up: missing " + ", ".join(missing), file=sys.stderr)
        return 2
    cluster = Cluster()
    try:
        timings = cluster.up(nodes=args.nodes, gpu_product=args.gpu_product)
    except (ClusterError, binaries.BuildError, TimeoutError) as exc:
        print(f"modelfleet dev up: {exc}", file=sys.stderr)
        return 1
    except ApiException as exc:
        print(
            f"modelfleet dev up: the API server refused a bootstrap object: {exc.status} {exc.body}",
            file=sys.stderr,
        )
        return 1
    print(
        f"local cluster up: {args.nodes} fake GPU nodes ({args.gpu_product}, 8 GPUs each) "
        "+ 1 system node, ModelFleet CRDs installed"
    )
    print("timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
    print(f"kubeconfig: {cluster.paths.kubeconfig}")
    print('use it:  eval "$(modelfleet dev env)"  then  kubectl get nodes,modelpools -A')
    return 0


def _down(args: argparse.Namespace) -> int:
    Cluster().down()
    return 0


def _status(args: argparse.Namespace) -> int:
    status = Cluster().status()
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    print(f"state dir:  {status['stateDir']}")
    print(f"apiserver:  {'healthy' if status['apiserverHealthy'] else 'not answering'}")
    if not status["components"]:
        print("components: none running")
    for name, info in status["components"].items():
        print(f"  {name:<24} pid {info['pid']:<8} {'running' if info['alive'] else 'DEAD'}")
    return 0 if status["apiserverHealthy"] else 1


def _env(args: argparse.Namespace) -> int:
    cluster = Cluster()
    path = ":".join(str(d) for d in binaries.bin_dirs())
    print(f"export KUBECONFIG={shlex.quote(str(cluster.paths.kubeconfig))}")
    print(f'export PATH={shlex.quote(path)}:"$PATH"')
    return 0


def _build(args: argparse.Namespace) -> int:
    try:
        spent = binaries.ensure_all(force=args.force)
    except binaries.BuildError as exc:
        print(f"modelfleet dev build: {exc}", file=sys.stderr)
        return 1
    for name, seconds in spent.items():
        print(f"{name}: {'cached' if seconds == 0 else f'built in {seconds:.0f}s'}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    dev = sub.add_parser(
        "dev", help="run a real local Kubernetes control plane with fake GPU nodes"
    )
    dev_sub = dev.add_subparsers(dest="dev_command", required=True, metavar="ACTION")
    up = dev_sub.add_parser("up", help="build (once) and start etcd, API server, controllers, kwok")
    up.add_argument("--nodes", type=int, default=4, help="fake GPU nodes (default 4)")
    up.add_argument(
        "--gpu-product",
        default="NVIDIA-H100-80GB-HBM3",
        help="nvidia.com/gpu.product label of the fake nodes",
    )
    up.set_defaults(handler=_up)
    dev_sub.add_parser("down", help="stop everything `up` started").set_defaults(handler=_down)
    st = dev_sub.add_parser("status", help="what runs, and whether the API server answers")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.set_defaults(handler=_status)
    dev_sub.add_parser("env", help="shell lines exporting KUBECONFIG and PATH").set_defaults(
        handler=_env
    )
    build = dev_sub.add_parser("build", help="build the cluster binaries into the cache")
    build.add_argument("--force", action="store_true", help="rebuild even when cached")
    build.set_defaults(handler=_build)
