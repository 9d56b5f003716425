"""Metrics from a Prometheus server (HTTP API, instant queries) over the router's metrics.

MetricQuery.offset_seconds: the built-in queries put PromQL's `offset` modifier on every
range selector (relative to Prometheus' own clock, so no clock skew); a custom query,
whose text the provider cannot safely rewrite, is evaluated at `time=now - offset`.
service-time is one histogram per batch-size stratum, from
`sum by (batch_size, le) (increase(modelfleet_router_service_time_seconds_bucket[W]))`.
cost-per-image is `increase(modelfleet_router_cost_usd_total[W])` over
`increase(modelfleet_router_images_total[W])`, the images being its samples.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from modelfleet.api.canary import COST_METRICS, TEXT_METRICS
from modelfleet.canary.ports import Measurement, MetricQuery
from modelfleet.canary.statistics import Histogram
from modelfleet.providers.http import OwnedSession
from modelfleet.providers.strata import order_strata, pooled
from modelfleet.providers.template import TemplateError, duration_text, render_query

REQUESTS_METRIC = "modelfleet_router_upstream_requests_total"
DURATION_BUCKET_METRIC = "modelfleet_router_upstream_duration_seconds_bucket"
# Labels namespace, pool, batch_size (a stratum name: 1, 2, 3, 4, 5-8, ...), le.
SERVICE_TIME_BUCKET_METRIC = "modelfleet_router_service_time_seconds_bucket"
SERVICE_TIME = "service-time"
# Outcomes that say nothing about the pool's health: the router shed load (busy) or the
# client sent a bad request. They count neither as errors nor as samples.
ERROR_OUTCOMES = "upstream_error|timeout|connect_error"
IGNORED_OUTCOMES = "busy|client_error"
_QUANTILES = {"latency-p95": "0.95", "latency-p99": "0.99"}
# Text metrics come from the workers' own series (labelled by pool; namespace is the scrape
# target's): they count every verified render, on gated routes or not, which the
# router's modelfleet_router_text_* series (gated routes only) do not.
TEXT_ACCURACY_METRIC = "modelfleet_worker_text_word_accuracy"
TEXT_VERIFIED_METRIC = "modelfleet_worker_text_verified_total"
TEXT_FAILED_METRIC = "modelfleet_worker_text_failed_total"
# The router's count of what the workers said the answers cost, and of their images.
COST_METRIC = "modelfleet_router_cost_usd_total"
IMAGES_METRIC = "modelfleet_router_images_total"


def _label(value: str) -> str:
    """A PromQL double-quoted string literal."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _selector(namespace: str, pool: str) -> str:
    return f"namespace={_label(namespace)},pool={_label(pool)}"


def _range(window_seconds: int, offset_seconds: int = 0) -> str:
    """A range selector's brackets, with the offset modifier when looking back."""
    w = f"[{duration_text(window_seconds)}]"
    return f"{w} offset {offset_seconds}s" if offset_seconds > 0 else w


def builtin_query(
    builtin: str, namespace: str, pool: str, window_seconds: int, offset_seconds: int = 0
) -> str:
    """PromQL for a built-in metric of one pool over the window ending offset_seconds ago."""
    sel = _selector(namespace, pool)
    r = _range(window_seconds, offset_seconds)
    if builtin == "error-rate":
        # A healthy pool has no error series at all: count that as 0 errors, while a
        # pool with no request series still yields no series (misconfigured or idle).
        return (
            f'(sum(rate({REQUESTS_METRIC}{{{sel},outcome=~"{ERROR_OUTCOMES}"}}{r})) or vector(0)) / '
            f'sum(rate({REQUESTS_METRIC}{{{sel},outcome!~"{IGNORED_OUTCOMES}"}}{r}))'
        )
    if builtin == "text-accuracy":
        return (
            f"sum(rate({TEXT_ACCURACY_METRIC}_sum{{{sel}}}{r})) / "
            f"sum(rate({TEXT_ACCURACY_METRIC}_count{{{sel}}}{r}))"
        )
    if builtin == "text-pass-rate":
        return (
            f"1 - (sum(rate({TEXT_FAILED_METRIC}{{{sel}}}{r})) or vector(0)) / "
            f"sum(rate({TEXT_VERIFIED_METRIC}{{{sel}}}{r}))"
        )
    if builtin in COST_METRICS:
        # A pool that reported no cost has no cost series: count it as 0 USD over its
        # images; with no images the division is empty or NaN: no data.
        return (
            f"(sum(increase({COST_METRIC}{{{sel}}}{r})) or vector(0)) / "
            f"sum(increase({IMAGES_METRIC}{{{sel}}}{r}))"
        )
    if builtin == SERVICE_TIME:
        return f"sum by (batch_size, le) (increase({SERVICE_TIME_BUCKET_METRIC}{{{sel}}}{r}))"
    q = _QUANTILES.get(builtin)
    if q is None:
        raise ValueError(f"unknown builtin metric {builtin!r}")
    return f"histogram_quantile({q}, sum by (le) (rate({DURATION_BUCKET_METRIC}{{{sel}}}{r})))"


