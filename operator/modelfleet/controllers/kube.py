"""Thin, idempotent Kubernetes I/O for the controllers (sync client in threads)."""

from __future__ import annotations

import asyncio
import json
import os
from functools import cache
from typing import Any, Literal, Protocol

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.rest import ApiException

from modelfleet import GROUP, VERSION
from modelfleet.builders.modelpool import FIELD_MANAGER


@cache
def api_client() -> k8s.ApiClient:
    try:
        k8s_config.load_incluster_config()
        configuration = k8s.Configuration.get_default_copy()
    except k8s_config.ConfigException:
        configuration = k8s.Configuration()
        k8s_config.load_kube_config(
            config_file=os.environ.get("KUBECONFIG"), client_configuration=configuration
        )
    # Many pools reconcile at once; the default pool of 4 connections serialises them.
    configuration.connection_pool_maxsize = 64
    return k8s.ApiClient(configuration)


def sanitize(obj: Any) -> dict[str, Any]:
    data: dict[str, Any] = api_client().sanitize_for_serialization(obj)
    return data


_APPLY = {
    "field_manager": FIELD_MANAGER,
    "force": True,
    "_content_type": "application/apply-patch+yaml",
}


def apply(manifest: dict[str, Any]) -> dict[str, Any]:
    """Server-side apply: we own only the fields we set (an HPA's replicas stay theirs)."""
    kind = manifest["kind"]
    name = manifest["metadata"]["name"]
    ns = manifest["metadata"]["namespace"]
    api = api_client()
    if kind == "Deployment":
        out = k8s.AppsV1Api(api).patch_namespaced_deployment(name, ns, manifest, **_APPLY)
    elif kind == "Service":
        out = k8s.CoreV1Api(api).patch_namespaced_service(name, ns, manifest, **_APPLY)
    elif kind == "PodDisruptionBudget":
        out = k8s.PolicyV1Api(api).patch_namespaced_pod_disruption_budget(
            name, ns, manifest, **_APPLY
        )
    elif kind == "NetworkPolicy":
        out = k8s.NetworkingV1Api(api).patch_namespaced_network_policy(name, ns, manifest, **_APPLY)
    else:
        raise ValueError(f"cannot apply kind {kind}")
    return sanitize(out)


def patch_status(plural: str, namespace: str, name: str, status: dict[str, Any]) -> None:
    try:
        k8s.CustomObjectsApi(api_client()).patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, plural, name, {"status": status}
        )
    except ApiException as exc:
        if exc.status != 404:  # deleted meanwhile: nothing to report on
            raise


def get_custom(plural: str, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        obj: dict[str, Any] = k8s.CustomObjectsApi(api_client()).get_namespaced_custom_object(
            GROUP, VERSION, namespace, plural, name
        )
        return obj
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def patch_custom(plural: str, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = k8s.CustomObjectsApi(api_client()).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, plural, name, patch
    )
    return out


def list_custom(plural: str, namespace: str | None = None) -> list[dict[str, Any]]:
    api = k8s.CustomObjectsApi(api_client())
    if namespace:
        out = api.list_namespaced_custom_object(GROUP, VERSION, namespace, plural)
    else:
        out = api.list_cluster_custom_object(GROUP, VERSION, plural)
    items: list[dict[str, Any]] = out.get("items", [])
    return items


async def run(fn: Any, *args: Any, **kwargs: Any) -> Any:
    return await asyncio.to_thread(fn, *args, **kwargs)


def api_message(exc: ApiException) -> str:
    """The API server's own sentence (its Status.message), not the client's dump."""
    try:
        return str(json.loads(exc.body).get("message") or exc.reason)
    except (TypeError, ValueError, AttributeError):
        return str(exc.reason or exc)


# --- ports the controller shells take, so their unit tests can pass fakes ---------------


class Objects(Protocol):
    """The custom objects (ModelPools, RoutingPolicies, Canaries) a controller reads and writes."""

    async def get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None: ...

    async def patch(
        self, plural: str, namespace: str, name: str, patch: dict[str, Any]
    ) -> dict[str, Any]: ...

    async def patch_status(
        self, plural: str, namespace: str, name: str, status: dict[str, Any]
    ) -> None: ...

    async def list(self, plural: str, namespace: str | None = None) -> list[dict[str, Any]]: ...


class KubeObjects:
    """Objects on the API server (the synchronous client, in threads)."""

    async def get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        out: dict[str, Any] | None = await run(get_custom, plural, namespace, name)
        return out

    async def patch(
        self, plural: str, namespace: str, name: str, patch: dict[str, Any]
    ) -> dict[str, Any]:
        out: dict[str, Any] = await run(patch_custom, plural, namespace, name, patch)
        return out

    async def patch_status(
        self, plural: str, namespace: str, name: str, status: dict[str, Any]
    ) -> None:
        await run(patch_status, plural, namespace, name, status)

    async def list(self, plural: str, namespace: str | None = None) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = await run(list_custom, plural, namespace)
        return out


EventType = Literal["Normal", "Warning"]


class Events(Protocol):
    """Kubernetes Events about an object."""

    def post(self, body: Any, type: EventType, reason: str, message: str) -> None: ...


class KopfEvents:
    """Events through kopf's queue (posted in the background by the running operator)."""

    def post(self, body: Any, type: EventType, reason: str, message: str) -> None:
        import kopf  # not at the top: the kubectl plugin imports this module (api_message)

        kopf.event(body, type=type, reason=reason, message=message)
