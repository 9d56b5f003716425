"""Back opted-in pods on fake nodes with real local processes.

A pod annotated `modelfleet.io/local-run: "true"` gets its first container's
command and args run here with the pod's env (fieldRefs resolved, the pod IP
included) inside the pods' network namespace, where the runner adds the pod IP
that kwok assigned, so the process serves at the address EndpointSlices list. Readiness comes from the container's real readiness probe,
so EndpointSlices only list endpoints that answer. A deleted pod's process gets
SIGTERM, then SIGKILL after the pod's grace period.

A pool whose image is one of DEV_IMAGES runs that dev stand-in instead of the
worker (`modelfleet-worker serve` is replaced, the pool's args follow): how e2e
tests put the text-drawing backend behind a real ModelPool.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes import watch
from kubernetes.client.rest import ApiException

from modelfleet import LOCAL_RUN_ANNOTATION

log = logging.getLogger("modelfleet.podrunner")

_VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")

# Images only the local pod runner knows (no registry has them), and the dev
# module each runs in place of the worker: the real worker server with a stand-in model.
DEV_IMAGES: dict[str, tuple[str, ...]] = {
    "modelfleet.dev/textrender": (sys.executable, "-m", "modelfleet_dev.textrender"),
}
WORKER_SERVE = ["modelfleet-worker", "serve"]


def _repository(image: str) -> str:
    """The image name without its tag or digest."""
    name = image.split("@", 1)[0]
    head, _, last = name.rpartition("/")
    return f"{head}/{last.split(':', 1)[0]}" if head else last.split(":", 1)[0]


def local_command(container: dict[str, Any]) -> list[str]:
    """The argv (before $(VAR) expansion) the runner starts for a pod's container."""
    command = list(container.get("command") or [])
    dev = DEV_IMAGES.get(_repository(container.get("image") or ""))
    if dev is not None and command == WORKER_SERVE:
        command = list(dev)
    return command + list(container.get("args") or [])


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def field_value(pod: dict[str, Any], path: str) -> str:
    """Resolve a downward-API fieldPath the way the kubelet does."""
    meta = pod.get("metadata", {})
    m = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if m:
        return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
    simple = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": pod.get("spec", {}).get("nodeName"),
        "spec.serviceAccountName": pod.get("spec", {}).get("serviceAccountName"),
        "status.podIP": pod.get("status", {}).get("podIP"),
        "status.hostIP": pod.get("status", {}).get("hostIP"),
    }
    return str(simple.get(path) or "")


def container_env(
    pod: dict[str, Any], container: dict[str, Any], core: k8s.CoreV1Api | None
) -> dict[str, str]:
    namespace = pod["metadata"]["namespace"]
    env: dict[str, str] = {}
    for item in container.get("env") or []:
        name = item["name"]
        if "value" in item:
            env[name] = _VAR_REF.sub(lambda m: env.get(m.group(1), m.group(0)), item["value"] or "")
            continue
        source = item.get("valueFrom") or {}
        if "fieldRef" in source:
            env[name] = field_value(pod, source["fieldRef"]["fieldPath"])
        elif "configMapKeyRef" in source and core is not None:
            ref = source["configMapKeyRef"]
            cm = core.read_namespaced_config_map(ref["name"], namespace)
            env[name] = (cm.data or {}).get(ref["key"], "")
        elif "secretKeyRef" in source and core is not None:
            import base64

            ref = source["secretKeyRef"]
            secret = core.read_namespaced_secret(ref["name"], namespace)
            raw = (secret.data or {}).get(ref["key"], "")
            env[name] = base64.b64decode(raw).decode() if raw else ""
        else:
            env[name] = ""
    return env


def expand(args: list[str], env: dict[str, str]) -> list[str]:
    return [_VAR_REF.sub(lambda m: env.get(m.group(1), m.group(0)), a) for a in args]


