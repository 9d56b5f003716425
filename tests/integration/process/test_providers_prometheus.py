"""The Prometheus provider against a real Prometheus scraping fake router metrics.

Prometheus (the Debian/upstream binary on PATH) scrapes, every second, an in-process
aiohttp server exposing modelfleet_router_* series through prometheus_client; a feeder
thread drives the counters at known ratios, so the provider's answers are predictable.
Service time goes through the router's own RouterMetrics.attempted (its metric name,
labels, buckets and batch-size strata), so the query is tested against the real series.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from modelfleet.api.canary import MetricSpec
from modelfleet.canary.ports import Measurement, MetricQuery
from modelfleet.providers.prometheus import PrometheusProvider
from modelfleet.router.metrics import RouterMetrics
from modelfleet.routing.stats import SERVICE_TIME_BUCKETS
from polling import wait_for_async

PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(
    PROMETHEUS is None,
    reason="prometheus binary not on PATH (apt-get install prometheus; `make deps` does it)",
)

ERR = MetricSpec(name="err", builtin="error-rate", max=0.05)
P95 = MetricSpec(name="p95", builtin="latency-p95", max=1.0)
SVC = MetricSpec(name="svc", builtin="service-time", max_ratio_to_stable=1.2)
WINDOW = 10
SERVICE_SERIES = [
    f"modelfleet_router_service_time_seconds{suffix}"
    for suffix in ("_bucket", "_count", "_sum", "_created")
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class FakeRouterMetrics:
    """The router's upstream series, fed at a fixed pace from a thread."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "modelfleet_router_upstream_requests_total",
            "attempts",
            ["namespace", "pool", "outcome"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "modelfleet_router_upstream_duration_seconds",
            "durations",
            ["namespace", "pool"],
            buckets=(0.1, 0.25, 0.5, 1.0, 2.5),
            registry=self.registry,
        )
        # An idle pool: its series exist but never move, so rates are 0/0 = NaN.
        for outcome in ("ok", "upstream_error"):
            self.requests.labels("ns", "idle", outcome)
        self.duration.labels("ns", "idle")
        self.router = RouterMetrics()  # only its service-time series are exposed
        self.stop = threading.Event()
        self.ticks = 0
        self.started = time.monotonic()
        self.burst_until = 0.0  # monotonic; pool "burst" is fed until then
        self.burst_ended = 0.0  # wall-clock time the burst's last tick was fed

    def exposition(self) -> bytes:
        service = self.router.registry.restricted_registry(SERVICE_SERIES)
        return generate_latest(self.registry) + generate_latest(service)

    def counted_per_second(self) -> float:
        """The pace actually achieved (the feeder thread may run slow on a busy box)."""
        return 10 * self.ticks / (time.monotonic() - self.started)

    def feed(self) -> None:
        """Every 0.1 s, pool cand: 9 ok + 1 upstream_error (+1 busy, +1 client_error, which
        must be ignored); latencies 8 x 0.05 s and 2 x 0.7 s. So error rate 0.1,
        p95 = 0.5 + 0.5 * (9.5 - 8) / 2 = 0.875 s, 100 counted requests per second."""
        while not self.stop.is_set():
            r = self.requests
            r.labels("ns", "cand", "ok").inc(9)
            r.labels("ns", "cand", "upstream_error").inc(1)
            r.labels("ns", "cand", "busy").inc(1)
            r.labels("ns", "cand", "client_error").inc(1)
            # A healthy pool: only "ok" series exist, never an error series.
            r.labels("ns", "healthy", "ok").inc(5)
            h = self.duration.labels("ns", "cand")
            for _ in range(8):
                h.observe(0.05)
            for _ in range(2):
                h.observe(0.7)
            # Service time per image: 3 alone at 11 ms, 2 in batches of 6 at 8.5 ms.
            for _ in range(3):
                self.router.attempted("ns", "cand", "ok", 0.05, service_s=0.011, batch_size=1)
            for _ in range(2):
                self.router.attempted("ns", "cand", "ok", 0.05, service_s=0.0085, batch_size=6)
            if time.monotonic() < self.burst_until:
                # 3 ok + 1 error, service time 20 ms at batch size 2, for a few seconds.
                r.labels("ns", "burst", "ok").inc(3)
                r.labels("ns", "burst", "upstream_error").inc(1)
                for _ in range(3):
                    self.router.attempted("ns", "burst", "ok", 0.05, service_s=0.02, batch_size=2)
                self.burst_ended = time.time()
            self.ticks += 1
            self.stop.wait(0.1)


