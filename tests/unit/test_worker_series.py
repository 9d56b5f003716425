"""The diffusers worker and the hosted adapter export their common series alike: same names,
types, labels and histogram buckets (a histogram_quantile over both kinds of pool sums
buckets by `le`, which only works when the bounds are the same)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from modelfleet_worker.hosted.metrics import HostedMetrics
from modelfleet_worker.metrics import WorkerMetrics

SHARED = {
    "modelfleet_worker",  # the identity Info
    "modelfleet_worker_requests",
    "modelfleet_worker_request_duration_seconds",
    "modelfleet_worker_images_generated",
    "modelfleet_worker_ready",
    "modelfleet_worker_cost_usd",
    "modelfleet_worker_cost_per_image_usd",
}


def shape(registry: CollectorRegistry) -> dict[str, tuple[str, frozenset[str], tuple[str, ...]]]:
    """name -> (type, label names of its samples, bucket bounds)."""
    out = {}
    for family in registry.collect():
        labels = frozenset(k for s in family.samples for k in s.labels if k != "le")
        bounds = tuple(
            sorted(
                {s.labels["le"] for s in family.samples if s.name.endswith("_bucket")},
                key=float,
            )
        )
        out[family.name] = (family.type, labels, bounds)
    return out


def test_the_common_series_have_one_shape() -> None:
    worker = shape(WorkerMetrics("p", "m", "sd15").registry)
    hosted = shape(HostedMetrics("p", "openai", "gpt-image-1").registry)
    common = worker.keys() & hosted.keys()
    assert common == SHARED
    for name in sorted(common - {"modelfleet_worker"}):
        assert worker[name] == hosted[name], name
    # Identity: the hosted adapter adds its backend to the worker's labels.
    assert hosted["modelfleet_worker"][1] - worker["modelfleet_worker"][1] == {"backend"}


def test_each_kind_exports_its_own_outcomes_at_zero() -> None:
    def outcomes(registry: CollectorRegistry) -> set[str]:
        return {
            s.labels["outcome"]
            for f in registry.collect()
            if f.name == "modelfleet_worker_requests"
            for s in f.samples
            if s.name.endswith("_total")
        }

    assert "insufficient_memory" in outcomes(WorkerMetrics("p", "m", "sd15").registry)
    hosted = outcomes(HostedMetrics("p", "openai", "gpt-image-1").registry)
    assert {"refused", "quota_exhausted"} <= hosted
    assert "insufficient_memory" not in hosted
