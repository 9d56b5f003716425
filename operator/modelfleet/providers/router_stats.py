"""Metrics straight from the routers' /v1/stats endpoint (no Prometheus needed).

GET {router}/v1/stats?window=SECONDS[&offset=SECONDS] answers
    {"window_seconds": W, "offset_seconds": O,
     "pools": [{"namespace", "pool", "requests", "errors",
      "latency_buckets": [[upper_bound_seconds, cumulative_count], ..., ["+Inf", total]],
      "text": {"verified", "passed", "accuracy_sum"},   # only with verified renders
      "cost": {"usd", "images"},                        # only with cost or images
      "service_time": [{"batch_size": "1", "buckets": [[bound, cumulative], ...]}, ...]}]}

text-accuracy is accuracy_sum / verified and text-pass-rate passed / verified, both with
`verified` as their sample count (the minVerified gate); text-pass-rate's hits are the
passed renders, error-rate's the errors (the proportion test judges hits of samples).
service-time is the workers' own time per image by batch-size stratum: Measurement.strata
holds one histogram per stratum (the rank test compares only within a stratum), value
the median over all of them and samples their total. cost-per-image is cost.usd over
cost.images with the images as its sample count; a pool without images has no value.

A query with offset_seconds > 0 asks for the window ending that long ago; a router that
does not echo the offset (one that predates it) counts as not answering, so an old
router's current window is never mistaken for the past one.

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

from modelfleet.api.canary import COST_METRICS, TEXT_METRICS
from modelfleet.canary.ports import Measurement, MetricQuery
from modelfleet.canary.statistics import Histogram
from modelfleet.providers.http import OwnedSession
from modelfleet.providers.quantile import histogram_quantile
from modelfleet.providers.strata import order_strata, pooled

_QUANTILES = {"latency-p95": 0.95, "latency-p99": 0.99}
SERVICE_TIME = "service-time"


class StatsFormatError(ValueError):
    """A router answered with JSON that is not a stats document."""


# One pool's service_time in one answer: (stratum, [(bound, cumulative), ..., (inf, n)]).
ServiceStrata = list[tuple[str, list[tuple[float, float]]]]


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
    # Service time per image: stratum -> bound -> cumulative count, summed over routers.
    service: dict[str, dict[float, float]] = field(default_factory=dict)
    service_bounds: tuple[float, ...] | None = None
    service_conflict: bool = False
    service_error: str | None = None
    # USD the workers reported and the images of ok answers, summed over routers.
    cost_usd: float = 0.0
    images: int = 0

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

    def add_service(self, strata: ServiceStrata) -> None:
        """Add one router's strata: cumulative counts at equal bounds add up exactly. Every
        stratum of every router must have the same bounds, or the merge is refused."""
        for name, buckets in strata:
            bounds = tuple(b for b, _ in buckets)
            if self.service_bounds is None:
                self.service_bounds = bounds
            elif self.service_bounds != bounds:
                self.service_conflict = True
            merged = self.service.setdefault(name, {})
            for bound, count in buckets:
                merged[bound] = merged.get(bound, 0.0) + count


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


def parse_cost(doc: Any) -> dict[tuple[str, str], tuple[float, int]]:
    """One router's (usd, images) keyed by (namespace, pool); call after parse_stats.
    Pools without a "cost" object are left out."""
    out: dict[tuple[str, str], tuple[float, int]] = {}
    for entry in doc["pools"]:
        raw = entry.get("cost")
        if raw is None:
            continue
        if not isinstance(raw, dict):
            raise StatsFormatError("cost is not an object")
        usd = _count(raw.get("usd", 0), "cost.usd")
        images = _count(raw.get("images", 0), "cost.images")
        if images != int(images):
            raise StatsFormatError(f"cost.images {raw.get('images')!r} is not a whole number")
        key = (entry["namespace"], entry["pool"])
        prev = out.get(key, (0.0, 0))
        out[key] = (prev[0] + usd, prev[1] + int(images))
    return out


def _bound(raw: Any) -> float:
    if isinstance(raw, str):
        if raw.strip() in ("+Inf", "Inf", "inf", "+inf"):
            return math.inf
        try:
            return float(raw)
        except ValueError:
            raise StatsFormatError(f"bucket bound {raw!r} is not a number or '+Inf'") from None
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


def _service_strata(raw: Any) -> ServiceStrata:
    """A pool entry's "service_time" list; raises StatsFormatError naming the field."""
    if not isinstance(raw, list):
        raise StatsFormatError("service_time is not a list")
    out: ServiceStrata = []
    seen: set[str] = set()
    for i, item in enumerate(raw):
        where = f"service_time[{i}]"
        if not isinstance(item, dict):
            raise StatsFormatError(f"{where} is not an object with batch_size and buckets")
        name = item.get("batch_size")
        if not isinstance(name, str) or not name:
            raise StatsFormatError(f"{where}.batch_size {name!r} is not a non-empty string")
        if name in seen:
            raise StatsFormatError(f"{where}: batch_size {name!r} appears twice")
        seen.add(name)
        raw_buckets = item.get("buckets")
        if not isinstance(raw_buckets, list) or not raw_buckets:
            raise StatsFormatError(f"{where}.buckets is not a non-empty list")
        buckets: list[tuple[float, float]] = []
        for b in raw_buckets:
            if not isinstance(b, list | tuple) or len(b) != 2:
                raise StatsFormatError(
                    f"{where}.buckets: {b!r} is not [upper_bound, cumulative_count]"
                )
            bound, count = _bound(b[0]), _count(b[1], f"{where}.buckets count")
            if buckets and bound <= buckets[-1][0]:
                raise StatsFormatError(f"{where}.buckets: bounds must increase ({bound!r})")
            if buckets and count < buckets[-1][1]:
                raise StatsFormatError(
                    f"{where}.buckets: cumulative counts decrease at bound {bound!r}"
                )
            buckets.append((bound, count))
        if not math.isinf(buckets[-1][0]):
            raise StatsFormatError(f"{where}.buckets: the last bucket must be '+Inf'")
        out.append((name, buckets))
    return out


