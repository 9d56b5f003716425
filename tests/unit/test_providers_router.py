"""The router provider against real in-process aiohttp servers serving /v1/stats."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from modelfleet.api.canary import MetricSpec
from modelfleet.canary.ports import MetricQuery
from modelfleet.providers.quantile import histogram_quantile
from modelfleet.providers.router_stats import RouterStatsProvider, merge_stats

ERR = MetricSpec(name="err", builtin="error-rate", max=0.05)
P95 = MetricSpec(name="p95", builtin="latency-p95", max=1.0)
P99 = MetricSpec(name="p99", builtin="latency-p99", max=1.0)

Serve = Callable[[Any], Awaitable[str]]
SEEN: dict[str, list[str]] = {}  # url -> the ?window= values each request carried


def pool(
    name: str, requests: int, errors: int, buckets: list[list[Any]], ns: str = "ns"
) -> dict[str, Any]:
    return {
        "namespace": ns,
        "pool": name,
        "requests": requests,
        "errors": errors,
        "latency_buckets": buckets,
    }


ROUTER_A = {
    "window_seconds": 30,
    "pools": [
        pool("cand", 60, 6, [[0.1, 10], [1.0, 50], [10.0, 60], ["+Inf", 60]]),
        pool("stable", 500, 1, [[0.1, 400], [1.0, 490], [10.0, 500], ["+Inf", 500]]),
    ],
}
ROUTER_B = {
    "window_seconds": 30,
    "pools": [
        pool("cand", 40, 0, [[0.1, 30], [1.0, 38], [10.0, 40], ["+Inf", 40]]),
        pool("cand", 5, 5, [[0.1, 0], [1.0, 0], [10.0, 5], ["+Inf", 5]], ns="other"),
    ],
}


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Start a /v1/stats server on 127.0.0.1 answering `doc` (or an HTTP status)."""
    runners: list[web.AppRunner] = []

    async def start(doc: Any) -> str:
        seen: list[str] = []

        async def stats(request: web.Request) -> web.StreamResponse:
            seen.append(request.query.get("window", ""))
            if isinstance(doc, int):
                return web.Response(status=doc, text="boom")
            return web.json_response(doc)

        app = web.Application()
        app.router.add_get("/v1/stats", stats)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        url = f"http://127.0.0.1:{port}"
        SEEN[url] = seen
        return url

    yield start
    for r in runners:
        await r.cleanup()


def q(metric: MetricSpec, pool_name: str = "cand", window: int = 30) -> MetricQuery:
    return MetricQuery("ns", pool_name, metric, window, "stable", "cand")


async def test_merges_routers_exactly(serve: Serve) -> None:
    a, b = await serve(ROUTER_A), await serve(ROUTER_B)
    p = RouterStatsProvider([a, b + "/"])
    try:
        err = await p.measure(q(ERR))
        assert err.value == pytest.approx(6 / 100) and err.samples == 100 and err.error is None
        p95 = await p.measure(q(P95))
        merged = [(0.1, 40.0), (1.0, 88.0), (10.0, 100.0), (math.inf, 100.0)]
        assert p95.value == pytest.approx(histogram_quantile(0.95, merged))
        # rank 95 lies in (1, 10]: 1 + 9 * (95 - 88) / 12
        assert p95.value == pytest.approx(1 + 9 * 7 / 12)
        p99 = await p.measure(q(P99))
        assert p99.value == pytest.approx(1 + 9 * 11 / 12)
        stable = await p.measure(q(ERR, "stable"))
        assert stable.value == pytest.approx(1 / 500) and stable.samples == 500
    finally:
        await p.close()


async def test_unknown_pool_is_no_traffic_not_misconfigured(serve: Serve) -> None:
    p = RouterStatsProvider([await serve(ROUTER_A)])
    try:
        m = await p.measure(q(ERR, "nobody"))
        assert (m.value, m.samples, m.error, m.no_series) == (None, 0, None, False)
    finally:
        await p.close()


async def test_one_router_down_uses_the_others(serve: Serve) -> None:
    a = await serve(ROUTER_A)
    broken = await serve(503)
    p = RouterStatsProvider([a, broken, "http://127.0.0.1:9"])
    try:
        m = await p.measure(q(ERR))
        assert m.error is None and m.samples == 60 and m.value == pytest.approx(0.1)
    finally:
        await p.close()


async def test_all_routers_down_is_an_error(serve: Serve) -> None:
    broken = await serve(500)
    p = RouterStatsProvider([broken, "http://127.0.0.1:9"], timeout_seconds=2)
    try:
        m = await p.measure(q(ERR))
        assert m.error is not None and m.error.startswith("no router answered /v1/stats")
        assert "HTTP 500" in m.error
    finally:
        await p.close()
    empty = RouterStatsProvider([])
    assert (await empty.measure(q(ERR))).error is not None
    await empty.close()


async def test_custom_query_is_not_supported(serve: Serve) -> None:
    p = RouterStatsProvider([await serve(ROUTER_A)])
    custom = MetricSpec(name="c", query="up", max=1)
    m = await p.measure(q(custom))
    assert m.error is not None and "supports only builtin metrics" in m.error
    await p.close()


async def test_window_is_passed_and_one_fetch_serves_many_queries(serve: Serve) -> None:
    url = await serve(ROUTER_A)
    p = RouterStatsProvider([url], cache_seconds=60)
    try:
        for metric in (ERR, P95, P99):
            await p.measure(q(metric, window=17))
        await p.measure(q(ERR, "stable", window=17))
        await p.measure(q(ERR, window=5))
        assert SEEN[url] == ["17", "5"]
    finally:
        await p.close()


async def test_bad_document_is_an_error(serve: Serve) -> None:
    p = RouterStatsProvider([await serve({"pools": [{"pool": 3}]})])
    m = await p.measure(q(ERR))
    assert m.error is not None and "bad stats document" in m.error
    await p.close()


def test_bucket_bound_conflict_makes_latency_an_error() -> None:
    from modelfleet.providers.router_stats import measurement_for

    merged = merge_stats(
        [
            {"pools": [pool("cand", 10, 0, [[0.1, 5], ["+Inf", 10]])]},
            {"pools": [pool("cand", 10, 1, [[0.2, 5], ["+Inf", 10]])]},
        ]
    )
    stats = merged[("ns", "cand")]
    assert measurement_for(stats, "error-rate").value == pytest.approx(0.05)
    assert "disagree on latency bucket bounds" in (
        measurement_for(stats, "latency-p95").error or ""
    )
