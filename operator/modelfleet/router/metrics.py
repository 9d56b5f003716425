"""Prometheus metrics. Names and labels are a contract: canary analysis queries them."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from modelfleet.router.admission import AdmissionGate
from modelfleet.router.config import Snapshot
from modelfleet.routing.stats import (
    BATCH_STRATA,
    LATENCY_BUCKETS,
    SERVICE_TIME_BUCKETS,
    batch_stratum,
)

PREFIX = "modelfleet_router_"
# Scale from zero: a pod start plus a model load, seconds to minutes.
COLD_START_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600)


class RouterMetrics:
    """One registry per router instance, so tests can build several in one process.
    modelfleet_router_in_flight and _queue_depth {namespace, policy} are gauges read off
    the admission gates at scrape time (LiveCollector below)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            PREFIX + "requests_total",
            "Client requests by final outcome; pool is the pool that served ('' if none).",
            ["namespace", "policy", "route", "pool", "outcome"],
            registry=r,
        )
        self.request_duration = Histogram(
            PREFIX + "request_duration_seconds",
            "Client-facing request duration, queueing and retries included.",
            ["namespace", "policy", "route", "pool"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_requests = Counter(
            PREFIX + "upstream_requests_total",
            "Upstream attempts by outcome (ok, client_error, upstream_error, timeout, "
            "connect_error, busy).",
            ["namespace", "pool", "outcome"],
            registry=r,
        )
        self.upstream_duration = Histogram(
            PREFIX + "upstream_duration_seconds",
            "Duration of each upstream attempt.",
            ["namespace", "pool"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.service_time = Histogram(
            PREFIX + "service_time_seconds",
            "Workers' own time per image of ok attempts (X-ModelFleet-Service-Time: batch "
            "inference time over batch size; no router, network or queue time), by the "
            "batch size it ran at (1, 2, 3, 4, 5-8, 9-16, 17-32, 33-64).",
            ["namespace", "pool", "batch_size"],
            buckets=SERVICE_TIME_BUCKETS,
            registry=r,
        )
        self.cost_usd = Counter(
            PREFIX + "cost_usd",
            "USD the workers reported for their answers (X-ModelFleet-Cost-USD), failed "
            "attempts included; over images_total: cost per image.",
            ["namespace", "pool"],
            registry=r,
        )
        self.images = Counter(
            PREFIX + "images",
            "Images in the workers' ok answers.",
            ["namespace", "pool"],
            registry=r,
        )
        self.fallbacks = Counter(
            PREFIX + "fallbacks_total",
            "Moves down the ladder from one pool to the next.",
            ["namespace", "route", "from_pool", "to_pool"],
            registry=r,
        )
        self.retries = Counter(
            PREFIX + "retries_total",
            "Retries on another endpoint of the same pool.",
            ["namespace", "pool"],
            registry=r,
        )
        self.shadow_requests = Counter(
            PREFIX + "shadow_requests_total",
            "Shadow (mirrored) requests by outcome; 'dropped' when the shadow budget was full, "
            "'no_endpoints' when the shadow pool had none.",
            ["namespace", "pool", "outcome"],
            registry=r,
        )
        # The text gate (routes with verify; docs/router.md#text-gate). pool: the pool
        # that rendered the image in question.
        text = ["namespace", "policy", "route", "pool"]
        self.text_verified = Counter(
            PREFIX + "text_verified_total",
            "Renders on verify routes whose text the worker read and scored (passed + failed).",
            text,
            registry=r,
        )
        self.text_failed = Counter(
            PREFIX + "text_failed_total",
            "Scored renders below the route's minWordAccuracy.",
            text,
            registry=r,
        )
        self.text_rerendered = Counter(
            PREFIX + "text_rerendered_total",
            "Images sent to be rendered again after failing; pool: where the failed render "
            "came from, to_pool: where the re-render went.",
            [*text, "to_pool"],
            registry=r,
        )
        self.text_rescued = Counter(
            PREFIX + "text_rescued_total",
            "Images that failed and were answered with a passing re-render; pool: the pool "
            "that rendered the passing one.",
            text,
            registry=r,
        )
        self.text_exhausted = Counter(
            PREFIX + "text_exhausted_total",
            "Images still failing when the gate stopped (returned marked passed: false, or "
            "refused with 422 when onExhausted is error).",
            text,
            registry=r,
        )
        self.pinned_requests = Counter(
            PREFIX + "pinned_requests_total",
            "The operator's pool-pinned requests (pre-flight replay) by outcome ('refused': "
            "no valid operator credential); they are not in the upstream series or "
            "/v1/stats, which judge canaries.",
            ["namespace", "pool", "outcome"],
            registry=r,
        )
        # Scale from zero (router.holds; docs/router.md#scale-from-zero).
        self.held = Gauge(
            PREFIX + "held_requests",
            "Requests held now for a pool at zero replicas, waiting for its first worker.",
            ["namespace", "pool"],
            registry=r,
        )
        self.held_requests = Counter(
            PREFIX + "holds_total",
            "Ends of holds for pools at zero: served (a worker came), expired (none came "
            "in time), hold_limit (not held: too many held), no_time, cancelled (client left).",
            ["namespace", "pool", "outcome"],
            registry=r,
        )
        self.hold_seconds = Histogram(
            PREFIX + "hold_seconds",
            "How long served held requests waited for their pool's first worker.",
            ["namespace", "pool"],
            buckets=COLD_START_BUCKETS,
            registry=r,
        )
        self.cold_start_seconds = Histogram(
            PREFIX + "cold_start_seconds",
            "A pool's cold start as the router sees it: its first held request to its "
            "first ready endpoint.",
            ["namespace", "pool"],
            buckets=COLD_START_BUCKETS,
            registry=r,
        )
        # labels() takes a lock and builds a key per call: a visible share of a
        # proxied request's CPU. Children are looked up once per label set.
        self._children: dict[tuple[Any, ...], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def finished(
        self, ns: str, policy: str, route: str, pool: str, outcome: str, seconds: float
    ) -> None:
        self._child(self.requests, ns, policy, route, pool, outcome).inc()
        self._child(self.request_duration, ns, policy, route, pool).observe(seconds)

    def attempted(
        self,
        ns: str,
        pool: str,
        outcome: str,
        seconds: float,
        service_s: float | None = None,
        batch_size: int = 1,
    ) -> None:
        self._child(self.upstream_requests, ns, pool, outcome).inc()
        self._child(self.upstream_duration, ns, pool).observe(seconds)
        if service_s is not None:
            stratum = BATCH_STRATA[batch_stratum(batch_size)][1]
            self._child(self.service_time, ns, pool, stratum).observe(service_s)

    def cost(self, ns: str, pool: str, cost_usd: float | None, images: int) -> None:
        if cost_usd:
            self._child(self.cost_usd, ns, pool).inc(cost_usd)
        if images:
            self._child(self.images, ns, pool).inc(images)

    def pinned(self, ns: str, pool: str, outcome: str) -> None:
        # pool comes from a header on refused requests: bounded, so a client cannot grow
        # the label set without limit.
        self._child(
            self.pinned_requests, ns, pool[:63] if outcome != "refused" else "", outcome
        ).inc()

    def text(self, metric: Any, *labels: str, n: int = 1) -> None:
        """Count `n` on a text-gate counter (labels: namespace, policy, route, pool[, to_pool])."""
        if n:
            self._child(metric, *labels).inc(n)


class LiveCollector(Collector):
    """Gauges read at scrape time, so nothing is counted on the hot path: in_flight and
    queue_depth off the admission gates, endpoints off the current snapshot (the router's
    own view of each pool, which can lag the EndpointSlices by a watch event)."""

    def __init__(
        self,
        gates: Callable[[], Iterable[tuple[str, str, AdmissionGate]]],
        snapshot: Callable[[], Snapshot | None],
    ) -> None:
        self._gates = gates
        self._snapshot = snapshot

    def collect(self) -> Iterable[Metric]:
        in_flight = GaugeMetricFamily(
            "modelfleet_router_in_flight",
            "Requests holding an admission slot.",
            labels=["namespace", "policy"],
        )
        depth = GaugeMetricFamily(
            "modelfleet_router_queue_depth",
            "Requests waiting for an admission slot.",
            labels=["namespace", "policy"],
        )
        for ns, name, gate in self._gates():
            in_flight.add_metric([ns, name], gate.in_flight)
            depth.add_metric([ns, name], gate.queued)
        endpoints = GaugeMetricFamily(
            "modelfleet_router_endpoints",
            "Ready workers the router currently sends each pool's requests to.",
            labels=["namespace", "pool"],
        )
        snap = self._snapshot()
        for (ns, pool), urls in sorted((snap.endpoints if snap else {}).items()):
            endpoints.add_metric([ns, pool], len(urls))
        yield in_flight
        yield depth
        yield endpoints
