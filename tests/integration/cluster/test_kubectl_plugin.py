"""`kubectl modelfleet` against the real local API server: Canary status is written with
the status subresource to simulate the operator, the plugin runs as a subprocess."""

from __future__ import annotations

import base64
import http.server
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from api_cases import example
from conftest import LocalCluster, wait_for
from modelfleet import GROUP, VERSION

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module", autouse=True)
def no_operator(operator: Any) -> Iterator[None]:
    """These tests write Canary status by hand, as an operator would: the session's
    real operator must not drive the same canaries meanwhile."""
    import signal

    operator.ensure_running().kill(signal.SIGTERM)
    yield
    operator.ensure_running()


BIN = Path(sys.executable).parent
PLUGIN = BIN / "kubectl-modelfleet"
# A 1x1 PNG: what the fake worker returns.
PNG_B64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="

STATUS: dict[str, Any] = {
    "phase": "Progressing",
    "currentStep": 1,
    "canaryWeight": 30,
    "startedAt": "2026-01-01T00:00:00Z",
    "stepStartedAt": "2026-01-01T00:05:00Z",
    "message": "step 2/4 (30%): analysing",
    "metrics": [
        {
            "name": "errors",
            "result": "pass",
            "value": 0.0125,
            "threshold": 0.02,
            "samples": 400,
            "message": "0.0125 <= max 0.02",
        },
        {
            "name": "p95",
            "result": "fail",
            "value": 2.5,
            "stableValue": 1.5,
            "threshold": 1.8,
            "samples": 400,
            "message": "2.5 > 1.2x stable 1.5",
        },
    ],
    "history": [
        {
            "step": 0,
            "weight": 10,
            "result": "pass",
            "time": "2026-01-01T00:05:00Z",
            "metrics": [
                {"name": "errors", "result": "pass", "value": 0.01, "threshold": 0.02},
                {"name": "p95", "result": "pass", "value": 1.6, "threshold": 1.8},
            ],
        },
        {
            "step": 1,
            "weight": 30,
            "result": "fail",
            "time": "2026-01-01T00:10:00Z",
            "metrics": [
                {"name": "errors", "result": "pass", "value": 0.0125, "threshold": 0.02},
                {"name": "p95", "result": "fail", "value": 2.5, "threshold": 1.8},
            ],
        },
    ],
    "conditions": [
        {
            "type": "Progressing",
            "status": "True",
            "reason": "StepProgressing",
            "message": "step 2/4",
            "lastTransitionTime": "2026-01-01T00:00:00Z",
        }
    ],
}


