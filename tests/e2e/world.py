"""The world an e2e scenario runs in: one namespace with its pools Ready, the real
operator, and a real router (`--kube`) in front of them; plus the instruments the
scenarios use on it (requests and probes through the router, a real Prometheus,
the clock that times the router's switch to new weights)."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s
from kubernetes.client.rest import ApiException
from prometheus_client.parser import text_string_to_metric_families

from conftest import LocalCluster
from modelfleet_dev import bootstrap
from modelfleet_dev.routerproc import RouterProcess, free_port
from modelfleet_dev.story import create_or_update
from polling import wait_for

G, V = "modelfleet.io", "v1alpha1"
PLURALS = {"ModelPool": "modelpools", "RoutingPolicy": "routingpolicies", "Canary": "canaries"}
# A request the router forwards but a worker refuses at validation (the e2e pools allow
# at most 8 steps): answered in milliseconds with X-ModelFleet-Pool, no image rendered.
PROBE_BODY = b'{"prompt": "probe", "size": "64x64", "steps": 9}'
IMAGE_BODY = b'{"prompt": "a lighthouse", "size": "64x64", "steps": 2}'


@dataclass(frozen=True)
class Answer:
    """One request through the router, as a client sees it."""

    status: int
    pool: str
    fallback: str
    route: str


@dataclass
class Fleet:
    cluster: LocalCluster
    namespace: str
    router: RouterProcess
    operator: Any  # operator_fixture.OperatorManager
    # The credential file both the operator and the router were given
    # (--operator-token-file): the operator's pool pins, for canary replays.
    operator_token_file: Path | None = None

    @property
    def custom(self) -> k8s.CustomObjectsApi:
        return k8s.CustomObjectsApi(self.cluster.api)

    @property
    def core(self) -> k8s.CoreV1Api:
        return k8s.CoreV1Api(self.cluster.api)

    def get(self, plural: str, name: str) -> dict[str, Any]:
        obj: dict[str, Any] = self.custom.get_namespaced_custom_object(
            G, V, self.namespace, plural, name
        )
        return obj

    def status(self, canary: str) -> dict[str, Any]:
        return self.get("canaries", canary).get("status") or {}

    def policy(self, name: str) -> dict[str, Any]:
        return self.get("routingpolicies", name)

    def pool(self, name: str) -> dict[str, Any]:
        return self.get("modelpools", name)

    def events(self, kind: str, name: str) -> list[Any]:
        sel = f"involvedObject.kind={kind},involvedObject.name={name}"
        return list(self.core.list_namespaced_event(self.namespace, field_selector=sel).items)

    def apply(self, doc: dict[str, Any]) -> None:
        """Create, or make the spec (and metadata annotations) what `doc` says."""
        plural = PLURALS[doc["kind"]]
        create_or_update(self.cluster.api, self.namespace, plural, doc)
        if doc.get("metadata", {}).get("annotations"):
            self.custom.patch_namespaced_custom_object(
                G, V, self.namespace, plural, doc["metadata"]["name"],
                {"metadata": {"annotations": doc["metadata"]["annotations"]}},
            )  # fmt: skip

    def delete(self, plural: str, name: str) -> None:
        try:
            self.custom.delete_namespaced_custom_object(G, V, self.namespace, plural, name)
        except ApiException as exc:
            if exc.status != 404:
                raise

    def send(
        self, policy: str, body: bytes = IMAGE_BODY, headers: dict[str, str] | None = None
    ) -> Answer:
        req = urllib.request.Request(
            self.router.url + "/v1/images/generations",
            data=body,
            headers={"Content-Type": "application/json", "X-ModelFleet-Policy": policy}
            | (headers or {}),
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                resp.read()
                h, code = resp.headers, resp.status
        except urllib.error.HTTPError as err:
            err.read()
            h, code = err.headers, err.code
        return Answer(
            code,
            h.get("X-ModelFleet-Pool", ""),
            h.get("X-ModelFleet-Fallback", ""),
            h.get("X-ModelFleet-Route", ""),
        )

    def router_counter(self, name: str, **labels: str) -> float:
        """Sum of the router's samples `name` whose labels include `labels`."""
        with urllib.request.urlopen(self.router.url + "/metrics", timeout=10) as resp:
            text = resp.read().decode()
        want = set(labels.items())
        return sum(
            smp.value
            for fam in text_string_to_metric_families(text)
            for smp in fam.samples
            if smp.name == name and want <= set(smp.labels.items())
        )

    def pools_ready(self, names: Iterable[str]) -> bool:
        want = set(names)
        items = self.custom.list_namespaced_custom_object(G, V, self.namespace, "modelpools")
        ready = {
            p["metadata"]["name"]
            for p in items["items"]
            if (p.get("status") or {}).get("phase") == "Ready"
        }
        return want <= ready


