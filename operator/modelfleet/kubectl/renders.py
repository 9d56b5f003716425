"""Where the report's side-by-side renders come from (the I/O; report_pairs.py draws them).

Each (prompt, seed) is rendered once on the stable and once on the candidate pool, by
one of three paths:

- through the router with the pool pinned (`X-ModelFleet-Pool`), which only the
  operator's credential may do (`--router-url` and `--operator-token-file`): the path
  the canary's pre-flight replay takes, so the same (prompt, seed, pool) gives the
  replay's image again;
- one worker of each pool directly: a base URL given by the user (e.g. through `kubectl
  port-forward`), or the first ready endpoint of the pool's Service, found in its
  EndpointSlices (where pod IPs are reachable: inside the cluster, or the local dev
  cluster).

A user's plain request through the router could not say which pool drew it. Each
worker scores its own image with its OCR verifier and returns the `modelfleet` block;
nothing is scored here. The prompts are the canary's golden prompts when it has
`spec.replay` (read from its ConfigMap), else the report's own.
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

from modelfleet.canary.replay import GoldenError, GoldenPrompt, parse_golden
from modelfleet.kubectl.client import REQUEST_TIMEOUT, Kube, PluginError
from modelfleet.kubectl.report_pairs import PoolRender, RenderPair
from modelfleet.routing.pin import POOL_HEADER, TOKEN_HEADER

POLICY_HEADER = "X-ModelFleet-Policy"
# Golden (prompt, seed) pairs the report renders when the replay recorded none.
MAX_GOLDEN_PAIRS = 8

SERVICE_NAME_LABEL = "kubernetes.io/service-name"


@dataclass(frozen=True)
class ReportPrompt:
    """One prompt of the side-by-side section. `text`, when given, is sent as the
    ModelFleet `text` field (the expected text); else the worker takes it from the
    prompt's quoted spans."""

    prompt: str
    seed: int
    text: tuple[str, ...] = ()
    size: str | None = None  # this prompt's own size (a golden prompt's), over the report's
    line: int | None = None  # the golden prompt's line in its ConfigMap key


def request_body(p: ReportPrompt, size: str | None, steps: int | None) -> dict[str, Any]:
    """The images request for one prompt; size and steps only when given (else the
    pool's defaults apply)."""
    body: dict[str, Any] = {"prompt": p.prompt, "seed": p.seed, "response_format": "b64_json"}
    size = p.size or size
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


@dataclass(frozen=True)
class Target:
    """Where one pool's renders are requested: a worker, or the router with a pin."""

    pool: str
    base_url: str
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def pinned(cls, pool: str, router_url: str, policy: str, token: str) -> Target:
        pin = ((POLICY_HEADER, policy), (POOL_HEADER, pool), (TOKEN_HEADER, token))
        return cls(pool, router_url, pin)


def render_on(
    target: Target,
    p: ReportPrompt,
    *,
    size: str | None,
    steps: int | None,
    timeout: float = 120.0,
) -> PoolRender:
    """One render from /v1/images/generations of a worker or the router; failures
    become .error (which never holds the credential: only URLs and answers)."""
    url = target.base_url.rstrip("/") + "/v1/images/generations"
    pool = target.pool
    req = urllib.request.Request(
        url,
        data=json.dumps(request_body(p, size, steps)).encode(),
        method="POST",
        headers={"Content-Type": "application/json", **dict(target.headers)},
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


def pairs_from(
    stable: Target,
    candidate: Target,
    prompts: Sequence[ReportPrompt],
    *,
    size: str | None,
    steps: int | None,
    timeout: float = 120.0,
) -> list[RenderPair]:
    """Every prompt on both pools, in prompt order; the two pools render at once."""

    def one(p: ReportPrompt) -> RenderPair:
        with ThreadPoolExecutor(max_workers=2) as ex:
            s, c = ex.map(
                lambda t: render_on(t, p, size=size, steps=steps, timeout=timeout),
                (stable, candidate),
            )
        return RenderPair(p.prompt, p.seed, s, c, expected=p.text, line=p.line)

    return [one(p) for p in prompts]


def pairs_from_workers(
    stable: tuple[str, str],
    candidate: tuple[str, str],
    prompts: Sequence[ReportPrompt],
    *,
    size: str | None,
    steps: int | None,
    timeout: float = 120.0,
) -> list[RenderPair]:
    """pairs_from() with (pool, worker base URL) for each pool."""
    return pairs_from(
        Target(*stable), Target(*candidate), prompts, size=size, steps=steps, timeout=timeout
    )


def golden_report_prompts(
    golden: Sequence[GoldenPrompt], seeds: Sequence[int], recorded: Sequence[dict[str, Any]]
) -> list[ReportPrompt]:
    """The golden (prompt, seed) pairs to show: those the replay recorded in
    status.replay.renders (the candidate's worst), else the first MAX_GOLDEN_PAIRS of
    every prompt with every seed. Each is sent as the replay sent it (text, size)."""
    by_line = {g.line: g for g in golden}

    def prompt(g: GoldenPrompt, seed: int) -> ReportPrompt:
        return ReportPrompt(g.prompt, seed, g.text, g.size, g.line)

    picked = [
        prompt(by_line[r["line"]], int(r["seed"]))
        for r in recorded
        if isinstance(r.get("line"), int)
        and r["line"] in by_line
        and isinstance(r.get("seed"), int)
    ]
    if picked:
        return picked
    return [prompt(g, s) for g in golden for s in seeds][:MAX_GOLDEN_PAIRS]


def replay_prompts(kube: Kube, canary: dict[str, Any]) -> list[ReportPrompt] | None:
    """The canary's golden prompts (from its spec.replay ConfigMap), or None without a
    replay. The key is parsed as the operator parses it: the same errors."""
    from kubernetes import client as k8s
    from kubernetes.client.rest import ApiException

    replay = (canary.get("spec") or {}).get("replay")
    if not replay:
        return None
    name, key = replay.get("configMap", ""), replay.get("key", "prompts.jsonl")
    try:
        cm = k8s.CoreV1Api(kube.api).read_namespaced_config_map(
            name, kube.namespace, _request_timeout=REQUEST_TIMEOUT
        )
    except ApiException as exc:
        if exc.status == 404:
            raise PluginError(
                f"spec.replay.configMap: ConfigMap {name!r} not found in namespace "
                f"{kube.namespace!r}; pass --prompt to render other prompts"
            ) from exc
        raise
    doc = (cm.data or {}).get(key)
    if doc is None:
        raise PluginError(f"spec.replay.key: ConfigMap {name!r} has no key {key!r}")
    try:
        golden = parse_golden(doc, f"ConfigMap {name} key {key}")
    except GoldenError as exc:
        raise PluginError(f"spec.replay: {exc}") from exc
    recorded = ((canary.get("status") or {}).get("replay") or {}).get("renders") or []
    return golden_report_prompts(golden, replay.get("seeds") or [1], recorded)


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
