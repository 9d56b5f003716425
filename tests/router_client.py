"""Talking to a router under test: one generation request, and its /metrics as numbers."""

from __future__ import annotations

import time
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from modelfleet_dev.routerproc import RouterProcess

Samples = dict[tuple[str, frozenset[Any]], float]


async def post(
    s: aiohttp.ClientSession, r: RouterProcess, body: Any, headers: dict[str, str] | None = None
) -> tuple[int, Any, Any, float]:
    """(status, headers, JSON body, seconds) of one POST /v1/images/generations; bytes
    are sent as they are (for malformed-body tests), anything else as JSON."""
    t0 = time.monotonic()
    kw: dict[str, Any] = {"data": body} if isinstance(body, bytes) else {"json": body}
    async with s.post(r.url + "/v1/images/generations", headers=headers, **kw) as resp:
        doc = await resp.json(content_type=None)
        return resp.status, resp.headers, doc, time.monotonic() - t0


async def metrics(s: aiohttp.ClientSession, r: RouterProcess) -> Samples:
    """Every sample of the router's /metrics, keyed by (name, labels)."""
    async with s.get(r.url + "/metrics") as resp:
        text = await resp.text()
    out: Samples = {}
    for fam in text_string_to_metric_families(text):
        for smp in fam.samples:
            out[(smp.name, frozenset(smp.labels.items()))] = smp.value
    return out


def metric(m: Samples, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in m.items() if n == name and want <= ls)