@dataclass
class LocalProcess:
    uid: str
    namespace: str
    name: str
    pod_ip: str
    argv: list[str]
    env: dict[str, str]
    probe: dict[str, Any] | None
    grace_seconds: int
    log_path: Path
    container_name: str
    image: str
    netns: str | None = None
    netns_device: str = "mf-pods"
    proc: subprocess.Popen[bytes] | None = None
    ready: bool = False
    restarts: int = 0
    next_start: float = 0.0
    probe_failures: int = 0
    last_exit: int | None = None
    started_at: str = field(default_factory=_now)

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        out = self.log_path.open("ab")
        full_env = dict(os.environ)
        full_env.pop("KUBECONFIG", None)
        full_env.update(self.env)
        full_env["MODELFLEET_POD_IP"] = self.pod_ip
        # Console scripts of the environment the runner lives in (e.g. .venv/bin).
        full_env["PATH"] = f"{Path(sys.executable).parent}:{full_env.get('PATH', '')}"
        argv = list(self.argv)
        if self.netns:
            self._pod_address("replace", check=True)
            argv = ["ip", "netns", "exec", self.netns, *argv]
        self.proc = subprocess.Popen(
            argv,
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        out.close()
        self.started_at = _now()
        self.ready = False
        self.probe_failures = 0
        log.info("started %s/%s pid=%s: %s", self.namespace, self.name, self.proc.pid, self.argv)

    def stop(self, release: bool = True) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=self.grace_seconds)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.info("stopped %s/%s exit=%s", self.namespace, self.name, proc.returncode)
        if release:
            self.release_address()

    def release_address(self) -> None:
        if self.netns:
            self._pod_address("del", check=False)

    def _pod_address(self, action: str, check: bool) -> None:
        assert self.netns is not None
        cmd = [
            "ip",
            "-n",
            self.netns,
            "addr",
            action,
            f"{self.pod_ip}/32",
            "dev",
            self.netns_device,
        ]
        subprocess.run(cmd, check=check, capture_output=True)

    def probe_ok(self) -> bool:
        if self.probe is None or "httpGet" not in self.probe:
            return self.proc is not None and self.proc.poll() is None
        http = self.probe["httpGet"]
        port = http.get("port")
        if isinstance(port, str):
            port = (
                int(self.env.get("MODELFLEET_WORKER_PORT", "8080"))
                if not port.isdigit()
                else int(port)
            )
        url = f"http://{self.pod_ip}:{port}{http.get('path', '/')}"
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                return bool(200 <= resp.status < 400)
        except (urllib.error.URLError, OSError, ValueError):
            return False


