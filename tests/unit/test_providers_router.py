"""The router provider against real in-process aiohttp servers serving /v1/stats (and
against documents the router's own AttemptStats writes)."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from modelfleet.api.canary import MetricSpec
from modelfleet.canary.ports import MetricQuery
from modelfleet.canary.statistics import Histogram
from modelfleet.providers.quantile import histogram_quantile
from modelfleet.providers.router_stats import (
    RouterStatsProvider,
    StatsFormatError,
    _service_strata,
    measurement_for,
    merge_stats,
)
from modelfleet.routing.ladder import Attempt
from modelfleet.routing.stats import SERVICE_TIME_BUCKETS, AttemptStats

ERR = MetricSpec(name="err", builtin="error-rate", max=0.05)
P95 = MetricSpec(name="p95", builtin="latency-p95", max=1.0)
P99 = MetricSpec(name="p99", builtin="latency-p99", max=1.0)
SVC = MetricSpec(name="svc", builtin="service-time", max_ratio_to_stable=1.2)
PASS = MetricSpec(name="pass", builtin="text-pass-rate", min=0.8)

Serve = Callable[..., Awaitable[str]]
SEEN: dict[str, list[str]] = {}  # url -> the ?window= values each request carried
OFFSETS: dict[str, list[str]] = {}  # url -> the ?offset= values ("" when absent)


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

    async def start(doc: Any, echo_offset: bool = True) -> str:
        """echo_offset=False: a router that predates ?offset= (answers the current
        window and says nothing about an offset)."""
        seen: list[str] = []
        offsets: list[str] = []

        async def stats(request: web.Request) -> web.StreamResponse:
            seen.append(request.query.get("window", ""))
            offsets.append(request.query.get("offset", ""))
            if isinstance(doc, int):
                return web.Response(status=doc, text="boom")
            if echo_offset and isinstance(doc, dict):
                return web.json_response(
                    {**doc, "offset_seconds": int(request.query.get("offset", "0"))}
                )
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
        OFFSETS[url] = offsets
        return url

    yield start
    for r in runners:
        await r.cleanup()


def q(
    metric: MetricSpec, pool_name: str = "cand", window: int = 30, offset: int = 0
) -> MetricQuery:
    return MetricQuery("ns", pool_name, metric, window, "stable", "cand", offset)


async def test_merges_routers_exactly(serve: Serve) -> None:
    a, b = await serve(ROUTER_A), await serve(ROUTER_B)
    p = RouterStatsProvider([a, b + "/"])
    try:
        err = await p.measure(q(ERR))
        assert err.value == pytest.approx(6 / 100) and err.samples == 100 and err.error is None
        assert err.hits == 6  # the proportion test's count of errors
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


# --- service time by batch-size stratum ----------------------------------------------

BOUNDS = (0.01, 0.02, 0.04)


def cum(*counts: int) -> list[list[Any]]:
    """Cumulative [[bound, n], ..., ["+Inf", total]] from per-bucket counts over BOUNDS."""
    out: list[list[Any]] = []
    acc = 0
    for bound, c in zip((*BOUNDS, "+Inf"), counts, strict=True):
        acc += c
        out.append([bound, acc])
    return out


def with_service(entry: dict[str, Any], **strata: list[list[Any]]) -> dict[str, Any]:
    """A pool entry with service_time strata; keyword b4 is batch size "4", b5_8 is "5-8"."""
    service = [{"batch_size": k[1:].replace("_", "-"), "buckets": v} for k, v in strata.items()]
    return {**entry, "service_time": service}


SVC_A = {
    "pools": [
        with_service(pool("cand", 10, 0, [["+Inf", 10]]), b4=cum(0, 1, 3, 0), b1=cum(2, 3, 1, 0)),
        pool("stable", 5, 0, [["+Inf", 5]]),  # an old router's answer: no service_time
    ]
}
SVC_B = {
    "pools": [
        with_service(pool("cand", 9, 0, [["+Inf", 9]]), b1=cum(1, 0, 2, 1), b5_8=cum(0, 0, 0, 2)),
    ]
}


async def test_service_time_strata_merge_exactly_across_routers(serve: Serve) -> None:
    p = RouterStatsProvider([await serve(SVC_A), await serve(SVC_B)])
    try:
        m = await p.measure(q(SVC))
        assert m.error is None and m.strata is not None
        # Batch-size order, not the order the routers listed them in.
        assert [name for name, _ in m.strata] == ["1", "4", "5-8"]
        by_name = dict(m.strata)
        assert by_name["1"] == Histogram(BOUNDS, (3.0, 3.0, 3.0, 1.0))  # summed per bucket
        assert by_name["4"] == Histogram(BOUNDS, (0.0, 1.0, 3.0, 0.0))
        assert by_name["5-8"] == Histogram(BOUNDS, (0.0, 0.0, 0.0, 2.0))
        assert m.samples == 16
        # The median over all strata: 16 samples (3, 4, 6, 3 per bucket), rank 8 in the
        # third bucket (0.02, 0.04]: 0.02 + 0.02 * (8 - 7) / 6.
        assert m.value == pytest.approx(0.02 + 0.02 / 6)
        # A pool no router has service time for: no data, not an error.
        stable = await p.measure(q(SVC, "stable"))
        assert (stable.value, stable.samples, stable.error, stable.strata) == (None, 0, None, ())
        nobody = await p.measure(q(SVC, "nobody"))
        assert (nobody.samples, nobody.error, nobody.strata) == (0, None, ())
    finally:
        await p.close()


def test_service_time_bound_conflict_is_an_error_and_spares_error_rate() -> None:
    other = {
        "pools": [
            with_service(pool("cand", 3, 1, [["+Inf", 3]]), b1=[[0.5, 1], ["+Inf", 2]]),
        ]
    }
    stats = merge_stats([SVC_A, other])[("ns", "cand")]
    m = measurement_for(stats, "service-time")
    assert m.error == "routers disagree on service-time bucket bounds; cannot merge"
    err = measurement_for(stats, "error-rate")
    assert err.error is None and err.samples == 13 and err.hits == 1


def test_the_routers_own_stats_document_round_trips() -> None:
    """What AttemptStats (the router's /v1/stats) writes is what the provider reads."""
    stats = AttemptStats()
    for i in range(30):
        batch = 1 if i % 3 else 4
        service = 0.011 if batch == 1 else 0.0085
        stats.record("ns", "cand", Attempt.OK, 0.2, now=100.0, service_s=service, batch_size=batch)
    stats.record("ns", "cand", Attempt.UPSTREAM_ERROR, 0.2, now=100.0)
    doc = {"pools": [w.wire(stats.bounds) for w in stats.window(30, 100.0)]}
    cand = merge_stats([doc])[("ns", "cand")]
    m = measurement_for(cand, "service-time")
    assert m.error is None and m.strata is not None and m.samples == 30
    assert [(name, h.total) for name, h in m.strata] == [("1", 20.0), ("4", 10.0)]
    assert all(h.bounds == SERVICE_TIME_BUCKETS for _, h in m.strata)
    # 0.011 lies in (0.01, 0.0125]; the pooled median's rank 15 falls there too.
    assert m.value is not None and 0.01 < m.value <= 0.0125
    err = measurement_for(cand, "error-rate")
    assert (err.samples, err.hits) == (31, 1)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"batch_size": "1"}, "service_time is not a list"),
        (["x"], "service_time[0] is not an object with batch_size and buckets"),
        ([{"batch_size": 1, "buckets": cum(1, 0, 0, 0)}], "service_time[0].batch_size 1"),
        ([{"batch_size": "1", "buckets": []}], "service_time[0].buckets is not a non-empty"),
        (
            [{"batch_size": "1", "buckets": [[0.01, 1], [0.02]]}],
            "service_time[0].buckets: [0.02] is not [upper_bound, cumulative_count]",
        ),
        (
            [{"batch_size": "2", "buckets": [[0.01, 3], [0.02, 2], ["+Inf", 3]]}],
            "service_time[0].buckets: cumulative counts decrease at bound 0.02",
        ),
        (
            [{"batch_size": "2", "buckets": [[0.02, 1], [0.01, 2], ["+Inf", 3]]}],
            "service_time[0].buckets: bounds must increase",
        ),
        (
            [{"batch_size": "1", "buckets": [[0.01, 1], [0.02, 2]]}],
            "service_time[0].buckets: the last bucket must be '+Inf'",
        ),
        (
            [
                {"batch_size": "1", "buckets": cum(1, 0, 0, 0)},
                {"batch_size": "1", "buckets": cum(1, 0, 0, 0)},
            ],
            "service_time[1]: batch_size '1' appears twice",
        ),
        (
            [{"batch_size": "1", "buckets": [[0.01, -1], ["+Inf", 3]]}],
            "service_time[0].buckets count -1 is not a non-negative number",
        ),
        (
            [{"batch_size": "1", "buckets": [["fast", 1], ["+Inf", 3]]}],
            "bucket bound 'fast' is not a number or '+Inf'",
        ),
    ],
)
def test_malformed_service_time_is_rejected_naming_the_field(raw: Any, message: str) -> None:
    with pytest.raises(StatsFormatError) as e:
        _service_strata(raw)
    assert message in str(e.value)


