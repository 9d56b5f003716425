"""The plugin's I/O: the Kubernetes API (connection, Canary get/patch, ModelPool list)
and ImageResult, the report's older image input (renders.py fetches the images now).

The kubernetes client is imported inside the functions: `--help` and the pure views
stay fast to load.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelfleet import GROUP, VERSION

CANARIES = "canaries"
MODELPOOLS = "modelpools"
SA_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
REQUEST_TIMEOUT = (10, 30)  # connect, read (seconds)


class PluginError(Exception):
    """An error to print as one line and exit 1 with (never a traceback)."""


# --- Kubernetes -----------------------------------------------------------------------


@dataclass
class Kube:
    api: Any  # kubernetes.client.ApiClient
    namespace: str
    host: str

    @property
    def custom(self) -> Any:
        from kubernetes import client as k8s

        return k8s.CustomObjectsApi(self.api)


def _context_namespace(kubeconfig: str | None, context: str | None) -> str | None:
    from kubernetes import config as k8s_config

    contexts, active = k8s_config.list_kube_config_contexts(config_file=kubeconfig)
    chosen = active
    if context:
        chosen = next((c for c in contexts or [] if c.get("name") == context), None)
    ns = ((chosen or {}).get("context") or {}).get("namespace")
    return str(ns) if ns else None


def connect(kubeconfig: str | None, context: str | None, namespace: str | None) -> Kube:
    """Client config from --kubeconfig, KUBECONFIG, ~/.kube/config, or in-cluster."""
    from kubernetes import client as k8s
    from kubernetes import config as k8s_config

    cfg = k8s.Configuration()
    kubeconfig = kubeconfig or None
    default_file = Path("~/.kube/config").expanduser()
    use_file = bool(kubeconfig or os.environ.get("KUBECONFIG") or default_file.exists())
    try:
        if use_file:
            k8s_config.load_kube_config(
                config_file=kubeconfig, context=context, client_configuration=cfg
            )
            ns = namespace or _context_namespace(kubeconfig, context) or "default"
        elif os.environ.get("KUBERNETES_SERVICE_HOST"):
            k8s_config.load_incluster_config(client_configuration=cfg)
            ns = namespace or (
                SA_NAMESPACE_FILE.read_text().strip() if SA_NAMESPACE_FILE.exists() else ""
            )
            ns = ns or "default"
        else:
            raise PluginError(
                "no Kubernetes configuration: pass --kubeconfig, set KUBECONFIG, "
                "create ~/.kube/config, or run inside a cluster"
            )
    except k8s_config.ConfigException as exc:
        raise PluginError(f"invalid Kubernetes configuration: {exc}") from exc
    except OSError as exc:
        raise PluginError(f"cannot read Kubernetes configuration: {exc}") from exc
    cfg.retries = 1
    return Kube(api=k8s.ApiClient(cfg), namespace=ns, host=str(cfg.host))


def _crd_installed(kube: Kube, plural: str) -> bool:
    from kubernetes.client.rest import ApiException

    try:
        resources = kube.custom.get_api_resources(GROUP, VERSION, _request_timeout=REQUEST_TIMEOUT)
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return any(r.name == plural for r in resources.resources or [])


def _crd_missing(plural: str) -> PluginError:
    return PluginError(
        f"the {plural}.{GROUP} CRD is not installed in this cluster "
        f"(no {GROUP}/{VERSION} {plural} resource); install the ModelFleet CRDs first"
    )


def _namespaces_with(kube: Kube, plural: str, name: str) -> list[str]:
    """Other namespaces holding an object of this name (empty when we may not list)."""
    from kubernetes.client.rest import ApiException

    try:
        found = kube.custom.list_cluster_custom_object(
            GROUP,
            VERSION,
            plural,
            field_selector=f"metadata.name={name}",
            _request_timeout=REQUEST_TIMEOUT,
        )
    except ApiException:
        return []
    return sorted({i["metadata"]["namespace"] for i in found.get("items", [])})


def get_canary(kube: Kube, name: str) -> dict[str, Any]:
    from kubernetes.client.rest import ApiException

    try:
        obj: dict[str, Any] = kube.custom.get_namespaced_custom_object(
            GROUP, VERSION, kube.namespace, CANARIES, name, _request_timeout=REQUEST_TIMEOUT
        )
        return obj
    except ApiException as exc:
        if exc.status != 404:
            raise
    if not _crd_installed(kube, CANARIES):
        raise _crd_missing(CANARIES)
    msg = f"canary {name!r} not found in namespace {kube.namespace!r}"
    elsewhere = [ns for ns in _namespaces_with(kube, CANARIES, name) if ns != kube.namespace]
    if elsewhere:
        msg += f"; found in namespace(s): {', '.join(elsewhere)} (use -n NAMESPACE)"
    raise PluginError(msg)


def patch_canary(kube: Kube, name: str, body: dict[str, Any]) -> dict[str, Any]:
    obj: dict[str, Any] = kube.custom.patch_namespaced_custom_object(
        GROUP, VERSION, kube.namespace, CANARIES, name, body, _request_timeout=REQUEST_TIMEOUT
    )
    return obj


def list_pools(kube: Kube, all_namespaces: bool) -> list[dict[str, Any]]:
    """ModelPools in the namespace (or all); a clear error when the CRD is missing."""
    from kubernetes.client.rest import ApiException

    try:
        if all_namespaces:
            res = kube.custom.list_cluster_custom_object(
                GROUP, VERSION, MODELPOOLS, _request_timeout=REQUEST_TIMEOUT
            )
        else:
            res = kube.custom.list_namespaced_custom_object(
                GROUP, VERSION, kube.namespace, MODELPOOLS, _request_timeout=REQUEST_TIMEOUT
            )
    except ApiException as exc:
        if exc.status == 404 and not _crd_installed(kube, MODELPOOLS):
            raise _crd_missing(MODELPOOLS) from exc
        raise
    pools: list[dict[str, Any]] = res.get("items", [])
    return pools


# --- the report's older image input ---------------------------------------------------


@dataclass(frozen=True)
class ImageResult:
    prompt: str
    seed: int
    png_b64: str | None = None
    error: str | None = None