@dataclass
class Stack:
    provider_url: str
    prometheus: subprocess.Popen[bytes]
    metrics: FakeRouterMetrics


def serve_metrics(metrics: FakeRouterMetrics, port: int, ready: threading.Event) -> None:
    async def handler(_: web.Request) -> web.Response:
        body = metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/metrics", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        ready.set()
        while not metrics.stop.is_set():
            await asyncio.sleep(0.1)
        await runner.cleanup()

    asyncio.run(main())


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    assert PROMETHEUS is not None
    tmp: Path = tmp_path_factory.mktemp("prometheus")
    metrics = FakeRouterMetrics()
    metrics_port, prom_port = free_port(), free_port()
    ready = threading.Event()
    threads = [
        threading.Thread(target=serve_metrics, args=(metrics, metrics_port, ready), daemon=True),
        threading.Thread(target=metrics.feed, daemon=True),
    ]
    for t in threads:
        t.start()
    assert ready.wait(10), "metrics server did not start"
    config = tmp / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: router\n    honor_labels: true\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{metrics_port}']\n"
    )
    log = (tmp / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp / 'data'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield Stack(f"http://127.0.0.1:{prom_port}", proc, metrics)
    finally:
        metrics.stop.set()
        if proc.poll() is None:
            proc.terminate()
            proc.wait(10)
        log.close()
        for t in threads:
            t.join(5)


def q(metric: MetricSpec, pool: str = "cand", window: int = WINDOW, offset: int = 0) -> MetricQuery:
    return MetricQuery(
        "ns",
        pool,
        metric,
        window,
        stable_pool="stable",
        candidate_pool="cand",
        offset_seconds=offset,
    )


async def test_builtin_metrics_from_real_prometheus(stack: Stack) -> None:
    p = PrometheusProvider(stack.provider_url, timeout_seconds=2)
    try:

        def full_window(m: Measurement) -> bool:
            expected = stack.metrics.counted_per_second() * WINDOW
            return m.error is None and m.samples is not None and m.samples >= 0.8 * expected

        # Wait until Prometheus has scraped a whole window.
        err = await wait_for_async(
            lambda: p.measure(q(ERR)),
            until=full_window,
            timeout=90,
            interval=0.5,
            what="a whole window scraped",
        )
        assert err.value == pytest.approx(0.1, abs=0.01)
        # increase() extrapolates to the window edges: allow some slack.
        expected = stack.metrics.counted_per_second() * WINDOW
        assert err.samples == pytest.approx(expected, rel=0.25)
        # hits: the errors among those samples (value x the samples query's increase).
        assert err.hits is not None and err.samples is not None
        assert err.hits == pytest.approx(0.1 * err.samples, rel=0.05)
        p95 = await p.measure(q(P95))
        assert p95.error is None and p95.value == pytest.approx(0.875, abs=0.03)

        healthy = await p.measure(q(ERR, "healthy"))
        assert healthy.error is None and not healthy.no_series
        assert healthy.value == 0.0 and (healthy.samples or 0) > 0

        idle = await p.measure(q(ERR, "idle"))
        assert (idle.value, idle.samples, idle.error, idle.no_series) == (None, 0, None, False)

        unknown = MetricSpec(name="u", query='sum(no_such_metric{pool="{{pool}}"})', max=1)
        m = await p.measure(q(unknown))
        assert m.no_series and m.error is None

        custom = MetricSpec(
            name="c",
            query='sum(rate(modelfleet_router_upstream_requests_total{pool="{{pool}}"}'
            "[{{interval}}]))",
            max=1000,
        )
        m = await p.measure(q(custom))
        # all four outcomes: 12 per tick
        assert m.error is None
        assert m.value == pytest.approx(1.2 * stack.metrics.counted_per_second(), rel=0.25)

        bad = MetricSpec(name="b", query="sum(x{pool={{podName}}})", max=1)
        m = await p.measure(q(bad))
        assert m.error is not None and "unknown template key 'podName'" in m.error

        syntax = MetricSpec(name="s", query="sum(rate(", max=1)
        m = await p.measure(q(syntax))
        assert m.error is not None and "bad_data" in m.error
    finally:
        await p.close()


async def test_service_time_strata_from_real_prometheus(stack: Stack) -> None:
    p = PrometheusProvider(stack.provider_url, timeout_seconds=2)
    try:
        m = await wait_for_async(
            lambda: p.measure(q(SVC)),
            until=lambda m: (
                (m.samples or 0) >= 0.8 * stack.metrics.counted_per_second() / 2 * WINDOW
            ),
            timeout=90,
            interval=0.5,
            what="a whole window of service time scraped",
        )
        assert m.error is None and not m.no_series and m.strata is not None
        # Batch size 6 is the router's stratum "5-8"; strata come in batch-size order.
        assert [name for name, _ in m.strata] == ["1", "5-8"]
        alone, batched = (h for _, h in m.strata)
        assert alone.bounds == SERVICE_TIME_BUCKETS == batched.bounds
        assert alone.total == pytest.approx(1.5 * batched.total, rel=0.05)
        assert m.samples == pytest.approx(alone.total + batched.total, abs=1)
        # Each stratum's observations sit in the one bucket holding its service time.
        assert alone.counts[SERVICE_TIME_BUCKETS.index(0.0112)] == pytest.approx(alone.total)
        assert batched.counts[SERVICE_TIME_BUCKETS.index(0.009)] == pytest.approx(batched.total)
        # The median over all strata: 3 of 5 observations are the 11 ms ones.
        assert m.value is not None and 0.01 < m.value <= 0.0112

        none = await p.measure(q(SVC, "stable"))
        assert (none.value, none.samples, none.error, none.no_series) == (None, 0, None, True)
    finally:
        await p.close()


async def test_offset_looks_back_in_every_query(stack: Stack) -> None:
    """A burst on pool "burst", over before the current window: only queries with an
    offset that reaches back to it see it, built-in (PromQL offset) and custom (time=)."""
    p = PrometheusProvider(stack.provider_url, timeout_seconds=2)
    custom = MetricSpec(
        name="c",
        query='sum(increase(modelfleet_router_upstream_requests_total{pool="{{pool}}"}'
        "[{{interval}}]))",
        max=1e9,
    )
    try:
        stack.metrics.burst_until = time.monotonic() + 3
        await wait_for_async(
            lambda: p.measure(q(ERR, "burst")),
            until=lambda m: (m.samples or 0) > 0,
            timeout=30,
            interval=0.5,
            what="the burst scraped",
        )
        # The current 4 s window no longer holds it (the series stand still: 0/0).
        await wait_for_async(
            lambda: p.measure(q(ERR, "burst", window=4)),
            until=lambda m: m.samples == 0 and time.monotonic() > stack.metrics.burst_until,
            timeout=30,
            interval=0.5,
            what="the burst out of the current window",
        )
        # A 10 s window ending 1 s after the burst's last tick.
        back = max(1, round(time.time() - stack.metrics.burst_ended) - 1)
        err = await p.measure(q(ERR, "burst", window=10, offset=back))
        assert err.error is None and err.value == pytest.approx(0.25, abs=0.02)
        assert err.samples is not None and err.samples > 0
        assert err.hits == pytest.approx(0.25 * err.samples, rel=0.05)

        svc = await p.measure(q(SVC, "burst", window=10, offset=back))
        assert svc.error is None and svc.strata is not None
        assert [name for name, _ in svc.strata] == ["2"]
        assert svc.value is not None and 0.016 < svc.value <= 0.02
        now_svc = await p.measure(q(SVC, "burst", window=4))
        assert (now_svc.samples, now_svc.strata) == (0, ())

        then = await p.measure(q(custom, "burst", window=10, offset=back))
        now = await p.measure(q(custom, "burst", window=4))
        assert then.error is None and (then.value or 0) > 0 and now.value == 0

        # Before Prometheus started there is nothing: the offset did reach back.
        ancient = await p.measure(q(ERR, offset=3000))
        assert ancient.error is None and ancient.no_series
        assert (await p.measure(q(custom, offset=3000))).no_series
        negative = await p.measure(q(ERR, offset=-5))
        assert negative.error == "offset_seconds must be >= 0, not -5"
    finally:
        await p.close()


async def test_stopped_prometheus_is_an_error(stack: Stack) -> None:
    stack.prometheus.terminate()
    stack.prometheus.wait(10)
    p = PrometheusProvider(stack.provider_url, timeout_seconds=2)
    try:
        m = await p.measure(q(ERR))
        assert m.error is not None and m.value is None
        assert "ClientConnectorError" in m.error or "Connect" in m.error
    finally:
        await p.close()
