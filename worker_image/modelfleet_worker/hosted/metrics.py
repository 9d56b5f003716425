"""Adapter metrics: the diffusers worker's names where they mean the same thing
(requests by outcome, request duration, images generated, ready), plus the provider's
side: calls by outcome, refusals apart, rate-limit waits, quota, and cost."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .. import __version__
from ..metrics import ENDPOINTS

P = "modelfleet_worker_"
OUTCOMES = (
    "ok",
    "invalid",
    "too_large",
    "unavailable",
    "refused",
    "rate_limited",
    "quota_exhausted",
    "queue_full",
    "provider_error",
    "error",
)
PROVIDER_OUTCOMES = ("ok", "refused", "rate_limited", "quota_exhausted", "error", "timeout")


class HostedMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, pool: str, backend: str, model: str) -> None:
        r = self.registry = CollectorRegistry()
        Info(P.rstrip("_"), "Worker identity", registry=r).info(
            {
                "pool": pool,
                "model": model,
                "family": "hosted",
                "backend": backend,
                "version": __version__,
            }
        )
        # The diffusers worker's labels (endpoint: generations | edits | other).
        self.requests = Counter(
            P + "requests", "Requests by endpoint and outcome", ["endpoint", "outcome"], registry=r
        )
        self.request_duration = Histogram(
            P + "request_duration_seconds",
            "Request latency by endpoint, admission to response",
            ["endpoint"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128),
            registry=r,
        )
        self.images = Counter(
            P + "images_generated", "Images made, by endpoint", ["endpoint"], registry=r
        )
        for e in ENDPOINTS:  # export zeros so rate() works from the first scrape
            self.images.labels(endpoint=e)
            self.request_duration.labels(endpoint=e)
            for o in OUTCOMES:
                self.requests.labels(endpoint=e, outcome=o)
        self.ready = Gauge(P + "ready", "1 when serving, 0 otherwise", registry=r)
        self.provider_requests = Counter(
            P + "provider_requests", "Provider calls by outcome", ["outcome"], registry=r
        )
        for o in PROVIDER_OUTCOMES:
            self.provider_requests.labels(outcome=o)
        self.provider_seconds = Histogram(
            P + "provider_request_duration_seconds",
            "Provider call latency (URL downloads excluded)",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128),
            registry=r,
        )
        self.refusals = Counter(
            P + "provider_refusals",
            "Safety refusals (answered 422; not errors of the pool)",
            ["pool"],
            registry=r,
        ).labels(pool=pool)
        self.rate_limit_waits = Counter(
            P + "rate_limit_waits",
            "Requests answered 429 at once instead of calling a provider that asked us to wait",
            ["reason"],
            registry=r,
        )
        for reason in ("provider_retry_after", "token_bucket", "quota"):
            self.rate_limit_waits.labels(reason=reason)
        self.quota_until = Gauge(
            P + "quota_exhausted_until_seconds",
            "Unix time the provider quota resets (0: not exhausted)",
            registry=r,
        )
        self.in_flight = Gauge(P + "provider_in_flight", "Provider calls running", registry=r)
        self.cost = Counter(
            P + "cost_usd", "Cost of the images made, in USD", ["pool"], registry=r
        ).labels(pool=pool)
        self.cost_per_image = Histogram(
            P + "cost_per_image_usd",
            "Cost per image, in USD",
            ["pool"],
            buckets=(0.001, 0.005, 0.01, 0.02, 0.04, 0.08, 0.12, 0.17, 0.25, 0.5, 1.0),
            registry=r,
        ).labels(pool=pool)
        self.unpriced = Counter(
            P + "unpriced_images", "Images with no price in the table or overrides", registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
