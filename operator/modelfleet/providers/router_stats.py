"""Metrics straight from the routers' /v1/stats endpoint (no Prometheus needed).

GET {router}/v1/stats?window=SECONDS answers
    {"window_seconds": W, "pools": [{"namespace", "pool", "requests", "errors",
      "latency_buckets": [[upper_bound_seconds, cumulative_count], ..., ["+Inf", total]],
      "text": {"verified", "passed", "accuracy_sum"}}]}   # text: only with verified renders

text-accuracy is accuracy_sum / verified and text-pass-rate passed / verified, both with
`verified` as their sample count (the minVerified gate).

Each router only sees its own share of traffic, so the answers of all routers are merged
exactly: requests, errors and bucket counts are summed. Availability rule: the
measurement is an error (inconclusive) only when *no* router answered; when some did,
their merged numbers are used (a router that is down serves no traffic to miss, and one
that is unreachable from the operator but serving is a small sample loss, not a reason
to stall the rollout). Routers that disagree on bucket bounds make latency an error.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from modelfleet.api.canary import TEXT_METRICS
from modelfleet.canary.ports import Measurement, MetricQuery
from modelfleet.providers.http import OwnedSession
from modelfleet.providers.quantile import histogram_quantile

_QUANTILES = {"latency-p95": 0.95, "latency-p99": 0.99}


class StatsFormatError(ValueError):
    """A router answered with JSON that is not a stats document."""


@dataclass
class PoolStats:
    """Merged counters for one pool over one window."""

    requests: int = 0
    errors: int = 0
    buckets: dict[float, float] = field(default_factory=dict)
    bucket_bounds: tuple[float, ...] | None = None
    bounds_conflict: bool = False
    text_verified: int = 0
    text_passed: int = 0
    text_accuracy_sum: float = 0.0

    def add(self, requests: int, errors: int, buckets: Sequence[tuple[float, float]]) -> None:
        self.requests += requests
        self.errors += errors
        bounds = tuple(sorted(b for b, _ in buckets))
        if buckets:
            if self.bucket_bounds is None:
                self.bucket_bounds = bounds
            elif self.bucket_bounds != bounds:
                self.bounds_conflict = True
        for bound, count in buckets:
            self.buckets[bound] = self.buckets.get(bound, 0.0) + count

    def add_text(self, text: tuple[int, int, float]) -> None:
        self.text_verified += text[0]
        self.text_passed += text[1]
        self.text_accuracy_sum += text[2]


def _text(raw: Any) -> tuple[int, int, float]:
    """A pool entry's "text" object as (verified, passed, accuracy_sum); absent is zeros."""
    if raw is None:
        return (0, 0, 0.0)
    if not isinstance(raw, dict):
        raise StatsFormatError("text is not an object")
    verified = int(_count(raw.get("verified", 0), "text.verified"))
    passed = int(_count(raw.get("passed", 0), "text.passed"))
    acc = _count(raw.get("accuracy_sum", 0), "text.accuracy_sum")
    if passed > verified or acc > verified:
        raise StatsFormatError(f"text {raw!r}: passed and accuracy_sum must be <= verified")
    return (verified, passed, acc)


def _bound(raw: Any) -> float:
    if isinstance(raw, str):
        if raw.strip() in ("+Inf", "Inf", "inf", "+inf"):
            return math.inf
        return float(raw)
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        return float(raw)
    raise StatsFormatError(f"bucket bound {raw!r} is not a number or '+Inf'")


def _count(raw: Any, what: str) -> float:
    if isinstance(raw, int | float) and not isinstance(raw, bool) and raw >= 0:
        return float(raw)
    raise StatsFormatError(f"{what} {raw!r} is not a non-negative number")