async def test_malformed_service_time_fails_only_service_time(serve: Serve) -> None:
    bad = {"pools": [{**pool("cand", 10, 2, [["+Inf", 10]]), "service_time": [{"x": 1}]}]}
    url = await serve(bad)
    p = RouterStatsProvider([url, await serve(SVC_B)])
    try:
        m = await p.measure(q(SVC))
        assert m.error == (
            f"bad service_time in /v1/stats: {url}: pool ns/cand: service_time[0].batch_size "
            "None is not a non-empty string"
        )
        # error-rate, the fastest rollback signal, does not go blind because of it.
        err = await p.measure(q(ERR))
        assert err.error is None and (err.samples, err.hits) == (19, 2)
    finally:
        await p.close()


async def test_offset_is_passed_and_part_of_the_cache_key(serve: Serve) -> None:
    url = await serve(SVC_A)
    p = RouterStatsProvider([url], cache_seconds=60)
    try:
        for metric in (SVC, ERR):
            assert (await p.measure(q(metric, window=40, offset=25))).error is None
        assert (await p.measure(q(SVC, window=40))).error is None
        assert (await p.measure(q(SVC, window=40, offset=7))).error is None
        assert list(zip(SEEN[url], OFFSETS[url], strict=True)) == [
            ("40", "25"),  # one fetch served both metrics at offset 25
            ("40", ""),  # offset 0 is not sent (routers that predate it answer the same)
            ("40", "7"),
        ]
        negative = await p.measure(q(SVC, offset=-1))
        assert negative.error == "offset_seconds must be >= 0, not -1"
    finally:
        await p.close()