def samples_query(
    namespace: str, pool: str, window_seconds: int, builtin: str = "", offset_seconds: int = 0
) -> str:
    """Requests the pool served in the window (the minRequests gate), or for the text
    metrics its verified renders (the minVerified gate). The same series as the value's
    denominator over the same range, so value x samples is the hits' count."""
    sel = _selector(namespace, pool)
    r = _range(window_seconds, offset_seconds)
    if builtin in TEXT_METRICS:
        return f"sum(increase({TEXT_VERIFIED_METRIC}{{{sel}}}{r}))"
    if builtin in COST_METRICS:
        return f"sum(increase({IMAGES_METRIC}{{{sel}}}{r}))"
    return f'sum(increase({REQUESTS_METRIC}{{{sel},outcome!~"{IGNORED_OUTCOMES}"}}{r}))'


def query_for(query: MetricQuery) -> str:
    """The PromQL for a MetricQuery; raises TemplateError for a bad custom template."""
    m = query.metric
    if m.builtin is not None:
        return builtin_query(
            m.builtin, query.namespace, query.pool, query.window_seconds, query.offset_seconds
        )
    assert m.query is not None  # the API model guarantees builtin xor query
    return render_query(
        m.query,
        {
            "namespace": query.namespace,
            "pool": query.pool,
            "stablePool": query.stable_pool,
            "candidatePool": query.candidate_pool,
            "interval": duration_text(query.window_seconds),
        },
    )


class PrometheusError(Exception):
    """Prometheus could not answer (unreachable, timeout, 5xx, bad query)."""


@dataclass(frozen=True)
class Sample:
    labels: dict[str, str]
    value: float