def recreate_namespace(cluster: LocalCluster, name: str) -> None:
    core = k8s.CoreV1Api(cluster.api)

    def gone() -> bool:
        try:
            core.read_namespace(name)
        except ApiException as exc:
            if exc.status == 404:
                return True
            raise
        return False

    try:
        core.delete_namespace(name)
    except ApiException as exc:
        if exc.status != 404:
            raise
    wait_for(gone, timeout=120, interval=0.5, what=f"old namespace {name} gone")
    core.create_namespace({"metadata": {"name": name, "labels": {"modelfleet.io/test": "true"}}})
    bootstrap.wait_default_service_account(cluster.api, name)


@contextmanager
def start_fleet(
    cluster: LocalCluster,
    operator: Any,
    namespace: str,
    pools: list[dict[str, Any]],
    ready_policy: dict[str, Any],
    router_args: Iterable[str] = (),
) -> Iterator[Fleet]:
    """A fresh namespace with `pools` Ready, the operator pointed at a new router
    (`--kube --namespace`), and that router up (it turns ready once it knows a policy:
    `ready_policy`). Both share one operator credential (--operator-token-file), as the
    chart mounts one Secret in both, so a canary's pre-flight replay can pin its pools.
    The namespace and the credential are deleted afterwards. `router_args` are extra router
    flags (e.g. --asset-store)."""
    recreate_namespace(cluster, namespace)
    custom = k8s.CustomObjectsApi(cluster.api)
    for doc in pools:
        custom.create_namespaced_custom_object(G, V, namespace, "modelpools", doc)
    port = free_port()
    os.environ["MODELFLEET_ROUTER_URLS"] = f"http://127.0.0.1:{port}"
    secret_dir = Path(tempfile.mkdtemp(prefix="modelfleet-e2e-credential-"))
    token_file = secret_dir / "operator-token"
    token_file.write_text(secrets.token_hex(16))
    token_file.chmod(0o600)
    # The operator reads the router URL and its credential at start: restart it with both
    # (main_args: an operator the scenarios restart keeps the credential).
    main_args = operator.main_args
    operator.main_args = [*main_args, "--operator-token-file", str(token_file)]
    operator.main.kill(signal.SIGTERM)
    started = operator.ensure_running()
    router = RouterProcess.kube(
        namespace,
        cluster.kubeconfig,
        *("--operator-token-file", str(token_file), *router_args),
        port=port,
    )
    fleet = Fleet(cluster, namespace, router, operator, token_file)
    assert started.alive, started.log()
    names = [p["metadata"]["name"] for p in pools]
    wait_for(
        lambda: fleet.pools_ready(names),
        timeout=240,
        interval=0.5,
        what=f"pools {names} Ready (real workers)",
    )
    custom.create_namespaced_custom_object(G, V, namespace, "routingpolicies", ready_policy)
    try:
        with router:
            yield fleet
    finally:
        os.environ.pop("MODELFLEET_ROUTER_URLS", None)
        operator.main_args = main_args
        shutil.rmtree(secret_dir, ignore_errors=True)
        k8s.CoreV1Api(cluster.api).delete_namespace(namespace)


