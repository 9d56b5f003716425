"""Every router replica behind a router Service URL.

`--router-url http://modelfleet-router.ns.svc:8080` load-balances each request to one
router, and each router only knows its own share of the traffic: demand read through
the Service would be one random replica's share. So a URL whose host is a Service
(`NAME.NAMESPACE.svc[.cluster.local]`) is turned into one URL per ready endpoint, from the
Service's EndpointSlices; any other URL (an IP, a host name) is used as given, and so is a
Service URL whose lookup fails.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

from modelfleet.controllers import kube

log = logging.getLogger("modelfleet.routers")
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
_SERVICE_HOST = re.compile(r"^([a-z0-9-]+)\.([a-z0-9-]+)\.svc(\.cluster\.local)?$")


@dataclass(frozen=True)
class ServiceTarget:
    scheme: str
    name: str
    namespace: str
    port: int


def service_target(url: str) -> ServiceTarget | None:
    """The Service a URL names, or None for an IP or any other host."""
    parts = urlsplit(url)
    m = _SERVICE_HOST.match(parts.hostname or "")
    if m is None:
        return None
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return ServiceTarget(parts.scheme or "http", m.group(1), m.group(2), port)


def endpoint_urls(
    target: ServiceTarget, service: Mapping[str, Any], slices: Iterable[Mapping[str, Any]]
) -> list[str]:
    """One base URL per ready endpoint, on the slice port behind the Service port."""
    ports = (service.get("spec") or {}).get("ports") or []
    named = next((p for p in ports if p.get("port") == target.port), None)
    if named is None:
        return []
    name = named.get("name") or ""
    out: set[str] = set()
    for s in slices:
        port = next(
            (p.get("port") for p in s.get("ports") or [] if (p.get("name") or "") == name), None
        )
        if not isinstance(port, int):
            continue
        for ep in s.get("endpoints") or []:
            if (ep.get("conditions") or {}).get("ready") is False:
                continue
            addresses = ep.get("addresses") or []
            if addresses:
                host = addresses[0]
                host = f"[{host}]" if ":" in host else host
                out.add(f"{target.scheme}://{host}:{port}")
    return sorted(out)


def _lookup(target: ServiceTarget) -> list[str]:
    api = kube.api_client()
    service = kube.sanitize(
        k8s.CoreV1Api(api).read_namespaced_service(target.name, target.namespace)
    )
    slices = k8s.DiscoveryV1Api(api).list_namespaced_endpoint_slice(
        target.namespace, label_selector=f"{SERVICE_NAME_LABEL}={target.name}"
    )
    return endpoint_urls(target, service, [kube.sanitize(s) for s in slices.items])


class RouterEndpoints:
    """The routers to read, refreshed every `refresh_s` (EndpointSlices change rarely)."""

    def __init__(
        self,
        urls: Sequence[str],
        *,
        refresh_s: float = 10.0,
        lookup: Callable[[ServiceTarget], list[str]] = _lookup,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.urls = list(urls)
        self.refresh_s = refresh_s
        self.lookup = lookup
        self.clock = clock
        self._resolved: list[str] = list(urls)
        self._at: float | None = None

    async def resolve(self) -> list[str]:
        now = self.clock()
        if self._at is not None and now - self._at < self.refresh_s:
            return self._resolved
        out: list[str] = []
        for url in self.urls:
            target = service_target(url)
            if target is None:
                out.append(url)
                continue
            try:
                found = await kube.run(self.lookup, target)
            except (ApiException, OSError) as exc:
                log.warning("router endpoints of %s: %s; using the Service URL", url, exc)
                found = []
            out.extend(found or [url])  # none ready or lookup failed: the Service itself
        self._resolved, self._at = sorted(set(out)), now
        return self._resolved
