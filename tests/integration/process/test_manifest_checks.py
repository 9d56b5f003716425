"""Checks a platform team runs before anything reaches a cluster, with the real tools
(built from their Go modules and cached, like the cluster binaries): `helm template`
as GitOps users run it (no cluster, no --kube-version), kube-score on the rendered
chart and on the operator's generated worker manifests, actionlint on the workflows."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from api_cases import example_docs, example_files
from conftest import REPO
from modelfleet.api.modelpool import ModelPool
from modelfleet.builders import modelpool as build
from modelfleet_dev import binaries

CHART = REPO / "charts" / "modelfleet"
IGNORES = REPO / "charts" / "kube-score-ignore.yaml"
CHART_VALUE_SETS = {
    "defaults": [],
    "namespaced+hpa+dashboard": [
        "--set",
        "namespaced=true",
        "--set",
        "router.autoscaling.enabled=true",
        "--set",
        "grafana.dashboard.enabled=true",
        # Several router replicas share sticky asset records through Redis.
        "--set",
        "router.assets.store=redis",
        "--set",
        "router.assets.redis.url=redis://redis:6379/0",
        "--set",
        "router.assets.redis.existingSecret=redis-auth",
    ],
}
GRADES = {1: "CRITICAL", 5: "WARNING"}
# kube-score judges PDB and anti-affinity only for more than one replica (the default is one).
TWO_ROUTERS = (
    *("--set", "router.replicas=2", "--set", "router.assets.store=redis"),
    *("--set", "router.assets.redis.url=redis://redis:6379/0"),
)


def tool(name: str) -> str:
    path = binaries.binary_path(name)
    if not path.is_file():
        pytest.fail(f"{name} is not built: run `make binaries`")
    return str(path)


def no_cluster_env(tmp_path: Path) -> dict[str, str]:
    """No kubeconfig and no cluster to ask: what a GitOps controller's helm sees."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBE")}
    env["KUBECONFIG"] = str(tmp_path / "absent-kubeconfig")
    env["HELM_CACHE_HOME"] = str(tmp_path / "helm-cache")
    env["HELM_CONFIG_HOME"] = str(tmp_path / "helm-config")
    return env