def load_manifests(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


class PrometheusProcess:
    """A real Prometheus scraping the given targets every second."""

    def __init__(self, data: Path, jobs: dict[str, list[tuple[str, dict[str, str]]]]) -> None:
        self.port = free_port()
        self.data = data
        self.config = data / "prometheus.yml"
        scrape = []
        for job, targets in jobs.items():
            groups = [{"targets": [t], "labels": labels} for t, labels in targets]
            scrape.append({"job_name": job, "honor_labels": True, "static_configs": groups})
        self.config.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "scrape_configs": scrape,
                }
            )
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with (self.data / "prometheus.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    "prometheus",
                    f"--config.file={self.config}",
                    f"--storage.tsdb.path={self.data / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

        def ready() -> bool:
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=1) as r:
                    return bool(r.status == 200)
            except OSError:
                return False

        wait_for(ready, timeout=60, what="prometheus ready")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


@dataclass
class SplitTiming:
    """When a canary weight appeared in a RoutingPolicy's status, and when the router
    first answered from the candidate. The status write lies between `status_before`
    (the send time of the last read without the weight: the write came after the API
    server served it) and `status_seen` (the receive time of the first read with it)."""

    status_before: float
    status_seen: float
    router_first: float  # receive time of the first probe the candidate answered
    early_candidate_answers: int  # candidate answers finished before status_before

    @property
    def delay(self) -> float:
        """An upper bound of status -> router: never less than the true delay."""
        return self.router_first - self.status_before


class SplitClock:
    """Times the router's switch to a RoutingPolicy's new weights: one thread reads the
    policy every `interval`, two send probes (PROBE_BODY) through the router and note
    which pool answered each. All times are time.monotonic()."""

    def __init__(
        self, fleet: Fleet, policy: str, candidate: str, route: int = 0, interval: float = 0.02
    ) -> None:
        self.fleet, self.policy, self.candidate, self.route = fleet, policy, candidate, route
        self.interval = interval
        self.reads: list[tuple[float, float, bool]] = []  # (sent, received, weighted)
        self.answers: list[tuple[float, str]] = []  # (received, pool)
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._read, daemon=True)]
        self.threads += [threading.Thread(target=self._probe, daemon=True) for _ in range(2)]

    def _weighted(self, doc: dict[str, Any]) -> bool:
        routes = (doc.get("status") or {}).get("routes") or []
        pools = routes[self.route].get("pools", []) if len(routes) > self.route else []
        return any(p["pool"] == self.candidate and p["weight"] > 0 for p in pools)

    def _read(self) -> None:
        while not self.stop.is_set():
            sent = time.monotonic()
            doc = self.fleet.policy(self.policy)
            self.reads.append((sent, time.monotonic(), self._weighted(doc)))
            self.stop.wait(self.interval)  # pacing, not a condition

    def _probe(self) -> None:
        while not self.stop.is_set():
            answer = self.fleet.send(self.policy, PROBE_BODY)
            self.answers.append((time.monotonic(), answer.pool))
            self.stop.wait(self.interval)  # pacing, not a condition

    def __enter__(self) -> SplitClock:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)

    def timing(self) -> SplitTiming | None:
        """None until both the weighted status and a candidate answer were seen."""
        reads, answers = list(self.reads), list(self.answers)
        first = next((i for i, r in enumerate(reads) if r[2]), None)
        router = next((t for t, pool in answers if pool == self.candidate), None)
        if first is None or router is None:
            return None
        assert first > 0, "the policy was weighted before the clock started"
        before = reads[first - 1][0]
        early = sum(1 for t, pool in answers if pool == self.candidate and t < before)
        return SplitTiming(before, reads[first][1], router, early)