def parse_stats(doc: Any) -> dict[tuple[str, str], tuple[int, int, list[tuple[float, float]]]]:
    """One router's stats keyed by (namespace, pool): (requests, errors, buckets)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("pools"), list):
        raise StatsFormatError("stats document has no 'pools' list")
    out: dict[tuple[str, str], tuple[int, int, list[tuple[float, float]]]] = {}
    for entry in doc["pools"]:
        if not isinstance(entry, dict):
            raise StatsFormatError("pool entry is not an object")
        ns, pool = entry.get("namespace"), entry.get("pool")
        if not isinstance(ns, str) or not isinstance(pool, str):
            raise StatsFormatError("pool entry lacks namespace/pool strings")
        requests = int(_count(entry.get("requests", 0), "requests"))
        errors = int(_count(entry.get("errors", 0), "errors"))
        raw_buckets = entry.get("latency_buckets") or []
        if not isinstance(raw_buckets, list):
            raise StatsFormatError("latency_buckets is not a list")
        buckets: list[tuple[float, float]] = []
        for b in raw_buckets:
            if not isinstance(b, list | tuple) or len(b) != 2:
                raise StatsFormatError(f"bucket {b!r} is not [upper_bound, cumulative_count]")
            buckets.append((_bound(b[0]), _count(b[1], "bucket count")))
        prev = out.get((ns, pool))
        if prev is not None:  # the same pool twice in one answer: add it up too
            requests += prev[0]
            errors += prev[1]
            merged: dict[float, float] = dict(prev[2])
            for bound, c in buckets:
                merged[bound] = merged.get(bound, 0.0) + c
            buckets = sorted(merged.items())
        out[(ns, pool)] = (requests, errors, buckets)
    return out


def parse_text(doc: Any) -> dict[tuple[str, str], tuple[int, int, float]]:
    """One router's verified-render counts keyed by (namespace, pool); call after
    parse_stats (which checks the document's shape). Pools without text are left out."""
    out: dict[tuple[str, str], tuple[int, int, float]] = {}
    for entry in doc["pools"]:
        t = _text(entry.get("text"))
        if t[0]:
            key = (entry["namespace"], entry["pool"])
            prev = out.get(key, (0, 0, 0.0))
            out[key] = (prev[0] + t[0], prev[1] + t[1], prev[2] + t[2])
    return out


def merge_stats(docs: Sequence[Any]) -> dict[tuple[str, str], PoolStats]:
    """Exact merge of several routers' stats documents."""
    merged: dict[tuple[str, str], PoolStats] = {}
    for doc in docs:
        for key, (requests, errors, buckets) in parse_stats(doc).items():
            merged.setdefault(key, PoolStats()).add(requests, errors, buckets)
        for key, text in parse_text(doc).items():
            merged.setdefault(key, PoolStats()).add_text(text)
    return merged


def measurement_for(stats: PoolStats | None, builtin: str) -> Measurement:
    """Turn merged counters into the number a built-in metric asks for."""
    if builtin in TEXT_METRICS:
        verified = stats.text_verified if stats is not None else 0
        if verified == 0:
            # No verified renders (no text asked for, or none readable): no data.
            return Measurement(value=None, samples=0)
        assert stats is not None
        top = stats.text_accuracy_sum if builtin == "text-accuracy" else stats.text_passed
        return Measurement(value=top / verified, samples=verified)
    if stats is None or stats.requests == 0:
        # The routers saw no traffic for the pool: no data, not a misconfiguration.
        return Measurement(value=None, samples=0)
    if builtin == "error-rate":
        return Measurement(value=stats.errors / stats.requests, samples=stats.requests)
    q = _QUANTILES.get(builtin)
    if q is None:
        return Measurement.failed(f"router provider: unknown builtin metric {builtin!r}")
    if stats.bounds_conflict:
        return Measurement.failed("routers disagree on latency bucket bounds; cannot merge")
    value = histogram_quantile(q, sorted(stats.buckets.items()))
    return Measurement(value=None if math.isnan(value) else value, samples=stats.requests)


class RouterStatsProvider(OwnedSession):
    """MetricsProvider over the routers' /v1/stats; built-in metrics only.

    One /v1/stats round per window length is shared by all queries made within
    `cache_seconds`, so one analysis costs one request per router, not one per metric.
    """

    def __init__(
        self,
        router_urls: Sequence[str],
        *,
        timeout_seconds: float = 3.0,
        cache_seconds: float = 1.0,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        super().__init__(session, timeout_seconds)
        self.router_urls = [u.rstrip("/") for u in router_urls]
        self.cache_seconds = cache_seconds
        self._cache: dict[int, tuple[float, asyncio.Task[_Fetched]]] = {}

    async def _fetch_one(self, url: str, window: int) -> Any:
        session = await self._get_session()
        async with session.get(
            f"{url}/v1/stats", params={"window": str(window)}, timeout=self.timeout
        ) as resp:
            if resp.status != 200:
                text = (await resp.text())[:200]
                raise StatsFormatError(f"HTTP {resp.status}: {text}")
            return await resp.json(content_type=None)

    async def _fetch(self, window: int) -> _Fetched:
        if not self.router_urls:
            return _Fetched({}, ["no router endpoints known"])
        answers = await asyncio.gather(
            *(self._fetch_one(u, window) for u in self.router_urls), return_exceptions=True
        )
        docs: list[Any] = []
        errors: list[str] = []
        for url, answer in zip(self.router_urls, answers, strict=True):
            if isinstance(answer, BaseException):
                errors.append(f"{url}: {type(answer).__name__}: {answer}".rstrip(": "))
            else:
                docs.append(answer)
        if not docs:
            return _Fetched({}, errors)
        try:
            return _Fetched(merge_stats(docs), errors, answered=len(docs))
        except (StatsFormatError, ValueError, TypeError) as e:
            return _Fetched({}, [f"bad stats document: {e}"])

    async def _stats(self, window: int) -> _Fetched:
        now = time.monotonic()
        cached = self._cache.get(window)
        if cached is not None and now - cached[0] <= self.cache_seconds:
            return await cached[1]
        task = asyncio.ensure_future(self._fetch(window))
        self._cache = {w: v for w, v in self._cache.items() if now - v[0] <= self.cache_seconds}
        self._cache[window] = (now, task)
        return await task

    async def measure(self, query: MetricQuery) -> Measurement:
        builtin = query.metric.builtin
        if builtin is None:
            return Measurement.failed(
                f"metric {query.metric.name!r}: the router provider supports only builtin "
                "metrics (error-rate, latency-p95, latency-p99, text-accuracy, text-pass-rate); "
                "use provider type prometheus "
                "for custom queries"
            )
        fetched = await self._stats(query.window_seconds)
        if fetched.answered == 0:
            return Measurement.failed("no router answered /v1/stats: " + "; ".join(fetched.errors))
        return measurement_for(fetched.pools.get((query.namespace, query.pool)), builtin)


@dataclass
class _Fetched:
    pools: dict[tuple[str, str], PoolStats]
    errors: list[str]
    answered: int = 0