def run(
    cluster: LocalCluster, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = env or {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
    return subprocess.run(
        [str(PLUGIN), *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def custom(cluster: LocalCluster) -> Any:
    return k8s.CustomObjectsApi(cluster.api)


def create_canary(
    cluster: LocalCluster, namespace: str, name: str, status: dict[str, Any] | None = None
) -> None:
    doc = example("canary.yaml")
    doc["metadata"]["name"] = name
    custom(cluster).create_namespaced_custom_object(GROUP, VERSION, namespace, "canaries", doc)
    if status is not None:
        set_status(cluster, namespace, name, status)


def set_status(cluster: LocalCluster, namespace: str, name: str, status: dict[str, Any]) -> None:
    custom(cluster).patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, "canaries", name, {"status": status}
    )


def get_canary(cluster: LocalCluster, namespace: str, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = custom(cluster).get_namespaced_custom_object(
        GROUP, VERSION, namespace, "canaries", name
    )
    return obj


def test_status_shows_metrics_history_conditions(cluster: LocalCluster, namespace: str) -> None:
    create_canary(cluster, namespace, "c1", STATUS)
    res = run(cluster, "status", "c1", "-n", namespace)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "Phase:      Progressing" in out
    assert "Step:       2/4" in out
    assert "Weight:     30% to candidate" in out
    assert "Stable:     production" in out
    assert "Candidate:  production-v2" in out
    assert "step 2/4 (30%): analysing" in out
    # value checks: no method, p or effect of a test (those are rank/proportion columns)
    assert re.search(r"errors\s+pass\s+0\.0125 <= 0\.02\s+-\s+-\s+400\s+-\s+-", out), out
    assert re.search(r"p95\s+fail\s+2\.5 > 1\.8\s+1\.5\s+-\s+400\s+-\s+-", out), out
    assert re.search(r"1/4\s+10%\s+pass\s+2026-01-01T00:05:00Z", out), out
    assert re.search(r"2/4\s+30%\s+fail\s+2026-01-01T00:10:00Z\s+errors=pass p95=fail", out)
    assert re.search(r"Progressing\s+True\s+StepProgressing", out), out


def test_status_json(cluster: LocalCluster, namespace: str) -> None:
    create_canary(cluster, namespace, "c1", STATUS)
    res = run(cluster, "status", "c1", "-n", namespace, "-o", "json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["status"]["canaryWeight"] == 30
    assert doc["spec"]["candidatePool"] == "production-v2"
    assert "managedFields" not in doc["metadata"]


def test_status_before_operator_and_default_namespace_from_context(
    cluster: LocalCluster, namespace: str, tmp_path: Path
) -> None:
    create_canary(cluster, namespace, "fresh")
    # A kubeconfig whose context names the namespace: no -n needed.
    kubeconfig = tmp_path / "kubeconfig"
    cfg = json.loads(
        subprocess.run(
            ["kubectl", "config", "view", "--raw", "--flatten", "-o", "json"],
            env=cluster.env(),
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    for ctx in cfg["contexts"]:
        ctx["context"]["namespace"] = namespace
    kubeconfig.write_text(json.dumps(cfg))
    res = run(cluster, "--kubeconfig", str(kubeconfig), "status", "fresh")
    assert res.returncode == 0, res.stderr
    assert "Phase:      Unknown" in res.stdout
    assert "(no analyses yet)" in res.stdout


def test_status_watch_exits_on_terminal_phase(cluster: LocalCluster, namespace: str) -> None:
    create_canary(cluster, namespace, "w", STATUS)
    proc = subprocess.Popen(
        [str(PLUGIN), "status", "w", "-n", namespace, "--watch"],
        env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    assert proc.stdout is not None
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or ()), daemon=True)
    reader.start()
    try:
        # The first block (the canary as it is now) must be on screen before it finishes.
        wait_for(
            lambda: any(line.startswith("Phase:") for line in list(lines)),
            timeout=30,
            what="first status block printed",
        )
        assert proc.poll() is None, "watch exited before the canary finished"
        set_status(
            cluster,
            namespace,
            "w",
            {"phase": "Succeeded", "canaryWeight": 100, "currentStep": 3, "message": "all done"},
        )
        proc.wait(timeout=20)
        reader.join(timeout=10)
        err = proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
    out = "".join(lines)
    assert proc.returncode == 0, err
    assert "Phase:      Progressing" in out
    assert "Phase:      Succeeded" in out
    assert out.index("Progressing") < out.index("Succeeded")
    assert "all done" in out


@pytest.mark.parametrize("verb", ["promote", "abort", "retry"])
def test_action_sets_annotation(cluster: LocalCluster, namespace: str, verb: str) -> None:
    create_canary(cluster, namespace, "act", STATUS)
    before_ms = int(time.time() * 1000)
    res = run(cluster, verb, "act", "-n", namespace)
    assert res.returncode == 0, res.stderr
    value = get_canary(cluster, namespace, "act")["metadata"]["annotations"]["modelfleet.io/action"]
    m = re.fullmatch(rf"{verb}:(\d+)", value)
    assert m, value
    assert int(m.group(1)) >= before_ms
    assert f"requested {verb} (modelfleet.io/action={value})" in res.stdout
    # A second request gets a fresh id, so the operator sees a new action.
    time.sleep(0.01)
    assert run(cluster, verb, "act", "-n", namespace).returncode == 0
    again = get_canary(cluster, namespace, "act")["metadata"]["annotations"]
    assert again["modelfleet.io/action"] != value


def test_retry_on_progressing_warns(cluster: LocalCluster, namespace: str) -> None:
    create_canary(cluster, namespace, "act", STATUS)
    res = run(cluster, "retry", "act", "-n", namespace)
    assert res.returncode == 0
    assert "note: the canary is Progressing; retry only acts on" in res.stdout


def test_resume_when_paused_for_lack_of_data(cluster: LocalCluster, namespace: str) -> None:
    create_canary(
        cluster, namespace, "nodata", {**STATUS, "phase": "Paused", "inconclusiveChecks": 5}
    )
    res = run(cluster, "resume", "nodata", "-n", namespace)
    assert res.returncode == 0, res.stderr
    obj = get_canary(cluster, namespace, "nodata")
    assert obj["spec"]["paused"] is False
    assert re.fullmatch(r"resume:\d+", obj["metadata"]["annotations"]["modelfleet.io/action"])
    assert "requested resume" in res.stdout


def test_pause_then_resume(cluster: LocalCluster, namespace: str) -> None:
    create_canary(cluster, namespace, "p", STATUS)
    res = run(cluster, "pause", "p", "-n", namespace)
    assert res.returncode == 0, res.stderr
    assert "spec.paused=true" in res.stdout
    assert get_canary(cluster, namespace, "p")["spec"]["paused"] is True
    # The operator would now report Paused (by the user): resume is spec.paused=false only.
    set_status(cluster, namespace, "p", {"phase": "Paused"})
    res = run(cluster, "resume", "p", "-n", namespace)
    assert res.returncode == 0, res.stderr
    obj = get_canary(cluster, namespace, "p")
    assert obj["spec"]["paused"] is False
    assert "modelfleet.io/action" not in (obj["metadata"].get("annotations") or {})


def test_pools(cluster: LocalCluster, namespace: str) -> None:
    api = custom(cluster)
    docs = [example("modelpool-production.yaml"), example("modelpool-preview.yaml")]
    expected_gpus = 0
    for doc in docs:
        api.create_namespaced_custom_object(GROUP, VERSION, namespace, "modelpools", doc)
        spec = doc["spec"]
        expected_gpus += spec.get("replicas", 1) * spec.get("gpu", {}).get("count", 1)
    api.patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        namespace,
        "modelpools",
        "production",
        {"status": {"phase": "Ready", "readyReplicas": 2, "replicas": 3}},
    )
    res = run(cluster, "pools", "-n", namespace)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert re.match(r"NAME\s+READY/REPLICAS\s+PHASE\s+GPU\s+MODEL", lines[0])
    assert re.search(
        r"^production\s+2/3\s+Ready\s+1 x any\s+s3://models/sdxl-base-1.0@2024-06-01",
        res.stdout,
        re.M,
    )
    assert any(line.startswith(docs[1]["metadata"]["name"]) for line in lines)
    assert f"Total GPUs requested: {expected_gpus} (2 pools)" in res.stdout

    res = run(cluster, "pools", "-A")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("NAMESPACE")
    assert re.search(rf"^{namespace}\s+production\s+2/3", res.stdout, re.M)


class _FakeWorker(http.server.BaseHTTPRequestHandler):
    requests: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append({"path": self.path, **body})
        data = json.dumps({"data": [{"b64_json": PNG_B64, "seed": body.get("seed")}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def fake_worker() -> Iterator[str]:
    _FakeWorker.requests = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeWorker)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_report_html(cluster: LocalCluster, namespace: str, tmp_path: Path) -> None:
    status = {**STATUS, "phase": "RolledBack", "canaryWeight": 0, "message": "rolled back: p95"}
    create_canary(cluster, namespace, "rep", status)
    out = tmp_path / "report.html"
    res = run(cluster, "report", "rep", "-n", namespace, "--out", str(out))
    assert res.returncode == 0, res.stderr
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert "<svg" in page
    assert "RolledBack" in page
    assert "rolled back: p95" in page
    assert "<img" not in page
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")


def test_report_with_images(
    cluster: LocalCluster, namespace: str, tmp_path: Path, fake_worker: str
) -> None:
    create_canary(cluster, namespace, "rep", STATUS)
    out = tmp_path / "report.html"
    res = run(
        cluster,
        *("report", "rep", "-n", namespace, "--out", str(out)),
        *("--stable-url", fake_worker, "--candidate-url", fake_worker + "/"),
    )
    assert res.returncode == 0, res.stderr
    page = out.read_text()
    assert page.count(f"data:image/png;base64,{PNG_B64}") == 8
    reqs = _FakeWorker.requests
    assert len(reqs) == 8
    assert {r["path"] for r in reqs} == {"/v1/images/generations"}
    assert {(r["size"], r["steps"]) for r in reqs} == {("64x64", 2)}
    assert sorted(r["seed"] for r in reqs) == [1, 1, 2, 2, 3, 3, 4, 4]
    assert base64.b64decode(PNG_B64)[:4] == b"\x89PNG"


def test_report_needs_both_urls(cluster: LocalCluster, namespace: str, tmp_path: Path) -> None:
    create_canary(cluster, namespace, "rep", STATUS)
    out = tmp_path / "r.html"
    res = run(cluster, "report", "rep", "-n", namespace, "--out", str(out), "--stable-url", "x")
    assert res.returncode == 1
    assert "--stable-url and --candidate-url go together" in res.stderr
    assert not out.exists()


def test_missing_canary(cluster: LocalCluster, namespace: str) -> None:
    res = run(cluster, "status", "nope", "-n", namespace)
    assert res.returncode == 1
    assert res.stderr == f"error: canary 'nope' not found in namespace '{namespace}'\n"
    assert res.stdout == ""


def test_canary_in_another_namespace(cluster: LocalCluster, namespace: str) -> None:
    name = f"elsewhere-{namespace[-6:]}"
    create_canary(cluster, namespace, name, STATUS)
    for verb in ("status", "promote", "pause"):
        res = run(cluster, verb, name, "-n", "default")
        assert res.returncode == 1, res.stdout
        assert f"canary '{name}' not found in namespace 'default'" in res.stderr
        assert f"found in namespace(s): {namespace}" in res.stderr
        assert "Traceback" not in res.stderr
    assert "annotations" not in get_canary(cluster, namespace, name)["metadata"]


def _fake_kubeconfig(tmp_path: Path, server: str) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": server}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    return path


class _NoCrds(http.server.BaseHTTPRequestHandler):
    """An API server without the ModelFleet group: every path is 404 page not found."""

    def do_GET(self) -> None:
        data = b"404 page not found\n"
        self.send_response(404)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


def test_crd_not_installed(tmp_path: Path) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NoCrds)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        kubeconfig = _fake_kubeconfig(tmp_path, f"http://127.0.0.1:{server.server_address[1]}")
        env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
        for args in (("status", "c"), ("pools",)):
            res = subprocess.run(
                [str(PLUGIN), *args], env=env, capture_output=True, text=True, timeout=60
            )
            assert res.returncode == 1
            assert "CRD is not installed" in res.stderr, res.stderr
            assert "Traceback" not in res.stderr
    finally:
        server.shutdown()
        server.server_close()


def test_api_unreachable(tmp_path: Path) -> None:
    kubeconfig = _fake_kubeconfig(tmp_path, "http://127.0.0.1:9")
    res = subprocess.run(
        [str(PLUGIN), "--kubeconfig", str(kubeconfig), "status", "c"],
        env={k: v for k, v in os.environ.items() if k != "KUBECONFIG"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 1
    assert res.stderr.startswith(
        "error: cannot reach the Kubernetes API server at http://127.0.0.1:9"
    )
    assert "Traceback" not in res.stderr


def test_kubectl_finds_the_plugin(cluster: LocalCluster, namespace: str) -> None:
    create_canary(cluster, namespace, "via-kubectl", STATUS)
    env = cluster.env()
    env["PATH"] = f"{BIN}:{env['PATH']}"
    listed = subprocess.run(
        ["kubectl", "plugin", "list"], env=env, capture_output=True, text=True, timeout=60
    )
    assert str(PLUGIN) in listed.stdout
    res = subprocess.run(
        ["kubectl", "modelfleet", "status", "via-kubectl", "-n", namespace],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    assert "Phase:      Progressing" in res.stdout
