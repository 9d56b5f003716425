"""The Prometheus provider's text metrics against a real Prometheus scraping the worker's
own metric series (modelfleet_worker.metrics.WorkerMetrics, fed at known ratios)."""

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

from modelfleet.api.canary import MetricSpec
from modelfleet.canary.ports import Measurement, MetricQuery
from modelfleet.providers.prometheus import PrometheusProvider
from modelfleet_worker.metrics import WorkerMetrics
from polling import wait_for_async

PROMETHEUS = shutil.which("prometheus")
pytestmark = [
    pytest.mark.skipif(PROMETHEUS is None, reason="prometheus binary not on PATH"),
    pytest.mark.timeout(150),
]
ACC = MetricSpec(name="acc", builtin="text-accuracy", min_ratio_to_stable=0.9)
PASS = MetricSpec(name="pass", builtin="text-pass-rate", min=0.8)
WINDOW = 10


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def feed(m: WorkerMetrics, stop: threading.Event, ticks: list[int]) -> None:
    """Every 0.1 s: four verified renders, accuracies 1, 1, 0.5, 0.3, two of them failed
    (mean 0.7, pass rate 0.5), and one unreadable (counted in neither)."""
    while not stop.wait(0.1):
        for acc in (1.0, 1.0, 0.5, 0.3):
            m.text_verified.inc()
            m.text_word_accuracy.observe(acc)
            if acc < 0.9:
                m.text_failed.inc()
        m.text_unreadable.inc()
        ticks[0] += 1


def serve(m: WorkerMetrics, port: int, ready: threading.Event, stop: threading.Event) -> None:
    async def handler(_: web.Request) -> web.Response:
        return web.Response(body=m.render(), headers={"Content-Type": m.content_type})

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
    tmp: Path = tmp_path_factory.mktemp("prometheus-text")
    cand, idle = WorkerMetrics("cand", "m", "sd15"), WorkerMetrics("idle", "m", "sd15")
    ports = {"cand": free_port(), "idle": free_port()}
    stop, ticks = threading.Event(), [0]
    threads = []
    for name, metrics in (("cand", cand), ("idle", idle)):
        ready = threading.Event()
        t = threading.Thread(target=serve, args=(metrics, ports[name], ready, stop), daemon=True)
        t.start()
        threads.append(t)
        assert ready.wait(10)
    feeder = threading.Thread(target=feed, args=(cand, stop, ticks), daemon=True)
    feeder.start()
    started = time.monotonic()
    config = tmp / "prometheus.yml"
    # Pod discovery gives worker series their `namespace`; a static label stands in here.
    targets = ", ".join(f"'127.0.0.1:{p}'" for p in ports.values())
    config.write_text(
        "global:\n  scrape_interval: 1s\n"
        "scrape_configs:\n  - job_name: workers\n"
        f"    static_configs:\n      - targets: [{targets}]\n"
        "        labels: {namespace: ns}\n"
    )
    prom_port = free_port()
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
        for t in (*threads, feeder):
            t.join(5)


def q(metric: MetricSpec, pool: str = "cand") -> MetricQuery:
    return MetricQuery("ns", pool, metric, WINDOW, "stable", "cand")


async def test_text_metrics_from_real_prometheus(
    prometheus: tuple[str, list[int], float],
) -> None:
    url, ticks, started = prometheus
    p = PrometheusProvider(url, timeout_seconds=2)

    def per_window() -> float:
        return 4 * ticks[0] / (time.monotonic() - started) * WINDOW

    def full(m: Measurement) -> bool:
        return m.error is None and m.samples is not None and m.samples >= 0.8 * per_window()

    try:
        acc = await wait_for_async(
            lambda: p.measure(q(ACC)), until=full, timeout=90, interval=0.5, what="a window"
        )
        assert acc.value == pytest.approx(0.7, abs=0.02)
        assert acc.samples == pytest.approx(per_window(), rel=0.25)  # verified, not unreadable
        rate = await p.measure(q(PASS))
        assert rate.error is None and rate.value == pytest.approx(0.5, abs=0.02)
        # hits: the passed renders among the verified ones, for the proportion test.
        assert rate.samples is not None and rate.hits is not None
        assert rate.hits == pytest.approx(0.5 * rate.samples, rel=0.05)
        assert rate.hits <= rate.samples
        assert acc.hits is None  # a mean, not a proportion
        # a worker that verified nothing: 0/0, no data (inconclusive), not misconfigured
        for metric in (ACC, PASS):
            idle = await p.measure(q(metric, "idle"))
            assert (idle.value, idle.samples, idle.error, idle.no_series) == (None, 0, None, False)
        unknown = await p.measure(q(ACC, "nobody"))
        assert unknown.no_series
    finally:
        await p.close()