class PrometheusProvider(OwnedSession):
    """MetricsProvider over Prometheus' /api/v1/query."""

    def __init__(
        self,
        address: str,
        *,
        timeout_seconds: float = 5.0,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        super().__init__(session, timeout_seconds)
        self.address = address.rstrip("/")

    async def query(self, promql: str, at: float | None = None) -> list[Sample]:
        """Run an instant query (at Unix time `at`, default Prometheus' now); a scalar
        result comes back as one unlabelled sample."""
        session = await self._get_session()
        url = f"{self.address}/api/v1/query"
        params = {"query": promql}
        if at is not None:
            params["time"] = f"{at:.3f}"
        try:
            async with session.get(url, params=params, timeout=self.timeout) as resp:
                try:
                    body: Any = await resp.json(content_type=None)
                except (ValueError, aiohttp.ContentTypeError):
                    body = None
                if resp.status >= 500 or not isinstance(body, dict):
                    raise PrometheusError(f"{url}: HTTP {resp.status}")
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            raise PrometheusError(f"{url}: {type(e).__name__}: {e}".rstrip(": ")) from e
        if body.get("status") != "success":
            raise PrometheusError(
                f"query failed ({body.get('errorType', f'HTTP {resp.status}')}): "
                f"{body.get('error', '')}; query: {promql}"
            )
        return _parse_result(body.get("data"))

    async def _run(self, promql: str, at: float | None = None) -> list[Sample] | str:
        try:
            return await self.query(promql, at)
        except PrometheusError as e:
            return str(e)

    async def measure(self, query: MetricQuery) -> Measurement:
        offset = query.offset_seconds
        if offset < 0:
            return Measurement.failed(f"offset_seconds must be >= 0, not {offset}")
        try:
            promql = query_for(query)
        except (TemplateError, ValueError) as e:
            return Measurement.failed(f"metric {query.metric.name!r}: {e}")
        builtin = query.metric.builtin
        # Built-ins carry the offset in their PromQL; a custom query is evaluated earlier.
        at = time.time() - offset if builtin is None and offset > 0 else None
        if builtin == SERVICE_TIME:
            result = await self._run(promql)
            if isinstance(result, str):
                return Measurement.failed(result)
            return service_measurement(result)
        value_r, samples_r = await asyncio.gather(
            self._run(promql, at),
            self._run(
                samples_query(
                    query.namespace, query.pool, query.window_seconds, builtin or "", offset
                ),
                at,
            ),
        )
        if isinstance(value_r, str):
            return Measurement.failed(value_r)
        if isinstance(samples_r, str):
            return Measurement.failed(f"samples query: {samples_r}")
        total = _total(samples_r)
        samples = max(0, round(total))
        if not value_r:
            return Measurement(value=None, samples=samples, no_series=True)
        if len(value_r) > 1:
            return Measurement.failed(
                f"metric {query.metric.name!r}: query returned {len(value_r)} series, "
                "expected one (aggregate it, e.g. with sum() or max())"
            )
        value = value_r[0].value
        if math.isnan(value):
            # 0/0: no requests in the window. No data, never a pass or a fail.
            return Measurement(value=None, samples=0, hits=_hits(builtin, 0.0, 0.0, 0))
        return Measurement(value=value, samples=samples, hits=_hits(builtin, value, total, samples))


def _hits(builtin: str | None, value: float, total: float, samples: int) -> float | None:
    """error-rate's errors and text-pass-rate's passed renders. The value is a ratio over
    the very series the samples query sums (rate and increase differ by the same factor
    of the range), so value x increase is the counted events' increase. Kept within
    0..samples, the rounded count the proportion test gets beside it."""
    if builtin not in ("error-rate", "text-pass-rate") or not math.isfinite(value):
        return None
    return min(float(samples), max(0.0, value * total))


def service_measurement(result: list[Sample]) -> Measurement:
    """The service-time query's series (one per batch_size and le) as strata."""
    if not result:
        # No service-time series for the pool: it never served an ok request that
        # reported service time (or the selector matches nothing).
        return Measurement(value=None, samples=0, strata=(), no_series=True)
    buckets: dict[str, list[tuple[float, float]]] = {}
    for s in result:
        name, le = s.labels.get("batch_size"), s.labels.get("le")
        if not name or le is None:
            return Measurement.failed(
                f"service-time: series {s.labels} lacks the batch_size or le label "
                f"({SERVICE_TIME_BUCKET_METRIC} must be labelled namespace, pool, batch_size)"
            )
        try:
            bound = float(le)
        except ValueError:
            return Measurement.failed(f"service-time: le {le!r} is not a number")
        if not math.isfinite(s.value):
            # increase() over a series without two samples in the window: no data there.
            continue
        buckets.setdefault(name, []).append((bound, s.value))
    histograms: list[tuple[str, Histogram]] = []
    for name, b in buckets.items():
        try:
            h = Histogram.from_cumulative(b)
        except ValueError as e:
            return Measurement.failed(f"service-time: batch_size {name!r}: {e}")
        if h.total > 0:  # like the routers: only strata with observations
            histograms.append((name, h))
    strata = order_strata(histograms)
    try:
        total = pooled([h for _, h in strata])
    except ValueError as e:
        return Measurement.failed(f"service-time: {e}")
    if total.total <= 0:
        return Measurement(value=None, samples=0, strata=())
    return Measurement(value=total.quantile(0.5), samples=round(total.total), strata=tuple(strata))


def _total(result: list[Sample]) -> float:
    return math.fsum(s.value for s in result if math.isfinite(s.value))


def _parse_result(data: Any) -> list[Sample]:
    if not isinstance(data, dict):
        raise PrometheusError("response has no data object")
    kind = data.get("resultType")
    result = data.get("result")
    if kind == "scalar" and isinstance(result, list) and len(result) == 2:
        return [Sample({}, float(result[1]))]
    if kind != "vector" or not isinstance(result, list):
        raise PrometheusError(f"expected an instant vector or scalar, got {kind!r}")
    out: list[Sample] = []
    for item in result:
        labels = item.get("metric", {}) if isinstance(item, dict) else {}
        value = item.get("value") if isinstance(item, dict) else None
        if not isinstance(value, list) or len(value) != 2:
            raise PrometheusError(f"malformed sample {item!r}")
        # Prometheus encodes NaN and +Inf as strings that float() accepts.
        out.append(Sample({str(k): str(v) for k, v in labels.items()}, float(value[1])))
    return out
