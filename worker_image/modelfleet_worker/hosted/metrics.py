"""Adapter metrics: the series every worker kind shares (metrics.ImageSeries: requests by
outcome, request duration, images generated, ready, cost), plus the provider's side: calls
by outcome, refusals apart, rate-limit waits, quota, unpriced images."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from ..metrics import DURATION_BUCKETS, ImageSeries, P

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


class HostedMetrics(ImageSeries):
    def __init__(self, pool: str, backend: str, model: str) -> None:
        # The diffusers worker's series (endpoint: generations | edits | other), family hosted.
        super().__init__(pool, {"model": model, "family": "hosted", "backend": backend}, OUTCOMES)
        r = self.registry
        self.provider_requests = Counter(
            P + "provider_requests", "Provider calls by outcome", ["outcome"], registry=r
        )
        for o in PROVIDER_OUTCOMES:
            self.provider_requests.labels(outcome=o)
        self.provider_seconds = Histogram(
            P + "provider_request_duration_seconds",
            "Provider call latency (URL downloads excluded)",
            buckets=DURATION_BUCKETS,
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
        self.unpriced = Counter(
            P + "unpriced_images", "Images with no price in the table or overrides", registry=r
        )