def parse_service(doc: Any) -> dict[tuple[str, str], ServiceStrata | str]:
    """One router's service-time strata keyed by (namespace, pool); call after parse_stats.
    A malformed service_time is kept as its error text, for that pool's service-time
    only: error-rate must not go blind because of it. Pools without it are left out."""
    out: dict[tuple[str, str], ServiceStrata | str] = {}
    for entry in doc["pools"]:
        raw = entry.get("service_time")
        if raw is None:
            continue
        key = (entry["namespace"], entry["pool"])
        try:
            strata: ServiceStrata | str = _service_strata(raw)
        except StatsFormatError as e:
            strata = f"pool {key[0]}/{key[1]}: {e}"
        prev = out.get(key)
        if prev is not None:  # the same pool twice in one answer: both count
            if isinstance(prev, str) or isinstance(strata, str):
                strata = prev if isinstance(prev, str) else strata
            else:
                strata = prev + strata
        out[key] = strata
    return out


def merge_stats(
    docs: Sequence[Any], sources: Sequence[str] | None = None
) -> dict[tuple[str, str], PoolStats]:
    """Exact merge of several routers' stats documents; `sources` name them in errors."""
    merged: dict[tuple[str, str], PoolStats] = {}
    for i, doc in enumerate(docs):
        for key, (requests, errors, buckets) in parse_stats(doc).items():
            merged.setdefault(key, PoolStats()).add(requests, errors, buckets)
        for key, text in parse_text(doc).items():
            merged.setdefault(key, PoolStats()).add_text(text)
        for key, (usd, images) in parse_cost(doc).items():
            stats = merged.setdefault(key, PoolStats())
            stats.cost_usd += usd
            stats.images += images
        for key, service in parse_service(doc).items():
            stats = merged.setdefault(key, PoolStats())
            if isinstance(service, str):
                source = f"{sources[i]}: " if sources is not None else ""
                stats.service_error = stats.service_error or (
                    f"bad service_time in /v1/stats: {source}{service}"
                )
            else:
                stats.add_service(service)
    return merged


def service_measurement(stats: PoolStats | None) -> Measurement:
    """service-time: one histogram per batch-size stratum, the median over all of them."""
    if stats is not None and stats.service_error is not None:
        return Measurement.failed(stats.service_error)
    if stats is None or not stats.service:
        return Measurement(value=None, samples=0, strata=())
    if stats.service_conflict:
        return Measurement.failed("routers disagree on service-time bucket bounds; cannot merge")
    try:
        strata = order_strata(
            (name, Histogram.from_cumulative(sorted(b.items())))
            for name, b in stats.service.items()
        )
        total = pooled([h for _, h in strata])
    except ValueError as e:
        return Measurement.failed(f"service_time: {e}")
    return Measurement(value=total.quantile(0.5), samples=round(total.total), strata=tuple(strata))


