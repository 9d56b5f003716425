"""The chart's router flags for client keys' spend, rendered by the real helm and read
back by the router's own parser: memory by default, the assets' Redis (and its password
file) when router.assets.store is redis."""

from __future__ import annotations

import argparse
import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

from conftest import REPO
from modelfleet.router import cli as router_cli
from modelfleet.router.spendstore import MemorySpendStore, RedisSpendStore, spend_store_from_args
from modelfleet_dev import binaries

CHART = REPO / "charts" / "modelfleet"


def router_args(tmp_path: Path, *sets: str) -> argparse.Namespace:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBE")}
    env |= {
        "KUBECONFIG": str(tmp_path / "absent"),
        "HELM_CACHE_HOME": str(tmp_path / "cache"),
        "HELM_CONFIG_HOME": str(tmp_path / "config"),
    }
    cmd: list[str] = [str(binaries.binary_path("helm")), "template", "mf", str(CHART)]
    cmd += ["--show-only", "templates/router.yaml", *(a for s in sets for a in ("--set", s))]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    dep: dict[str, Any] = next(
        d for d in yaml.safe_load_all(proc.stdout) if d and d["kind"] == "Deployment"
    )
    container = dep["spec"]["template"]["spec"]["containers"][0]
    parser = argparse.ArgumentParser()
    router_cli.register(parser.add_subparsers())
    return parser.parse_args(["router", *container["args"]])


async def test_spend_store_follows_the_asset_store(tmp_path: Path) -> None:
    args = router_args(tmp_path)
    store = spend_store_from_args(args, args.request_timeout_s)
    assert isinstance(store, MemorySpendStore)
    args = router_args(
        tmp_path,
        "router.replicas=3",
        "router.assets.store=redis",
        "router.assets.redis.url=redis://redis.cache.svc:6379/2",
    )
    assert args.spend_store == "asset-store"
    store = spend_store_from_args(args, args.request_timeout_s)
    assert isinstance(store, RedisSpendStore) and store.url == "redis://redis.cache.svc:6379/2"
    assert store.hold_s == args.request_timeout_s + 60
    await store.close()
