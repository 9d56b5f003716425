"""`kubectl modelfleet pools [-A]`: ModelPools and the GPUs they request."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from modelfleet.kubectl.client import Kube, list_pools
from modelfleet.kubectl.formatting import format_table


def gpu_label(gpu: dict[str, Any] | None) -> str:
    gpu = gpu or {}
    count = gpu.get("count", 1)
    if not count:
        return "0"
    return f"{count} x {gpu.get('product') or 'any'}"


def _hosted(spec: dict[str, Any]) -> bool:
    return bool(spec.get("backend", "diffusers") != "diffusers")


def pool_gpus(pool: dict[str, Any]) -> int:
    """GPUs the pool requests: replicas x GPUs per pod (none for a hosted pool's CPU adapters)."""
    spec = pool.get("spec") or {}
    if _hosted(spec):
        return 0
    replicas = int(spec.get("replicas", 1) or 0)
    count = int((spec.get("gpu") or {}).get("count", 1) or 0)
    return replicas * count


def model_label(model: dict[str, Any] | None) -> str:
    model = model or {}
    label = str(model.get("source", ""))
    if model.get("revision"):
        label += f"@{model['revision']}"
    return label


def hosted_label(spec: dict[str, Any]) -> str:
    return f"{spec.get('backend')}:{(spec.get('provider') or {}).get('model', '')}"


def format_pools(pools: Sequence[dict[str, Any]], all_namespaces: bool) -> str:
    headers = ["name", "ready/replicas", "phase", "gpu", "model"]
    if all_namespaces:
        headers = ["namespace", *headers]
    rows = []
    for p in sorted(
        pools,
        key=lambda p: (p["metadata"].get("namespace", ""), p["metadata"].get("name", "")),
    ):
        spec = p.get("spec") or {}
        st = p.get("status") or {}
        row = [
            p["metadata"].get("name", ""),
            f"{st.get('readyReplicas') or 0}/{spec.get('replicas', 1)}",
            st.get("phase") or "-",
            "-" if _hosted(spec) else gpu_label(spec.get("gpu")),
            hosted_label(spec) if _hosted(spec) else model_label(spec.get("model")),
        ]
        if all_namespaces:
            row.insert(0, p["metadata"].get("namespace", ""))
        rows.append(row)
    total = sum(pool_gpus(p) for p in pools)
    noun = "pool" if len(pools) == 1 else "pools"
    return f"{format_table(headers, rows)}\n\nTotal GPUs requested: {total} ({len(pools)} {noun})"


def cmd_pools(kube: Kube, args: argparse.Namespace) -> int:
    pools = list_pools(kube, args.all_namespaces)
    if not pools:
        where = "any namespace" if args.all_namespaces else f"namespace {kube.namespace!r}"
        print(f"no ModelPools in {where}")
        return 0
    print(format_pools(pools, args.all_namespaces))
    return 0
