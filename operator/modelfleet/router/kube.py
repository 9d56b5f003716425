"""Kubernetes config source: watch RoutingPolicies, EndpointSlices and ModelPools (for
their spec.modelNames and whether they scale from zero), build Snapshots.

The translations (API objects as JSON dicts -> models -> Snapshot) are pure functions; the
shell is two list+watch threads (the `kubernetes` client is synchronous) that hand every
event to the asyncio loop, where all state lives. Watches, not polling: a change reaches
the router as soon as the API server sends it."""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pydantic import ValidationError

from modelfleet import GROUP, VERSION
from modelfleet.api.common import parse_time
from modelfleet.api.routingpolicy import RoutingPolicy
from modelfleet.router.config import Snapshot, format_validation_error
from modelfleet.routing.clients import CLIENT_KEY_LABEL, KeyRing, ring_from_secrets
from modelfleet.routing.models import PoolModels
from modelfleet.routing.table import compile_policy

log = logging.getLogger("modelfleet.router.kube")

PLURAL = "routingpolicies"
POOL_PLURAL = "modelpools"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
PORT_NAME = "http"

Key = tuple[str, str]  # (namespace, name)


# -- pure translations ------------------------------------------------------------------


def object_key(obj: Mapping[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return (str(meta.get("namespace") or ""), str(meta.get("name") or ""))


def policy_from_object(obj: Mapping[str, Any]) -> RoutingPolicy:
    """A RoutingPolicy as the API server returns it. Only what the router uses is validated:
    metadata name/namespace, spec, and status.routes; other status fields are the
    operator's business and may grow."""
    meta = obj.get("metadata") or {}
    status = obj.get("status") or {}
    doc: dict[str, Any] = {
        "apiVersion": obj.get("apiVersion", f"{GROUP}/{VERSION}"),
        "kind": "RoutingPolicy",
        "metadata": {"name": meta.get("name", ""), "namespace": meta.get("namespace")},
        "spec": obj.get("spec"),
    }
    if status.get("routes"):
        doc["status"] = {"routes": status["routes"]}
    return RoutingPolicy.model_validate(doc)


def _url(address: str, port: int) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"http://{host}:{port}"


def endpoints_from_slices(slices: Iterable[Mapping[str, Any]]) -> dict[Key, tuple[str, ...]]:
    """(namespace, service) -> sorted base URLs of endpoints whose conditions.ready is true,
    on the slice's port named "http". A Service has several slices; they are merged."""
    out: dict[Key, set[str]] = {}
    for s in slices:
        meta = s.get("metadata") or {}
        service = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
        if not service:
            continue
        port = next(
            (p.get("port") for p in s.get("ports") or [] if p.get("name") == PORT_NAME), None
        )
        urls = out.setdefault((str(meta.get("namespace") or ""), str(service)), set())
        if not isinstance(port, int):
            continue
        for ep in s.get("endpoints") or []:
            if (ep.get("conditions") or {}).get("ready") is not True:
                continue
            addresses = ep.get("addresses") or []
            if addresses:
                # Addresses of one endpoint are fungible (same pod): one is enough.
                urls.add(_url(str(addresses[0]), port))
    return {k: tuple(sorted(v)) for k, v in out.items()}


def _created(meta: Mapping[str, Any]) -> int:
    try:
        ts = str(meta.get("creationTimestamp") or "")
        return int(parse_time(ts).timestamp())
    except ValueError:
        return 0


def model_names_from_pools(pools: Iterable[Mapping[str, Any]]) -> dict[Key, PoolModels]:
    """(namespace, pool) -> spec.modelNames. Only that field is read (the API server
    validated it): a pool the router cannot otherwise parse still serves its names."""
    out: dict[Key, PoolModels] = {}
    for obj in pools:
        names = (obj.get("spec") or {}).get("modelNames") or []
        names = tuple(n for n in names if isinstance(n, str) and n)
        if names:
            out[object_key(obj)] = PoolModels(names, _created(obj.get("metadata") or {}))
    return out


def scale_from_zero_pools(pools: Iterable[Mapping[str, Any]]) -> frozenset[Key]:
    """Pools whose spec.autoscaling.minReplicas is 0 (an absent minReplicas is 1, the
    API's default): the router holds their requests while they have no endpoint."""
    out = set()
    for obj in pools:
        auto = (obj.get("spec") or {}).get("autoscaling")
        if isinstance(auto, Mapping) and auto.get("minReplicas", 1) == 0:
            out.add(object_key(obj))
    return frozenset(out)


def build_snapshot(
    policies: Mapping[Key, Mapping[str, Any]],
    slices: Mapping[Key, Mapping[str, Any]],
    pools: Mapping[Key, Mapping[str, Any]] | None = None,
    secrets: Mapping[Key, Mapping[str, Any]] | None = None,
) -> Snapshot:
    """Policies sorted by namespace/name (the default policy is the first). An invalid
    policy (which admission should have stopped) is logged and left out."""
    tables = []
    for key in sorted(policies):
        try:
            tables.append(compile_policy(policy_from_object(policies[key])))
        except ValidationError as exc:
            log.error("RoutingPolicy %s/%s ignored: %s", *key, format_validation_error(exc))
    return Snapshot(
        policies=tuple(tables),
        endpoints=endpoints_from_slices(slices.values()),
        model_names=model_names_from_pools((pools or {}).values()),
        scale_from_zero=scale_from_zero_pools((pools or {}).values()),
        client_keys=KeyRing() if secrets is None else ring_from_secrets(secrets.values()),
    )


# -- the shell --------------------------------------------------------------------------


def _k8s(module: str) -> Any:
    # The kubernetes client ships no type hints; go through Any rather than ignores.
    return importlib.import_module(f"kubernetes.{module}")


def make_api_client(kubeconfig: str | None = None) -> Any:
    """From an explicit kubeconfig, else in-cluster, else $KUBECONFIG / ~/.kube/config."""
    client, config = _k8s("client"), _k8s("config")
    if kubeconfig:
        return config.new_client_from_config(config_file=kubeconfig)
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        cfg = client.Configuration()
        config.load_incluster_config(client_configuration=cfg)
        return client.ApiClient(cfg)
    return config.new_client_from_config()


class KubeSource:
    """Calls `on_update(snapshot)` on the loop after the first full sync and on each change."""

    def __init__(
        self,
        on_update: Callable[[Snapshot], None],
        namespace: str | None = None,
        kubeconfig: str | None = None,
        api_client: Any = None,
        keys_namespace: str | None = None,
    ) -> None:
        self._on_update = on_update
        self._namespace = namespace
        # Client keys: Secrets labelled modelfleet.io/client-key=true in this namespace
        # only (the router's own; RBAC grants nothing wider). None: not watched.
        self._api = api_client if api_client is not None else make_api_client(kubeconfig)
        self._state: dict[str, dict[Key, Mapping[str, Any]]] = {
            "policy": {},
            "slice": {},
            "pool": {},
        }
        self._keys_namespace = keys_namespace
        self._required = {"policy", "slice"}
        if keys_namespace is not None:
            self._state["secret"] = {}
            self._required.add("secret")  # no snapshot (every key 401) before the keys
        self._synced: set[str] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._rebuild_pending = False
        self._threads: list[threading.Thread] = []

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for kind in self._state:
            t = threading.Thread(target=self._run, args=(kind,), name=f"watch-{kind}", daemon=True)
            t.start()
            self._threads.append(t)

    async def stop(self) -> None:
        self._stop.set()

    # Runs on the loop.
    def _event(self, kind: str, etype: str, obj: Any) -> None:
        store = self._state[kind]
        if etype == "RESET":
            store.clear()
            for o in obj:
                store[object_key(o)] = o
            self._synced.add(kind)
        elif etype == "DELETED":
            store.pop(object_key(obj), None)
        else:
            store[object_key(obj)] = obj
        # ModelPools are optional: a router whose RBAC predates modelNames (no access to
        # modelpools) still serves, by intent only.
        if self._required <= self._synced and not self._rebuild_pending:
            # Coalesce a burst of events (a relist, a rollout) into one rebuild.
            self._rebuild_pending = True
            assert self._loop is not None
            self._loop.call_soon(self._rebuild)

    def _rebuild(self) -> None:
        self._rebuild_pending = False
        st = self._state
        secrets = st.get("secret") if self._keys_namespace is not None else None
        self._on_update(build_snapshot(st["policy"], st["slice"], st["pool"], secrets))

    def _post(self, kind: str, etype: str, obj: Any) -> None:
        assert self._loop is not None
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._event, kind, etype, obj)

    # Runs in a thread.
    def _calls(self, kind: str) -> tuple[Callable[..., Any], dict[str, Any]]:
        client = _k8s("client")
        ns = self._namespace
        if kind == "secret":
            return client.CoreV1Api(self._api).list_namespaced_secret, {
                "namespace": self._keys_namespace,
                "label_selector": f"{CLIENT_KEY_LABEL}=true",
            }
        if kind in ("policy", "pool"):
            co = client.CustomObjectsApi(self._api)
            plural = PLURAL if kind == "policy" else POOL_PLURAL
            if ns:
                return co.list_namespaced_custom_object, {
                    "group": GROUP,
                    "version": VERSION,
                    "namespace": ns,
                    "plural": plural,
                }
            return co.list_cluster_custom_object, {
                "group": GROUP,
                "version": VERSION,
                "plural": plural,
            }
        d = client.DiscoveryV1Api(self._api)
        if ns:
            return d.list_namespaced_endpoint_slice, {"namespace": ns}
        return d.list_endpoint_slice_for_all_namespaces, {}

    def _run(self, kind: str) -> None:
        watch = _k8s("watch")
        ApiException = _k8s("client.exceptions").ApiException

        fn, kwargs = self._calls(kind)
        backoff = 0.2
        while not self._stop.is_set():
            try:
                resp = fn(**kwargs, _preload_content=False)
                listing = json.loads(resp.data)
                rv = listing["metadata"]["resourceVersion"]
                self._post(kind, "RESET", listing.get("items") or [])
                backoff = 0.2
                w = watch.Watch()
                while not self._stop.is_set():
                    for ev in w.stream(
                        fn,
                        **kwargs,
                        resource_version=rv,
                        timeout_seconds=240,
                        allow_watch_bookmarks=True,
                    ):
                        if self._stop.is_set():
                            w.stop()
                            return
                        etype, raw = ev["type"], ev["raw_object"]
                        if etype == "ERROR":
                            raise ApiException(status=raw.get("code", 500), reason="watch error")
                        rv = raw["metadata"]["resourceVersion"]
                        if etype != "BOOKMARK":
                            self._post(kind, etype, raw)
            except ApiException as exc:
                if exc.status == 410:
                    log.info("%s watch expired, listing again", kind)
                else:
                    log.warning("%s watch failed: %s", kind, exc)
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, 5.0)
            except Exception as exc:
                log.warning("%s watch failed: %s", kind, exc)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
