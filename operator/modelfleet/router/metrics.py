"""Prometheus metrics. Names and labels are a contract: canary analysis queries them."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from modelfleet.routing.stats import (
    BATCH_STRATA,
    LATENCY_BUCKETS,
    SERVICE_TIME_BUCKETS,
    batch_stratum,
)

PREFIX = "modelfleet_router_"


class RouterMetrics:
    """One registry per router instance, so tests can build several in one process.
    modelfleet_router_in_flight and _queue_depth {namespace, policy} are gauges read off
    the admission gates at scrape time (see server._GateCollector)."""

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
