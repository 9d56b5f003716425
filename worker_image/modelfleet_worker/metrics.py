"""Prometheus metrics, all prefixed modelfleet_worker_, on a private registry.

ImageSeries declares the series every worker kind exports (the diffusers worker here, the
hosted adapter in hosted/metrics.py): one name, label set and bucket set each, so
dashboards, canary queries and histogram_quantile read both kinds of pool alike."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from . import __version__

P = "modelfleet_worker_"
OUTCOMES = (
    "ok",
    "invalid",
    "too_large",
    "rejected_queue_full",
    "unavailable",
    "insufficient_memory",
    "injected_error",
    "error",
)
ENDPOINTS = ("generations", "edits")  # the `endpoint` label; "other" for stray paths


def endpoint_of(path: str) -> str:
    """The `endpoint` label of a request path: generations, edits, or other."""
    tail = path.removeprefix("/v1/images/")
    return tail if tail != path and tail in ENDPOINTS else "other"


# Seconds from admission to response: a hosted call can answer in 10 ms, a big model in minutes.
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128)
# USD per image: a tiny local model's fraction of a cent up to a hosted model's dollar.
COST_BUCKETS = (
    0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.12, 0.17, 0.25, 0.5, 1.0,
)  # fmt: skip


class ImageSeries:
    """The series shared by every worker kind: identity, requests by endpoint and outcome,
    request duration, images made, ready, cost. `outcomes`: the kind's outcome labels,
    exported at zero with each endpoint so rate() works from the first scrape."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, pool: str, identity: Mapping[str, str], outcomes: Sequence[str]) -> None:
        r = self.registry = CollectorRegistry()
        self.info = Info(P.rstrip("_"), "Worker identity (pool, model, family)", registry=r)
        self.info.info({"pool": pool, **identity, "version": __version__})
        self.requests = Counter(
            P + "requests", "Requests by endpoint and outcome", ["endpoint", "outcome"], registry=r
        )
        self.request_duration = Histogram(
            P + "request_duration_seconds",
            "Request latency by endpoint, admission to response",
            ["endpoint"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.images = Counter(
            P + "images_generated", "Images made, by endpoint", ["endpoint"], registry=r
        )
        for e in ENDPOINTS:
            self.images.labels(endpoint=e)
            self.request_duration.labels(endpoint=e)
            for o in outcomes:
                self.requests.labels(endpoint=e, outcome=o)
        self.ready = Gauge(P + "ready", "1 when serving, 0 loading or draining", registry=r)
        self.cost_usd = Counter(
            P + "cost_usd", "Cost of the images made (USD)", ["pool"], registry=r
        ).labels(pool=pool)
        self.cost_per_image = Histogram(
            P + "cost_per_image_usd",
            "Cost per image (USD)",
            ["pool"],
            buckets=COST_BUCKETS,
            registry=r,
        ).labels(pool=pool)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class WorkerMetrics(ImageSeries):
    def __init__(self, pool: str, model: str, family: str) -> None:
        super().__init__(pool, {"model": model, "family": family}, OUTCOMES)
        r = self.registry
        self.queue_wait = Histogram(
            P + "queue_wait_seconds",
            "Time an image waited before its batch started",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.08, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
            registry=r,
        )
        self.batch_size = Histogram(
            P + "batch_size",
            "Images per executed batch (after any OOM split)",
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64),
            registry=r,
        )
        self.queue_depth = Gauge(P + "queue_depth", "Images waiting to be batched", registry=r)
        self.in_flight = Gauge(P + "in_flight_images", "Images in the running batch", registry=r)
        self.prompt_truncated = Counter(
            P + "prompt_truncated",
            "Prompts longer than a text encoder takes (cut there), by encoder",
            ["encoder"],
            registry=r,
        )
        self.oom = Counter(P + "oom", "Out-of-memory errors caught", registry=r)
        self.splits = Counter(P + "batch_splits", "Batches split in half after OOM", registry=r)
        self.gpu_used = Gauge(P + "gpu_memory_used_bytes", "GPU memory used (0 on CPU)", registry=r)
        self.gpu_free = Gauge(P + "gpu_memory_free_bytes", "GPU memory free (0 on CPU)", registry=r)
        self.batch_cap = Gauge(
            P + "batch_size_cap", "Current batch cap at the default size", registry=r
        )
        self.per_image_bytes = Gauge(
            P + "peak_memory_per_image_bytes",
            "Measured at warm-up: GPU allocator peak per image, or CPU peak-RSS delta",
            ["source"],
            registry=r,
        )
        self.load_seconds = Gauge(P + "model_load_seconds", "Model load + warm-up time", registry=r)
        self.fault_latency = Gauge(
            P + "fault_latency_ms", "Injected latency per request (drill)", registry=r
        )
        self.fault_error_rate = Gauge(
            P + "fault_error_rate", "Injected error rate (drill)", registry=r
        )
        self.fault_oom = Gauge(
            P + "fault_oom_above_batch", "Injected OOM above this batch size (0=off)", registry=r
        )

        # Text verification, labelled by pool so canary queries need no join.
        self.text_word_accuracy = Histogram(
            P + "text_word_accuracy",
            "Word accuracy of each verified image (OCR vs the requested text)",
            ["pool"],
            buckets=(0.0, 0.25, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0),
            registry=r,
        ).labels(pool=pool)
        self.text_verified = Counter(
            P + "text_verified", "Images whose text was read and scored", ["pool"], registry=r
        ).labels(pool=pool)
        self.text_failed = Counter(
            P + "text_failed",
            "Verified images below the word-accuracy threshold",
            ["pool"],
            registry=r,
        ).labels(pool=pool)
        self.text_unreadable = Counter(
            P + "text_unreadable",
            "Images with expected text where OCR found no text or failed",
            ["pool"],
            registry=r,
        ).labels(pool=pool)
        self.ocr_seconds = Histogram(
            P + "ocr_seconds",
            "OCR time per image, in the verification pool",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1, 2, 5),
            registry=r,
        )

    def bind_gpu(self, read: Callable[[], tuple[int, int]]) -> None:
        """read() -> (free, total); evaluated at scrape time."""
        self.gpu_free.set_function(lambda: float(read()[0]))
        self.gpu_used.set_function(lambda: float(max(0, read()[1] - read()[0])))
