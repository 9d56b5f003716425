"""`kubectl modelfleet keys`: requests, images, spend and budget per client key id, read
from the routers' GET /v1/stats (its `clients` section; never a key, only key ids).

Each router counts the requests it served itself; the budget figures (spent this period,
reserved, remaining) come from the spend store, which every replica shares when it is
Redis. So the counts are summed over the routers asked and the budget figures are taken
from the one that read them last (they are the same store's).

Routers: --router-url (repeat), else every router pod of the namespace (label
app.kubernetes.io/name=modelfleet-router) through the API server's pod proxy.
"""

from __future__ import annotations

import argparse
import json
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from typing import Any

from modelfleet.kubectl.client import REQUEST_TIMEOUT, Kube, PluginError
from modelfleet.kubectl.formatting import format_table

ROUTER_SELECTOR = "app.kubernetes.io/name=modelfleet-router"
ROUTER_PORT = "http"


def merge_clients(stats: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (namespace, key id) over several routers' /v1/stats answers."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for doc in stats:
        for c in doc.get("clients") or []:
            k = (str(c.get("namespace", "")), str(c.get("key", "")))
            row = rows.setdefault(
                k,
                {"namespace": k[0], "key": k[1], "requests": 0, "rejected": 0, "images": 0,
                 "cost_usd": 0.0},
            )  # fmt: skip
            for f in ("requests", "rejected", "images"):
                row[f] += int(c.get(f) or 0)
            row["cost_usd"] += float(c.get("cost_usd") or 0.0)
            if c.get("requests_per_minute") is not None:
                row["requests_per_minute"] = c["requests_per_minute"]
            budget = c.get("budget")
            if isinstance(budget, dict) and ("spent_usd" in budget or "budget" not in row):
                row["budget"] = budget
    return [rows[k] for k in sorted(rows)]


def _usd(v: Any) -> str:
    return "-" if v is None else f"{float(v):.4f}"


def format_keys(rows: Sequence[dict[str, Any]]) -> str:
    headers = ["namespace", "key", "requests", "rejected", "images", "cost usd", "rpm",
               "budget usd", "spent", "remaining", "resets"]  # fmt: skip
    out = []
    for r in rows:
        b = r.get("budget") or {}
        out.append(
            [
                r["namespace"],
                r["key"],
                r["requests"],
                r["rejected"],
                r["images"],
                _usd(r["cost_usd"]),
                r.get("requests_per_minute") or "-",
                f"{_usd(b['usd'])}/{b.get('period', '?')}" if b else "-",
                _usd(b.get("spent_usd")) if b else "-",
                _usd(b.get("remaining_usd")) if b else "-",
                b.get("resets", "-") if b else "-",
            ]
        )
    if not out:
        return "No client keys have sent requests to these routers yet."
    return format_table(headers, out)


def _fetch_url(url: str) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/v1/stats", timeout=10) as resp:
            doc: dict[str, Any] = json.loads(resp.read())
            return doc
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise PluginError(f"--router-url {url}: cannot read /v1/stats: {exc}") from None


def _router_pods(kube: Kube) -> list[tuple[str, str]]:
    """(pod name, port) of the namespace's running router pods."""
    from kubernetes import client as k8s

    core = k8s.CoreV1Api(kube.api)
    pods = core.list_namespaced_pod(
        kube.namespace, label_selector=ROUTER_SELECTOR, _request_timeout=REQUEST_TIMEOUT
    )
    out = []
    for p in pods.items:
        if (p.status.phase or "") != "Running":
            continue
        port = ""
        for c in p.spec.containers or []:
            for cp in c.ports or []:
                if cp.name == ROUTER_PORT:
                    port = str(cp.container_port)
        out.append((p.metadata.name, port))
    return out


def _fetch_pod(kube: Kube, pod: str, port: str) -> dict[str, Any]:
    from kubernetes import client as k8s
    from kubernetes.client.rest import ApiException

    core = k8s.CoreV1Api(kube.api)
    name = f"{pod}:{port}" if port else pod
    try:
        # The body unread by the client: it would turn a JSON object into its Python repr.
        resp = core.connect_get_namespaced_pod_proxy_with_path(
            name,
            kube.namespace,
            "v1/stats",
            _request_timeout=REQUEST_TIMEOUT,
            _preload_content=False,
        )
        body = resp.data
    except ApiException as exc:
        raise PluginError(f"router pod {pod}: /v1/stats via the API server: {exc.reason}") from None
    try:
        doc = json.loads(body)
    except ValueError:
        raise PluginError(f"router pod {pod}: /v1/stats is not JSON") from None
    if not isinstance(doc, dict):
        raise PluginError(f"router pod {pod}: /v1/stats is not a JSON object")
    return doc


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Register `keys` (main.py calls this)."""
    p = sub.add_parser(
        "keys",
        parents=[common],
        help="requests, images, spend and budget per client key id",
        description="Requests, images and cost per client key id (summed over the routers "
        "asked, since each started), and each budgeted key's spend this period (the "
        "shared spend store's). Reads GET /v1/stats of every router pod in the namespace "
        "through the API server, or of --router-url.",
    )
    p.add_argument("--router-url", action="append", default=[], help="a router's base URL (repeat)")
    p.add_argument("-o", "--output", choices=["text", "json"], default="text")
    p.set_defaults(handler=cmd_keys)


def cmd_keys(kube: Kube, args: argparse.Namespace) -> int:
    pods = _router_pods(kube)
    if not pods:
        raise PluginError(
            f"no running router pods ({ROUTER_SELECTOR}) in namespace {kube.namespace}; "
            "pass --router-url or -n NAMESPACE"
        )
    return _show([_fetch_pod(kube, name, port) for name, port in pods], args)


def show_keys(args: argparse.Namespace) -> int:
    """With --router-url: those routers, no cluster connection."""
    return _show([_fetch_url(u) for u in args.router_url], args)


def _show(stats: list[dict[str, Any]], args: argparse.Namespace) -> int:
    rows = merge_clients(stats)
    if args.output == "json":
        print(json.dumps(rows, indent=2))
    else:
        print(format_keys(rows))
    return 0