async def test_router_that_ignores_offset_does_not_count(serve: Serve) -> None:
    """An old router answers the current window; taking it as the past one would compare
    the candidate with the wrong stable sample."""
    old = await serve(SVC_A, echo_offset=False)
    p = RouterStatsProvider([old])
    try:
        m = await p.measure(q(SVC, offset=30))
        assert m.error is not None and m.error.startswith("no router answered /v1/stats")
        assert "asked for offset 30 s, answered offset_seconds None" in m.error
        now = await p.measure(q(SVC))  # offset 0 needs no echo
        assert now.error is None and now.samples == 10
    finally:
        await p.close()
    both = RouterStatsProvider([old, await serve(SVC_B)])
    try:
        m = await both.measure(q(SVC, offset=30))
        assert m.error is None and m.samples == 6  # only the router that looked back
    finally:
        await both.close()


async def test_text_pass_rate_hits_are_passed_renders(serve: Serve) -> None:
    entry = {**pool("cand", 10, 0, [["+Inf", 10]]), "text": {"verified": 8, "passed": 6}}
    p = RouterStatsProvider([await serve({"pools": [entry]})])
    try:
        m = await p.measure(q(PASS))
        assert m.value == pytest.approx(0.75) and (m.samples, m.hits) == (8, 6)
        none = await p.measure(q(PASS, "nobody"))
        assert (none.value, none.samples, none.hits) == (None, 0, 0.0)
    finally:
        await p.close()
