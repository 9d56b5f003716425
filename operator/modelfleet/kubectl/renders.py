"""Where the report's side-by-side renders come from (the I/O; report_pairs.py draws them).

Each (prompt, seed) is sent to one worker of the stable pool and one of the candidate
pool, directly: a worker base URL given by the user (e.g. through `kubectl
port-forward`), or the first ready endpoint of the pool's Service, found in its
EndpointSlices (where pod IPs are reachable: inside the cluster, or the local dev
cluster). Going through the router could not guarantee which pool drew which image.
Each worker scores its own image with its OCR verifier and returns the `modelfleet`
block; nothing is scored here.
"""

from __future__ import annotations

import base64
import binascii
import json
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from modelfleet.kubectl.client import REQUEST_TIMEOUT, Kube, PluginError
from modelfleet.kubectl.report_pairs import PoolRender, RenderPair

SERVICE_NAME_LABEL = "kubernetes.io/service-name"


@dataclass(frozen=True)
class ReportPrompt:
    """One prompt of the side-by-side section. `text`, when given, is sent as the
    ModelFleet `text` field (the expected text); else the worker takes it from the
    prompt's quoted spans."""

    prompt: str
    seed: int
    text: tuple[str, ...] = ()


def request_body(p: ReportPrompt, size: str | None, steps: int | None) -> dict[str, Any]:
    """The images request for one prompt; size and steps only when given (else the
    pool's defaults apply)."""
    body: dict[str, Any] = {"prompt": p.prompt, "seed": p.seed, "response_format": "b64_json"}
    if size:
        body["size"] = size
    if steps:
        body["steps"] = steps
    if p.text:
        body["text"] = list(p.text)
    return body


def parse_response(pool: str, url: str, data: Any) -> PoolRender:
    """A worker's JSON answer -> the first image's bytes and its `modelfleet` block."""
    try:
        item = data["data"][0]
        image = base64.b64decode(item["b64_json"], validate=True)
    except (KeyError, IndexError, TypeError, binascii.Error, ValueError) as exc:
        return PoolRender(pool, error=f"{url}: unexpected answer ({type(exc).__name__}: {exc})")
    block = item.get("modelfleet") if isinstance(item, dict) else None
    return PoolRender(pool, image=image, verification=block if isinstance(block, dict) else None)


def render_on_worker(
    base_url: str,
    pool: str,
    p: ReportPrompt,
    *,
    size: str | None,
    steps: int | None,
    timeout: float = 120.0,
) -> PoolRender:
    """One render from a worker's /v1/images/generations; failures become .error."""
    url = base_url.rstrip("/") + "/v1/images/generations"
    req = urllib.request.Request(
        url,
        data=json.dumps(request_body(p, size, steps)).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            data = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read()[:300].decode("utf-8", "replace")
        return PoolRender(pool, error=f"{url}: HTTP {exc.code}: {detail}")
    except (OSError, ValueError) as exc:
        return PoolRender(pool, error=f"{url}: {exc}")
    return parse_response(pool, url, data)


def pairs_from_workers(
    stable: tuple[str, str],
    candidate: tuple[str, str],
    prompts: Sequence[ReportPrompt],
    *,
    size: str | None,
    steps: int | None,
    timeout: float = 120.0,
) -> list[RenderPair]:
    """Every prompt on both pools ((pool, worker base URL) each), in prompt order; the
    two pools render at the same time."""

    def one(p: ReportPrompt) -> RenderPair:
        with ThreadPoolExecutor(max_workers=2) as ex:
            s, c = ex.map(
                lambda target: render_on_worker(
                    target[1], target[0], p, size=size, steps=steps, timeout=timeout
                ),
                (stable, candidate),
            )
        return RenderPair(p.prompt, p.seed, s, c, expected=p.text)

    return [one(p) for p in prompts]


def ready_endpoint_url(slices: Sequence[dict[str, Any]]) -> str | None:
    """The first ready endpoint's http base URL among a Service's EndpointSlices
    (sorted, so repeated reports call the same worker)."""
    urls = []
    for s in slices:
        ports = [p for p in s.get("ports") or [] if p.get("name") in ("http", None)]
        if not ports or ports[0].get("port") is None:
            continue
        port = ports[0]["port"]
        for ep in s.get("endpoints") or []:
            if (ep.get("conditions") or {}).get("ready") is not True:
                continue
            for addr in ep.get("addresses") or []:
                host = f"[{addr}]" if ":" in addr else addr
                urls.append(f"http://{host}:{port}")
    return sorted(urls)[0] if urls else None


def pool_worker_url(kube: Kube, pool: str) -> str:
    """A ready worker of the pool, from its Service's EndpointSlices."""
    from kubernetes import client as k8s

    res = k8s.DiscoveryV1Api(kube.api).list_namespaced_endpoint_slice(
        kube.namespace,
        label_selector=f"{SERVICE_NAME_LABEL}={pool}",
        _request_timeout=REQUEST_TIMEOUT,
    )
    slices = [kube.api.sanitize_for_serialization(s) for s in res.items]
    url = ready_endpoint_url(slices)
    if url is None:
        raise PluginError(
            f"--from-pools: pool {pool!r} has no ready worker endpoint in namespace "
            f"{kube.namespace!r} (Service {pool}); is the pool Ready and not scaled to 0?"
        )
    return url
