"""`kubectl modelfleet report --from-pools` on the local cluster: the real plugin finds a
ready worker of each ModelPool in its EndpointSlices and writes the stable's and the
candidate's renders of the same prompt and seed, each with what its OCR read."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from conftest import LocalCluster, wait_for
from modelfleet import GROUP, VERSION
from modelfleet_dev import story, typography
from worker_fixtures import tiny_model_dir

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]

PLUGIN = Path(sys.executable).parent / "kubectl-modelfleet"
SIGN = "HAPPY MARKET"


def _ready(cluster: LocalCluster, namespace: str, names: list[str]) -> bool:
    pools = k8s.CustomObjectsApi(cluster.api).list_namespaced_custom_object(
        GROUP, VERSION, namespace, "modelpools"
    )["items"]
    phases = {p["metadata"]["name"]: (p.get("status") or {}).get("phase") for p in pools}
    return all(phases.get(n) == "Ready" for n in names)


def test_report_from_pools_shows_both_renders_and_reads(
    cluster: LocalCluster, namespace: str, operator: Any, tmp_path: Path
) -> None:
    model = str(tiny_model_dir())
    names = [typography.STABLE, typography.CANDIDATE]
    for name in names:
        doc = typography.pool_manifest(name, model)
        # Every candidate render mangled: the test knows which reads differ.
        if name == typography.CANDIDATE:
            doc["spec"]["worker"]["env"] = [
                e if e["name"] != "MODELFLEET_TEXTRENDER_CORRUPTION_RATE" else {**e, "value": "1"}
                for e in doc["spec"]["worker"]["env"]
            ]
        story.create_or_update(cluster.api, namespace, "modelpools", doc)
    # Paused: the canary only names the pools; the report needs no analysis.
    canary = story.canary_manifest("typo", "typo", names[0], names[1], "10s", [50, 100])
    canary["spec"]["paused"] = True
    story.create_or_update(cluster.api, namespace, "canaries", canary)
    wait_for(lambda: _ready(cluster, namespace, names), timeout=180, what="text pools Ready")

    out = tmp_path / "typo.html"
    argv = [str(PLUGIN), "-n", namespace, "report", "typo", "--html", str(out)]
    argv += ["--from-pools", "--size", "384x128", "--seed", "3"]
    argv += ["--prompt", f'a banner "{SIGN}"', "--prompt", "a lighthouse"]
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
    res = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "warning" not in res.stderr, res.stderr

    page = out.read_text()
    assert page.count('src="data:image/png;base64,') == 4  # two prompts x two pools
    assert f'read: <q class="read">{SIGN}</q>' in page
    reads = re.findall(r'read: <q class="read">([^<]*)</q>', page)
    assert len(reads) == 2 and reads[0] == SIGN and reads[1] != SIGN
    assert "passed: yes" in page and "passed: no" in page
    assert "not verified" in page  # the lighthouse has no expected text
    lines = res.stdout.splitlines()
    assert lines[0].startswith(f"wrote {out} (canary {namespace}/typo")
    assert f"stable read '{SIGN}' word accuracy 1 passed" in lines[1]
    assert "candidate read" in lines[1] and "failed" in lines[1]