def measurement_for(stats: PoolStats | None, builtin: str) -> Measurement:
    """Turn merged counters into the number a built-in metric asks for."""
    if builtin == SERVICE_TIME:
        return service_measurement(stats)
    if builtin in COST_METRICS:
        if stats is None or stats.images == 0:
            # No images in the window: no cost per image (never a zero-cost pass).
            return Measurement(value=None, samples=0)
        return Measurement(value=stats.cost_usd / stats.images, samples=stats.images)
    if builtin in TEXT_METRICS:
        verified = stats.text_verified if stats is not None else 0
        passed_rate = builtin == "text-pass-rate"
        if verified == 0:
            # No verified renders (no text asked for, or none readable): no data.
            return Measurement(value=None, samples=0, hits=0.0 if passed_rate else None)
        assert stats is not None
        if passed_rate:
            return Measurement(
                value=stats.text_passed / verified, samples=verified, hits=stats.text_passed
            )
        return Measurement(value=stats.text_accuracy_sum / verified, samples=verified)
    if stats is None or stats.requests == 0:
        # The routers saw no traffic for the pool: no data, not a misconfiguration.
        return Measurement(value=None, samples=0, hits=0.0 if builtin == "error-rate" else None)
    if builtin == "error-rate":
        return Measurement(
            value=stats.errors / stats.requests, samples=stats.requests, hits=stats.errors
        )
    q = _QUANTILES.get(builtin)
    if q is None:
        return Measurement.failed(f"router provider: unknown builtin metric {builtin!r}")
    if stats.bounds_conflict:
        return Measurement.failed("routers disagree on latency bucket bounds; cannot merge")
    value = histogram_quantile(q, sorted(stats.buckets.items()))
    return Measurement(value=None if math.isnan(value) else value, samples=stats.requests)


class RouterStatsProvider(OwnedSession):
    """MetricsProvider over the routers' /v1/stats; built-in metrics only.

    One /v1/stats round per (window, offset) is shared by all queries made within
    `cache_seconds`, so one analysis costs one request per router and window, not one per
    metric.
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
        self._cache: dict[tuple[int, int], tuple[float, asyncio.Task[_Fetched]]] = {}

    async def _fetch_one(self, url: str, window: int, offset: int) -> Any:
        session = await self._get_session()
        params = {"window": str(window)}
        if offset:
            params["offset"] = str(offset)
        async with session.get(f"{url}/v1/stats", params=params, timeout=self.timeout) as resp:
            if resp.status != 200:
                text = (await resp.text())[:200]
                raise StatsFormatError(f"HTTP {resp.status}: {text}")
            doc = await resp.json(content_type=None)
        if offset and (not isinstance(doc, dict) or doc.get("offset_seconds") != offset):
            got = doc.get("offset_seconds") if isinstance(doc, dict) else None
            raise StatsFormatError(
                f"asked for offset {offset} s, answered offset_seconds {got!r} "
                "(a router without offset support answers the current window)"
            )
        return doc

    async def _fetch(self, window: int, offset: int) -> _Fetched:
        if not self.router_urls:
            return _Fetched({}, ["no router endpoints known"])
        answers = await asyncio.gather(
            *(self._fetch_one(u, window, offset) for u in self.router_urls),
            return_exceptions=True,
        )
        docs: list[Any] = []
        sources: list[str] = []
        errors: list[str] = []
        for url, answer in zip(self.router_urls, answers, strict=True):
            if isinstance(answer, BaseException):
                errors.append(f"{url}: {type(answer).__name__}: {answer}".rstrip(": "))
            else:
                docs.append(answer)
                sources.append(url)
        if not docs:
            return _Fetched({}, errors)
        try:
            return _Fetched(merge_stats(docs, sources), errors, answered=len(docs))
        except (StatsFormatError, ValueError, TypeError) as e:
            return _Fetched({}, [f"bad stats document: {e}"])

    async def _stats(self, window: int, offset: int) -> _Fetched:
        now = time.monotonic()
        key = (window, offset)
        cached = self._cache.get(key)
        if cached is not None and now - cached[0] <= self.cache_seconds:
            return await cached[1]
        task = asyncio.ensure_future(self._fetch(window, offset))
        self._cache = {k: v for k, v in self._cache.items() if now - v[0] <= self.cache_seconds}
        self._cache[key] = (now, task)
        return await task

    async def measure(self, query: MetricQuery) -> Measurement:
        builtin = query.metric.builtin
        if builtin is None:
            return Measurement.failed(
                f"metric {query.metric.name!r}: the router provider supports only builtin "
                "metrics (error-rate, latency-p95, latency-p99, service-time, text-accuracy, "
                "text-pass-rate, cost-per-image); use provider type prometheus for custom "
                "queries"
            )
        if query.offset_seconds < 0:
            return Measurement.failed(f"offset_seconds must be >= 0, not {query.offset_seconds}")
        fetched = await self._stats(query.window_seconds, query.offset_seconds)
        if fetched.answered == 0:
            return Measurement.failed("no router answered /v1/stats: " + "; ".join(fetched.errors))
        return measurement_for(fetched.pools.get((query.namespace, query.pool)), builtin)


@dataclass
class _Fetched:
    pools: dict[tuple[str, str], PoolStats]
    errors: list[str]
    answered: int = 0
