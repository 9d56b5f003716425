"""The CLI refuses a bad static config before serving, naming the field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from modelfleet_dev.routerproc import free_port, policy


def _run(cfg: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modelfleet.cli", "router", "--host", "127.0.0.1",
         "--port", str(free_port()), "--config", str(cfg), "--client-auth", "off"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_invalid_config_exits_2_naming_the_field(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    routes = [{"name": "a", "pool": "ok"}, {"name": "b", "pool": "Bad_Pool"}]
    cfg.write_text(yaml.safe_dump({"policies": [policy(routes)], "endpoints": {}}))
    res = _run(cfg)
    assert res.returncode == 2
    assert "policies[0].spec.routes[1].pool" in res.stderr


def test_missing_file_exits_2(tmp_path: Path) -> None:
    res = _run(tmp_path / "missing.yaml")
    assert res.returncode == 2 and "cannot read" in res.stderr
