"""Metrics from a Prometheus server (HTTP API, instant queries) over the router's metrics."""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import Any

import aiohttp

from modelfleet.api.canary import TEXT_METRICS
from modelfleet.canary.ports import Measurement, MetricQuery
from modelfleet.providers.http import OwnedSession
from modelfleet.providers.template import TemplateError, duration_text, render_query

REQUESTS_METRIC = "modelfleet_router_upstream_requests_total"
DURATION_BUCKET_METRIC = "modelfleet_router_upstream_duration_seconds_bucket"
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


def _label(value: str) -> str:
    """A PromQL double-quoted string literal."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _selector(namespace: str, pool: str) -> str:
    return f"namespace={_label(namespace)},pool={_label(pool)}"


def builtin_query(builtin: str, namespace: str, pool: str, window_seconds: int) -> str:
    """PromQL for a built-in metric of one pool over the last window."""
    sel = _selector(namespace, pool)
    w = duration_text(window_seconds)
    if builtin == "error-rate":
        # A healthy pool has no error series at all: count that as 0 errors, while a
        # pool with no request series still yields no series (misconfigured or idle).
        return (
            f'(sum(rate({REQUESTS_METRIC}{{{sel},outcome=~"{ERROR_OUTCOMES}"}}[{w}])) or vector(0)) / '
            f'sum(rate({REQUESTS_METRIC}{{{sel},outcome!~"{IGNORED_OUTCOMES}"}}[{w}]))'
        )
    if builtin == "text-accuracy":
        return (
            f"sum(rate({TEXT_ACCURACY_METRIC}_sum{{{sel}}}[{w}])) / "
            f"sum(rate({TEXT_ACCURACY_METRIC}_count{{{sel}}}[{w}]))"
        )
    if builtin == "text-pass-rate":
        return (
            f"1 - (sum(rate({TEXT_FAILED_METRIC}{{{sel}}}[{w}])) or vector(0)) / "
            f"sum(rate({TEXT_VERIFIED_METRIC}{{{sel}}}[{w}]))"
        )
    q = _QUANTILES.get(builtin)
    if q is None:
        raise ValueError(f"unknown builtin metric {builtin!r}")
    return f"histogram_quantile({q}, sum by (le) (rate({DURATION_BUCKET_METRIC}{{{sel}}}[{w}])))"


def samples_query(namespace: str, pool: str, window_seconds: int, builtin: str = "") -> str:
    """Requests the pool served in the window (the minRequests gate), or for the text
    metrics its verified renders (the minVerified gate)."""
    sel = _selector(namespace, pool)
    w = duration_text(window_seconds)
    if builtin in TEXT_METRICS:
        return f"sum(increase({TEXT_VERIFIED_METRIC}{{{sel}}}[{w}]))"
    return f'sum(increase({REQUESTS_METRIC}{{{sel},outcome!~"{IGNORED_OUTCOMES}"}}[{w}]))'


def query_for(query: MetricQuery) -> str:
    """The PromQL for a MetricQuery; raises TemplateError for a bad custom template."""
    m = query.metric
    if m.builtin is not None:
        return builtin_query(m.builtin, query.namespace, query.pool, query.window_seconds)
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

    async def query(self, promql: str) -> list[Sample]:
        """Run an instant query; a scalar result comes back as one unlabelled sample."""
        session = await self._get_session()
        url = f"{self.address}/api/v1/query"
        try:
            async with session.get(url, params={"query": promql}, timeout=self.timeout) as resp:
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

    async def _run(self, promql: str) -> list[Sample] | str:
        try:
            return await self.query(promql)
        except PrometheusError as e:
            return str(e)

    async def measure(self, query: MetricQuery) -> Measurement:
        try:
            promql = query_for(query)
        except (TemplateError, ValueError) as e:
            return Measurement.failed(f"metric {query.metric.name!r}: {e}")
        value_r, samples_r = await asyncio.gather(
            self._run(promql),
            self._run(
                samples_query(
                    query.namespace, query.pool, query.window_seconds, query.metric.builtin or ""
                )
            ),
        )
        if isinstance(value_r, str):
            return Measurement.failed(value_r)
        if isinstance(samples_r, str):
            return Measurement.failed(f"samples query: {samples_r}")
        samples = _samples(samples_r)
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
            return Measurement(value=None, samples=0)
        return Measurement(value=value, samples=samples)


def _samples(result: list[Sample]) -> int:
    total = sum(s.value for s in result if math.isfinite(s.value))
    return max(0, round(total))


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
