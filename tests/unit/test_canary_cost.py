"""Cost per image: the router's count of what the workers reported (AttemptStats,
/v1/stats), the providers' cost-per-image measurement, the API rules of the built-in and
its judgement (max, maxRatioToStable; no images is inconclusive, never a failure)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from pydantic import ValidationError

from modelfleet.api.canary import CanarySpec, MetricResult, MetricSpec
from modelfleet.canary import MetricObservation, judge_metric
from modelfleet.canary.measure import collect_analysis
from modelfleet.canary.ports import Measurement
from modelfleet.canary.types import AnalysisPlan
from modelfleet.providers.prometheus import builtin_query, samples_query
from modelfleet.providers.router_stats import (
    RouterStatsProvider,
    StatsFormatError,
    measurement_for,
    merge_stats,
)
from modelfleet.router.metrics import RouterMetrics
from modelfleet.router.upstream import UpstreamClient
from modelfleet.routing.ladder import Attempt
from modelfleet.routing.stats import AttemptStats, parse_cost, response_images

COST_MAX = MetricSpec(name="cost", builtin="cost-per-image", max=0.05)
COST_RATIO = MetricSpec(name="cost", builtin="cost-per-image", max_ratio_to_stable=1.5)
COST_BOTH = MetricSpec(name="cost", builtin="cost-per-image", max=0.05, max_ratio_to_stable=1.5)


def m(value: float | None, images: int = 40) -> Measurement:
    return Measurement(value=value, samples=images)


# -- the API rules ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        {"max": 0.04},
        {"maxRatioToStable": 1.2},
        {"max": 0.04, "maxRatioToStable": 1.2, "method": "value"},
        {"max": 0.04, "method": "auto"},
    ],
)
def test_cost_metric_accepts_max_and_ratio(fields: dict[str, Any]) -> None:
    spec = MetricSpec.model_validate({"name": "cost", "builtin": "cost-per-image", **fields})
    assert spec.builtin == "cost-per-image"


@pytest.mark.parametrize(
    "fields",
    [
        {"min": 0.01},
        {"minRatioToStable": 0.5},
        {"max": 0.04, "min": 0.01},
        {"maxRatioToStable": 1.2, "maxWorseProbability": 0.7},
        {"maxRatioToStable": 1.2, "method": "mann-whitney"},
    ],
)
def test_cost_metric_rejects_other_thresholds_naming_the_rule(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError) as e:
        MetricSpec.model_validate({"name": "cost", "builtin": "cost-per-image", **fields})
    assert "cost-per-image" in str(e.value)
    assert "max and/or maxRatioToStable" in str(e.value)


def test_the_stable_is_measured_even_for_max_only() -> None:
    plan = AnalysisPlan("full", 0, "t", 30, (COST_MAX,))
    assert plan.needs_stable(COST_MAX)
    assert plan.stable_window_seconds(COST_RATIO) == 30  # value checks: the same window


# -- judging ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("metric", "cand", "stable", "result", "threshold"),
    [
        (COST_MAX, m(0.04), m(0.08), "pass", 0.05),
        (COST_MAX, m(0.05), m(0.01), "pass", 0.05),  # equal to max passes
        (COST_MAX, m(0.051), m(0.01), "fail", 0.05),
        (COST_RATIO, m(0.06), m(0.04), "pass", 0.06),  # 1.5 x 0.04
        (COST_RATIO, m(0.0601), m(0.04), "fail", 0.06),
        (COST_RATIO, m(0.02), m(0.04), "pass", 0.06),  # cheaper is fine
        (COST_BOTH, m(0.055), m(0.04), "fail", 0.05),  # max binds below the ratio's 0.06
        (COST_BOTH, m(0.03), m(0.01), "fail", 0.015),  # the ratio binds
        # no images: no cost per image, inconclusive, never a failure
        (COST_MAX, m(None, 0), m(0.01), "inconclusive", None),
        (COST_RATIO, m(None, 0), m(0.04), "inconclusive", None),
        (COST_RATIO, m(0.9), m(None, 0), "inconclusive", None),  # stable made none
        (COST_RATIO, m(0.9, 5), m(0.04), "inconclusive", None),  # below minRequests
        (COST_RATIO, m(0.9), Measurement.failed("down"), "inconclusive", None),
        (COST_MAX, Measurement(no_series=True), m(0.01), "inconclusive", None),
        # max is judged even when the stable cannot be
        (COST_BOTH, m(0.9), m(None, 0), "fail", 0.05),
    ],
)
def test_judge_cost_table(
    metric: MetricSpec,
    cand: Measurement,
    stable: Measurement,
    result: str,
    threshold: float | None,
) -> None:
    r = judge_metric(metric, MetricObservation(candidate=cand, stable=stable), 20)
    assert r.result == result, r.message
    assert r.method == "value"
    if threshold is not None:
        assert r.threshold == pytest.approx(threshold)


def test_no_images_message_counts_images() -> None:
    r = judge_metric(COST_MAX, MetricObservation(candidate=m(None, 3), stable=m(0.01)), 20)
    assert r.result == "inconclusive"
    assert "3 candidate images in the window, minRequests is 20" in r.message


def test_max_only_still_reports_the_stable_and_the_ratio() -> None:
    r = judge_metric(COST_MAX, MetricObservation(candidate=m(0.04), stable=m(0.02, 30)), 20)
    assert (r.result, r.value, r.stable_value, r.stable_samples) == ("pass", 0.04, 0.02, 30)
    assert r.ratio == pytest.approx(2.0)


def test_ratio_uses_the_previous_stable_value_at_100_percent() -> None:
    """At the last step the stable serves nothing and makes no images."""
    previous = MetricResult(name="cost", result="pass", value=0.03, stable_value=0.04)
    obs = MetricObservation(candidate=m(0.07), stable=m(None, 0))
    r = judge_metric(COST_RATIO, obs, 20, previous)
    assert r.result == "fail" and r.threshold == pytest.approx(0.06)
    assert "previous analysis" in r.message


def test_a_stable_without_cost_fails_a_ratio_and_says_why() -> None:
    r = judge_metric(COST_RATIO, MetricObservation(candidate=m(0.04), stable=m(0.0)), 20)
    assert r.result == "fail"
    assert "the stable reports no cost" in r.message
    same = judge_metric(COST_RATIO, MetricObservation(candidate=m(0.0), stable=m(0.0)), 20)
    assert same.result == "pass"


# -- what the router counts ------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "usd"),
    [
        ("0.04", 0.04),
        ("0", 0.0),
        ("1e-7", 1e-7),
        (None, None),
        ("", None),
        ("-0.01", None),
        ("nan", None),
        ("inf", None),
        ("1e9", None),  # not a bill: a broken header
        ("$0.04", None),
    ],
)
def test_parse_cost(header: str | None, usd: float | None) -> None:
    assert parse_cost(header) == usd


def _answer(n: int, prompt: str = "a cat") -> bytes:
    return json.dumps(
        {
            "created": 1,
            "data": [{"b64_json": "iVBORw0KGgo=", "revised_prompt": prompt} for _ in range(n)],
            "modelfleet": {"model": "m", "revision": None, "cost_usd": 0.1, "images": n},
        }
    ).encode()


def test_response_images_counts_the_images_only() -> None:
    assert response_images(_answer(0)) == 0
    assert response_images(_answer(3)) == 3
    # The key inside a string is escaped, so it is not counted.
    assert response_images(_answer(2, prompt='say "b64_json"')) == 2
    assert response_images(b'{"error": {"code": "x", "message": "m"}}') == 0


def test_stats_count_cost_and_images_per_pool_and_window() -> None:
    s = AttemptStats()
    for i in range(10):
        s.record("ns", "hosted", Attempt.OK, 0.2, 100.0 + i)
        s.record_cost("ns", "hosted", Attempt.OK, 100.0 + i, 0.08, 2)
    s.record_cost("ns", "hosted", Attempt.UPSTREAM_ERROR, 109.0, 0.04, 3)  # billed, no images
    s.record_cost("ns", "hosted", Attempt.CLIENT_ERROR, 109.0, 5.0, 1)  # not the pool's
    s.record_cost("ns", "hosted", Attempt.BUSY, 109.0, 5.0, 1)
    s.record_cost("ns", "free", Attempt.OK, 109.0, None, 1)  # no cost header: images only
    s.record("ns", "quiet", Attempt.OK, 0.2, 109.0)
    wire = {w.pool: w.wire(s.bounds) for w in s.window(60, 109.5)}
    assert wire["hosted"]["cost"]["images"] == 20
    assert wire["hosted"]["cost"]["usd"] == pytest.approx(0.84)
    assert wire["free"]["cost"] == {"usd": 0.0, "images": 1}
    assert "cost" not in wire["quiet"]
    # Only the last five seconds.
    recent = {w.pool: w for w in s.window(5, 109.5)}["hosted"]
    assert (recent.images, recent.cost_usd) == (10, pytest.approx(0.44))
    # An hour later the slots are reused and nothing leaks in.
    s.record_cost("ns", "hosted", Attempt.OK, 100.0 + 3600, 0.01, 1)
    later = {w.pool: w for w in s.window(5, 100.5 + 3600)}["hosted"]
    assert (later.images, later.cost_usd) == (1, pytest.approx(0.01))


def test_micro_dollar_costs_add_up_exactly() -> None:
    """A tiny CPU pool at a GPU-hour price: 2.7e-6 USD an image."""
    s = AttemptStats()
    for _ in range(1000):
        s.record_cost("ns", "tiny", Attempt.OK, 50.0, 2.7e-6, 1)
    w = s.window(10, 50.0)[0]
    assert w.cost_usd == pytest.approx(2.7e-3, rel=1e-9) and w.images == 1000


# -- the providers ---------------------------------------------------------------------


def test_router_provider_reads_and_merges_cost() -> None:
    a, b = AttemptStats(), AttemptStats()
    for _ in range(30):
        a.record_cost("ns", "cand", Attempt.OK, 10.0, 0.04, 1)
        b.record_cost("ns", "cand", Attempt.OK, 10.0, 0.12, 2)
        a.record_cost("ns", "stable", Attempt.OK, 10.0, 0.02, 1)
    docs = [{"pools": [w.wire(x.bounds) for w in x.window(30, 10.0)]} for x in (a, b)]
    merged = merge_stats(docs)
    cand = measurement_for(merged[("ns", "cand")], "cost-per-image")
    # (30 x 0.04 + 30 x 0.12) USD over 30 + 60 images
    assert cand.value == pytest.approx(4.8 / 90) and cand.samples == 90
    stable = measurement_for(merged[("ns", "stable")], "cost-per-image")
    assert stable.value == pytest.approx(0.02) and stable.samples == 30
    # A pool without images (or unseen): no value, zero samples, not misconfigured.
    none = measurement_for(None, "cost-per-image")
    assert (none.value, none.samples, none.error, none.no_series) == (None, 0, None, False)


@pytest.mark.parametrize(
    ("cost", "message"),
    [
        ("cheap", "cost is not an object"),
        ({"usd": -1, "images": 1}, "cost.usd"),
        ({"usd": 1, "images": 1.5}, "cost.images"),
        ({"usd": "1", "images": 1}, "cost.usd"),
    ],
)
def test_malformed_cost_is_rejected_naming_the_field(cost: Any, message: str) -> None:
    doc = {"pools": [{"namespace": "ns", "pool": "p", "requests": 1, "errors": 0, "cost": cost}]}
    with pytest.raises(StatsFormatError, match=message):
        merge_stats([doc])


def test_prometheus_queries_divide_cost_by_images_of_the_same_range() -> None:
    value = builtin_query("cost-per-image", "ns", "cand", 30, offset_seconds=60)
    assert value == (
        '(sum(increase(modelfleet_router_cost_usd_total{namespace="ns",pool="cand"}[30s] '
        "offset 60s)) or vector(0)) / "
        'sum(increase(modelfleet_router_images_total{namespace="ns",pool="cand"}[30s] offset 60s))'
    )
    assert samples_query("ns", "cand", 30, "cost-per-image") == (
        'sum(increase(modelfleet_router_images_total{namespace="ns",pool="cand"}[30s]))'
    )


def test_router_metrics_export_cost_and_images() -> None:
    r = RouterMetrics()
    r.cost("ns", "p", 0.04, 2)
    r.cost("ns", "p", None, 1)
    r.cost("ns", "p", 0.02, 0)
    get = r.registry.get_sample_value
    assert get("modelfleet_router_cost_usd_total", {"namespace": "ns", "pool": "p"}) == (
        pytest.approx(0.06)
    )
    assert get("modelfleet_router_images_total", {"namespace": "ns", "pool": "p"}) == 3


# -- the upstream client against a real worker-shaped server ---------------------------


@pytest.fixture
async def worker() -> AsyncIterator[str]:
    """Answers like a worker: n images (the request's n) with the cost header; n=0 asks
    for a 500 that still reports a cost, n=-1 for a 400."""

    async def generate(request: web.Request) -> web.Response:
        n = int((await request.json())["n"])
        if n == 0:
            return web.json_response(
                {"error": {"code": "x", "message": "m"}},
                status=500,
                headers={"X-ModelFleet-Cost-USD": "0.01"},
            )
        if n < 0:
            return web.json_response({"error": {"code": "x", "message": "m"}}, status=400)
        return web.Response(
            body=_answer(n),
            content_type="application/json",
            headers={"X-ModelFleet-Cost-USD": f"{0.04 * n}"},
        )

    app = web.Application()
    app.router.add_post("/v1/images/generations", generate)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


async def test_upstream_result_carries_cost_and_images(worker: str) -> None:
    client = UpstreamClient()
    await client.start()
    try:
        ok = await client.generate(worker, b'{"n": 3}', 5.0)
        assert (ok.outcome, ok.images, ok.cost_usd) == (Attempt.OK, 3, pytest.approx(0.12))
        failed = await client.generate(worker, b'{"n": 0}', 5.0)
        assert (failed.outcome, failed.images, failed.cost_usd) == (
            Attempt.UPSTREAM_ERROR,
            0,
            pytest.approx(0.01),
        )
        bad = await client.generate(worker, b'{"n": -1}', 5.0)
        assert (bad.outcome, bad.images, bad.cost_usd) == (Attempt.CLIENT_ERROR, 0, None)
    finally:
        await client.close()


# -- measuring: both pools, through the router provider over a real /v1/stats ----------


@pytest.fixture
async def stats_router() -> AsyncIterator[str]:
    """A /v1/stats endpoint serving what AttemptStats (the router's own) counted: the
    stable at 0.04 USD an image, the candidate at 0.03 (two images an answer)."""
    s = AttemptStats()
    for i in range(20):
        s.record("ns", "stable", Attempt.OK, 0.2, 100.0 + i)
        s.record_cost("ns", "stable", Attempt.OK, 100.0 + i, 0.04, 1)
        s.record("ns", "cand", Attempt.OK, 0.2, 100.0 + i)
        s.record_cost("ns", "cand", Attempt.OK, 100.0 + i, 0.06, 2)

    async def stats(request: web.Request) -> web.Response:
        window = int(request.query.get("window", "60"))
        pools = [w.wire(s.bounds) for w in s.window(window, 120.0)]
        return web.json_response({"window_seconds": window, "pools": pools})

    app = web.Application()
    app.router.add_get("/v1/stats", stats)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


async def test_max_only_cost_check_measures_both_pools(stats_router: str) -> None:
    spec = CanarySpec.model_validate(
        {
            "routingPolicy": "p",
            "route": "all",
            "stablePool": "stable",
            "candidatePool": "cand",
            "analysis": {"metrics": [COST_MAX.model_dump(by_alias=True, exclude_none=True)]},
        }
    )
    plan = AnalysisPlan("full", 0, "t", 60, tuple(spec.analysis.metrics))
    provider = RouterStatsProvider([stats_router])
    try:
        obs = await collect_analysis(provider, plan, spec, "ns")
    finally:
        await provider.close()
    cost = obs.metrics["cost"]
    assert cost.stable is not None
    assert (cost.candidate.value, cost.candidate.samples) == (pytest.approx(0.03), 40)
    assert (cost.stable.value, cost.stable.samples) == (pytest.approx(0.04), 20)
    r = judge_metric(COST_MAX, cost, spec.analysis.min_requests)
    assert (r.result, r.stable_value, r.threshold) == ("pass", pytest.approx(0.04), 0.05)
    assert r.ratio == pytest.approx(0.75)