class PodRunner:
    def __init__(
        self, api: k8s.ApiClient, log_dir: Path, netns: str | None, netns_device: str
    ) -> None:
        self.netns = netns
        self.netns_device = netns_device
        self.core = k8s.CoreV1Api(api)
        self.log_dir = log_dir
        self.processes: dict[str, LocalProcess] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()

    # ---- pod events --------------------------------------------------------
    def handle(self, event_type: str, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        uid = meta["uid"]
        if LOCAL_RUN_ANNOTATION not in (meta.get("annotations") or {}):
            return
        if event_type == "DELETED" or meta.get("deletionTimestamp"):
            with self.lock:
                lp = self.processes.pop(uid, None)
            if lp is not None:
                threading.Thread(target=self._stop, args=(lp,), daemon=True).start()
            return
        pod_ip = (pod.get("status") or {}).get("podIP")
        if not pod_ip or uid in self.processes:
            return
        containers = pod["spec"]["containers"]
        container = containers[0]
        command = local_command(container)
        if not container.get("command"):
            self._patch_status(
                pod,
                ready=False,
                reason="LocalRunNoCommand",
                message="local-run pods need an explicit container command",
            )
            return
        try:
            env = container_env(pod, container, self.core)
        except ApiException as exc:
            self._patch_status(
                pod, ready=False, reason="CreateContainerConfigError", message=str(exc.reason)
            )
            return
        lp = LocalProcess(
            uid=uid,
            namespace=meta["namespace"],
            name=meta["name"],
            pod_ip=pod_ip,
            argv=expand(command, env),
            env=env,
            probe=container.get("readinessProbe"),
            grace_seconds=int(pod["spec"].get("terminationGracePeriodSeconds") or 30),
            log_path=self.log_dir / f"{meta['namespace']}_{meta['name']}.log",
            container_name=container["name"],
            image=container.get("image", ""),
            netns=self.netns,
            netns_device=self.netns_device,
        )
        try:
            lp.start()
        except (OSError, subprocess.CalledProcessError) as exc:
            self._patch_status(pod, ready=False, reason="LocalRunStartError", message=str(exc))
            return
        with self.lock:
            self.processes[uid] = lp

    def _stop(self, lp: LocalProcess) -> None:
        lp.stop(release=False)
        # kwok hands a deleted pod's IP to the next pod at once: keep the
        # address while a newer process still serves on it.
        with self.lock:
            reused = any(p.pod_ip == lp.pod_ip for p in self.processes.values())
        if not reused:
            lp.release_address()

    # ---- supervision -------------------------------------------------------
    def supervise_once(self) -> None:
        with self.lock:
            items = list(self.processes.values())
        for lp in items:
            proc = lp.proc
            if proc is not None and proc.poll() is not None:
                lp.last_exit = proc.returncode
                lp.restarts += 1
                backoff = min(30.0, 2.0 ** min(lp.restarts, 5))
                lp.next_start = time.monotonic() + backoff
                lp.proc = None
                lp.ready = False
                self._patch_lp(
                    lp,
                    reason="CrashLoopBackOff",
                    message=f"process exited with code {lp.last_exit}; restarting in {backoff:.0f}s",
                )
                continue
            if lp.proc is None:
                if time.monotonic() >= lp.next_start:
                    lp.start()
                continue
            ok = lp.probe_ok()
            if ok and not lp.ready:
                lp.ready = True
                self._patch_lp(lp)
            elif not ok and lp.ready:
                lp.probe_failures += 1
                if lp.probe_failures >= 3:
                    lp.ready = False
                    self._patch_lp(
                        lp, reason="ReadinessProbeFailed", message="readiness probe failing"
                    )
            elif ok:
                lp.probe_failures = 0

    def _patch_lp(self, lp: LocalProcess, reason: str = "", message: str = "") -> None:
        state: dict[str, Any]
        if lp.ready:
            state = {"running": {"startedAt": lp.started_at}}
        elif lp.proc is None:
            state = {"waiting": {"reason": reason, "message": message}}
        else:
            state = {"running": {"startedAt": lp.started_at}}
        status = {
            "conditions": [
                {
                    "type": "Ready",
                    "status": str(lp.ready),
                    "reason": reason or None,
                    "message": message or None,
                    "lastTransitionTime": _now(),
                },
                {
                    "type": "ContainersReady",
                    "status": str(lp.ready),
                    "reason": reason or None,
                    "lastTransitionTime": _now(),
                },
            ],
            "containerStatuses": [
                {
                    "name": lp.container_name,
                    "image": lp.image,
                    "imageID": "",
                    "ready": lp.ready,
                    "started": lp.proc is not None,
                    "restartCount": lp.restarts,
                    "state": state,
                    **(
                        {"lastState": {"terminated": {"exitCode": lp.last_exit, "reason": "Error"}}}
                        if lp.last_exit is not None
                        else {}
                    ),
                }
            ],
        }
        try:
            self.core.patch_namespaced_pod_status(lp.name, lp.namespace, {"status": status})
        except ApiException as exc:
            if exc.status != 404:
                log.warning("status patch for %s/%s failed: %s", lp.namespace, lp.name, exc.reason)

    def _patch_status(self, pod: dict[str, Any], ready: bool, reason: str, message: str) -> None:
        meta = pod["metadata"]
        container = pod["spec"]["containers"][0]
        status = {
            "conditions": [
                {
                    "type": "Ready",
                    "status": str(ready),
                    "reason": reason,
                    "message": message,
                    "lastTransitionTime": _now(),
                }
            ],
            "containerStatuses": [
                {
                    "name": container["name"],
                    "image": container.get("image", ""),
                    "imageID": "",
                    "ready": False,
                    "restartCount": 0,
                    "state": {"waiting": {"reason": reason, "message": message}},
                }
            ],
        }
        with contextlib.suppress(ApiException):
            self.core.patch_namespaced_pod_status(
                meta["name"], meta["namespace"], {"status": status}
            )

    def supervise_forever(self) -> None:
        while not self.stopping.is_set():
            try:
                self.supervise_once()
            except Exception:  # keep supervising whatever one pod does
                log.exception("supervision pass failed")
            self.stopping.wait(0.25)

    def watch_forever(self) -> None:
        resource_version = ""
        while not self.stopping.is_set():
            try:
                if not resource_version:
                    listing = self.core.api_client.sanitize_for_serialization(
                        self.core.list_pod_for_all_namespaces()
                    )
                    seen = set()
                    for pod in listing.get("items", []):
                        seen.add(pod["metadata"]["uid"])
                        self.handle("ADDED", pod)
                    with self.lock:
                        gone = [uid for uid in self.processes if uid not in seen]
                    for uid in gone:
                        self._stop(self.processes.pop(uid))
                    resource_version = listing["metadata"]["resourceVersion"]
                stream = watch.Watch().stream(
                    self.core.list_pod_for_all_namespaces,
                    resource_version=resource_version,
                    timeout_seconds=300,
                    allow_watch_bookmarks=True,
                )
                for event in stream:
                    obj = event["raw_object"]
                    resource_version = obj.get("metadata", {}).get(
                        "resourceVersion", resource_version
                    )
                    if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                        self.handle(event["type"], obj)
                    elif event["type"] == "ERROR":
                        resource_version = ""
                        break
            except ApiException as exc:
                if exc.status == 410:
                    resource_version = ""
                else:
                    log.warning("watch failed: %s; retrying", exc.reason)
                    self.stopping.wait(1)
            except Exception as exc:  # connection drops while the API server restarts
                log.warning("watch error: %s; retrying", exc)
                self.stopping.wait(1)

    def shutdown(self) -> None:
        self.stopping.set()
        with self.lock:
            items = list(self.processes.values())
            self.processes.clear()
        threads = [threading.Thread(target=lp.stop) for lp in items]
        for t in threads:
            t.start()
        for t in threads:
            t.join()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="modelfleet-podrunner", description=__doc__)
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--log-dir", required=True)
    parser.add_argument("--netns", default=None, help="network namespace the pods live in")
    parser.add_argument(
        "--netns-device", default="mf-pods", help="interface in it that gets pod IPs"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    api = k8s_config.new_client_from_config(config_file=args.kubeconfig)
    runner = PodRunner(api, Path(args.log_dir), args.netns, args.netns_device)

    def _term(signum: int, frame: Any) -> None:
        runner.stopping.set()

    signal.signal(signal.SIGTERM, _term)
    signal.signal(signal.SIGINT, _term)
    threading.Thread(target=runner.watch_forever, daemon=True).start()
    threading.Thread(target=runner.supervise_forever, daemon=True).start()
    runner.stopping.wait()
    runner.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
