"""The chart's router.assets values, rendered by the real helm (no cluster) and read back
by the real router flag parser: what the chart writes is what the router accepts, the
password travels as a mounted file only, and the schema's refusals say why."""

from __future__ import annotations

import argparse
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import REPO
from modelfleet.router import cli as router_cli
from modelfleet.router.assets import (
    MemoryAssetStore,
    RedisAssetStore,
    asset_store_from_args,
)
from modelfleet_dev import binaries

CHART = REPO / "charts" / "modelfleet"


def helm(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBE")}
    env |= {
        "KUBECONFIG": str(tmp_path / "absent"),
        "HELM_CACHE_HOME": str(tmp_path / "cache"),
        "HELM_CONFIG_HOME": str(tmp_path / "config"),
    }
    return subprocess.run(
        [binaries.binary_path("helm"), "template", "mf", str(CHART), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def router_deployment(tmp_path: Path, *sets: str) -> dict[str, Any]:
    args = [a for s in sets for a in ("--set", s)]
    proc = helm(tmp_path, "--show-only", "templates/router.yaml", *args)
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    dep: dict[str, Any] = next(d for d in docs if d["kind"] == "Deployment")
    return dep


def parsed(container: dict[str, Any]) -> argparse.Namespace:
    """The container's args through the router's own argument parser."""
    parser = argparse.ArgumentParser()
    router_cli.register(parser.add_subparsers())
    assert container["command"] == ["modelfleet", "router"]
    return parser.parse_args(["router", *container["args"]])


def test_default_is_one_router_with_the_memory_store(tmp_path: Path) -> None:
    dep = router_deployment(tmp_path)
    assert dep["spec"]["replicas"] == 1
    c = dep["spec"]["template"]["spec"]["containers"][0]
    store = asset_store_from_args(parsed(c))
    assert isinstance(store, MemoryAssetStore) and store.ttl_s == 30 * 24 * 3600
    vols = {v["name"] for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert "asset-store" not in vols


def test_redis_with_a_secret_is_a_mounted_file(tmp_path: Path) -> None:
    dep = router_deployment(
        tmp_path,
        "router.replicas=3",
        "router.assets.store=redis",
        "router.assets.redis.url=redis://redis.cache.svc:6379/2",
        "router.assets.redis.existingSecret=redis-auth",
        "router.assets.redis.passwordKey=pw",
        "router.assets.ttlSeconds=86400",
    )
    assert dep["spec"]["replicas"] == 3
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    args = parsed(c)
    assert args.asset_store == "redis://redis.cache.svc:6379/2"
    assert args.asset_ttl == 86400
    mount = next(m for m in c["volumeMounts"] if m["name"] == "asset-store")
    assert Path(args.asset_store_password_file).parent == Path(mount["mountPath"])
    assert mount["readOnly"] is True
    vol = next(v for v in pod["volumes"] if v["name"] == "asset-store")
    assert vol["secret"] == {
        "secretName": "redis-auth",
        "items": [{"key": "pw", "path": Path(args.asset_store_password_file).name}],
    }
    # The password never appears in args or env: only the file's path does.
    assert "env" not in c or all("redis" not in str(e).lower() for e in c["env"])
    # Without a Secret: no AUTH, no volume, and the router builds its Redis store.
    dep = router_deployment(
        tmp_path, "router.assets.store=redis", "router.assets.redis.url=redis://r:6379/0"
    )
    c = dep["spec"]["template"]["spec"]["containers"][0]
    store = asset_store_from_args(parsed(c))
    assert isinstance(store, RedisAssetStore) and store.url == "redis://r:6379/0"
    assert all(m["name"] != "asset-store" for m in c["volumeMounts"])


def test_none_allows_several_replicas(tmp_path: Path) -> None:
    dep = router_deployment(tmp_path, "router.replicas=4", "router.assets.store=none")
    assert dep["spec"]["replicas"] == 4
    assert asset_store_from_args(parsed(dep["spec"]["template"]["spec"]["containers"][0])) is None


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["router.replicas=2"], "cannot keep sticky asset records in memory"),
        (["router.autoscaling.enabled=true"], "or autoscaling, cannot keep"),
        (["router.assets.store=redis"], "/router/assets/redis/url"),
        (["router.assets.store=redis", "router.assets.redis.url=http://x"], "does not match"),
        (["router.assets.redis.url=redis://:secret@h:1/0"], "/router/assets/redis/url"),
        (["router.assets.store=disk"], "/router/assets/store"),
        (["router.assets.ttlSeconds=0"], "/router/assets/ttlSeconds"),
    ],
)
def test_schema_refusals(tmp_path: Path, sets: list[str], message: str) -> None:
    proc = helm(tmp_path, *[a for s in sets for a in ("--set", s)])
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr
