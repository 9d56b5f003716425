"""cost-per-image from a real Prometheus scraping the router's own cost and image series
(modelfleet.router.metrics.RouterMetrics.cost, fed at known prices from a thread)."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from modelfleet.api.canary import MetricSpec
from modelfleet.canary.ports import Measurement, MetricQuery
from modelfleet.providers.prometheus import PrometheusProvider
from modelfleet.router.metrics import RouterMetrics
from polling import wait_for_async

PROMETHEUS = shutil.which("prometheus")
pytestmark = [
    pytest.mark.skipif(PROMETHEUS is None, reason="prometheus binary not on PATH"),
    pytest.mark.timeout(150),
]
COST = MetricSpec(name="cost", builtin="cost-per-image", max_ratio_to_stable=1.5)
WINDOW = 10


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def feed(m: RouterMetrics, stop: threading.Event, ticks: list[int]) -> None:
    """Every 0.1 s: pool hosted answers 2 images for 0.08 USD and one failed attempt is
    billed 0.02 (0.05 USD an image); pool free makes an image and reports no cost."""
    while not stop.wait(0.1):
        m.cost("ns", "hosted", 0.08, 2)
        m.cost("ns", "hosted", 0.02, 0)
        m.cost("ns", "free", None, 1)
        ticks[0] += 1


def serve(m: RouterMetrics, port: int, ready: threading.Event, stop: threading.Event) -> None:
    async def handler(_: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(m.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/metrics", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.2)
        await runner.cleanup()

    asyncio.run(main())


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, list[int], float]]:
    assert PROMETHEUS is not None
    tmp: Path = tmp_path_factory.mktemp("prometheus-cost")
    metrics = RouterMetrics()
    port, prom_port = free_port(), free_port()
    stop, ready, ticks = threading.Event(), threading.Event(), [0]
    server = threading.Thread(target=serve, args=(metrics, port, ready, stop), daemon=True)
    server.start()
    assert ready.wait(10)
    feeder = threading.Thread(target=feed, args=(metrics, stop, ticks), daemon=True)
    feeder.start()
    started = time.monotonic()
    config = tmp / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n"
        "scrape_configs:\n  - job_name: router\n    honor_labels: true\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
    )
    with (tmp / "prometheus.log").open("wb") as log:
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
        yield f"http://127.0.0.1:{prom_port}", ticks, started
    finally:
        stop.set()
        proc.terminate()
        proc.wait(10)
        for t in (server, feeder):
            t.join(5)


def q(pool: str) -> MetricQuery:
    return MetricQuery("ns", pool, COST, WINDOW, "free", "hosted")


async def test_cost_per_image_from_real_prometheus(
    prometheus: tuple[str, list[int], float],
) -> None:
    url, ticks, started = prometheus
    p = PrometheusProvider(url, timeout_seconds=2)

    def per_window() -> float:
        """Images pool hosted makes in a window at the pace the feeder achieved."""
        return 2 * ticks[0] / (time.monotonic() - started) * WINDOW

    def full(m: Measurement) -> bool:
        return m.error is None and m.samples is not None and m.samples >= 0.8 * per_window()

    try:
        hosted = await wait_for_async(
            lambda: p.measure(q("hosted")), until=full, timeout=90, interval=0.5, what="a window"
        )
        # (0.08 + 0.02) USD over 2 images, the billed failure included.
        assert hosted.value == pytest.approx(0.05, rel=0.02)
        assert hosted.samples == pytest.approx(per_window(), rel=0.25)
        assert hosted.hits is None  # a mean, not a proportion
        # Images but no cost series: 0 USD an image, not "no data".
        free = await p.measure(q("free"))
        assert free.error is None and free.value == 0.0
        assert free.samples is not None and free.samples > 0
        # A pool that made no images: no series at all, never a zero-cost pass.
        nobody = await p.measure(q("nobody"))
        assert nobody.no_series and nobody.usable_value is None
    finally:
        await p.close()