def helm_template(tmp_path: Path, *args: str) -> str:
    proc = subprocess.run(
        [tool("helm"), "template", "mf", str(CHART), *args],
        env=no_cluster_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_helm_template_needs_no_cluster_and_no_kube_version(tmp_path: Path) -> None:
    rendered = helm_template(tmp_path, "-n", "modelfleet-system")
    kinds = {d["kind"] for d in yaml.safe_load_all(rendered) if d}
    assert {"Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy"} <= kinds
    # The default Kubernetes version comes from Helm's client-go, as in Helm's release
    # builds, not from its source default of v1.20.
    probe = tmp_path / "probe"
    (probe / "templates").mkdir(parents=True)
    (probe / "Chart.yaml").write_text("apiVersion: v2\nname: probe\nversion: 0.0.1\n")
    (probe / "templates" / "v.yaml").write_text("# {{ .Capabilities.KubeVersion.Version }}\n")
    out = subprocess.run(
        [tool("helm"), "template", "p", str(probe)],
        env=no_cluster_env(tmp_path),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found = re.search(r"# v1\.(\d+)\.", out)
    assert found, out
    local_minor = int(binaries.KUBERNETES_VERSION.split(".")[1])
    assert int(found.group(1)) >= local_minor, out


def test_helm_kube_version_ldflags_follow_client_go() -> None:
    go_mod = (
        "module helm.sh/helm/v3\n\nrequire (\n\tk8s.io/api v0.37.0\n\tk8s.io/client-go v0.37.2\n)\n"
    )
    flags = binaries.helm_kube_version_ldflags(go_mod)
    assert "-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1" in flags
    assert "-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=37" in flags
    assert "-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=37" in flags
    with pytest.raises(binaries.BuildError, match="client-go"):
        binaries.helm_kube_version_ldflags("module x\n")


@dataclass(frozen=True)
class Finding:
    obj: str  # Kind/name
    component: str
    check: str
    grade: str
    path: str
    summary: str

    def __str__(self) -> str:
        where = f" ({self.path})" if self.path else ""
        return f"[{self.grade}] {self.obj}{where} {self.check}: {self.summary}"


def kube_score(manifests: str, tmp_path: Path, label: str) -> list[Finding]:
    path = tmp_path / f"{label}.yaml"
    path.write_text(manifests)
    proc = subprocess.run(
        [tool("kube-score"), "score", "--kubernetes-version", "v1.35", "-o", "json", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    # Exit 1 only means "findings"; anything else (or no JSON) is a failure to score.
    assert proc.returncode in (0, 1), proc.stderr
    findings = []
    for obj in json.loads(proc.stdout):
        meta = obj["object_meta"]
        kind = obj["type_meta"]["kind"]
        component = (meta.get("labels") or {}).get("app.kubernetes.io/component", "")
        for check in obj["checks"]:
            if check["skipped"] or check["grade"] not in GRADES:
                continue
            for comment in check["comments"] or []:
                findings.append(
                    Finding(
                        f"{kind}/{meta['name']}",
                        component,
                        check["check"]["id"],
                        GRADES[check["grade"]],
                        comment["path"],
                        comment["summary"],
                    )
                )
    return findings


def ignore_entries() -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = yaml.safe_load(IGNORES.read_text())
    for e in entries:
        assert set(e) <= {"check", "summary", "objects", "component", "why"}, e
        assert len(str(e.get("why", "")).split()) >= 8, f"say why: {e}"
    return entries


def matches(entry: dict[str, Any], f: Finding) -> bool:
    return (
        entry["check"] == f.check
        and entry["summary"] in f.summary
        and any(fnmatch.fnmatchcase(f.obj, glob) for glob in entry["objects"])
        and entry.get("component", f.component) == f.component
    )


def worker_manifests() -> str:
    """What the operator applies for every example pool, as the chart configures it."""
    settings = build.BuildSettings(worker_network_policy=True, router_namespace="modelfleet")
    docs: list[dict[str, Any]] = []
    for doc in (d for path in example_files() for d in example_docs(path)):
        if doc["kind"] != "ModelPool":
            continue
        doc["metadata"].update({"namespace": "team-a", "uid": "uid"})
        docs += build.children(ModelPool.model_validate(doc), settings)
    assert len(docs) >= 8
    return yaml.safe_dump_all(docs, explicit_start=True)


def test_kube_score_chart_and_worker_manifests(tmp_path: Path) -> None:
    findings: list[Finding] = []
    for label, values in CHART_VALUE_SETS.items():
        rendered = helm_template(tmp_path, "-n", "modelfleet", *values)
        findings += kube_score(rendered, tmp_path, f"chart-{label}")
    findings += kube_score(worker_manifests(), tmp_path, "workers")
    entries = ignore_entries()
    unexplained = [f for f in findings if not any(matches(e, f) for e in entries)]
    assert not unexplained, "kube-score findings (fix them, or add to the ignore list why):\n" + (
        "\n".join(map(str, unexplained))
    )
    stale = [e for e in entries if not any(matches(e, f) for f in findings)]
    assert not stale, f"ignore entries that match nothing any more: {stale}"


def test_kube_score_flags_what_the_chart_fixed(tmp_path: Path) -> None:
    """Control: the router without its PDB and anti-affinity is flagged, so a clean
    result above means the fixes are there, not that nothing was scored."""
    docs = [
        d
        for d in yaml.safe_load_all(helm_template(tmp_path, "-n", "modelfleet", *TWO_ROUTERS))
        if d and d["kind"] != "PodDisruptionBudget"
    ]
    for d in docs:
        if d["kind"] == "Deployment":
            d["spec"]["template"]["spec"].pop("affinity", None)
    found = kube_score(yaml.safe_dump_all(docs), tmp_path, "control")
    router = {f.check for f in found if f.obj == "Deployment/mf-modelfleet-router"}
    assert {"deployment-has-poddisruptionbudget", "deployment-has-host-podantiaffinity"} <= router


def test_actionlint_release_workflow(tmp_path: Path) -> None:
    workflows = sorted((REPO / ".github" / "workflows").glob("*.yml"))
    assert any(w.name == "release.yml" for w in workflows)
    proc = subprocess.run(
        [tool("actionlint"), "-no-color", *map(str, workflows)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # Control: a workflow with an undefined job dependency is rejected.
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "on: push\njobs:\n  a:\n    needs: [missing]\n    runs-on: ubuntu-24.04\n"
        "    steps:\n      - run: echo ${{ needs.missing.outputs.x }}\n"
    )
    proc = subprocess.run(
        [tool("actionlint"), "-no-color", str(bad)], capture_output=True, text=True
    )
    assert proc.returncode == 1 and "missing" in proc.stdout, proc.stdout
