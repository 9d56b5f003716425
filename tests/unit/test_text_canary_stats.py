"""Text canary metrics through the router: worker headers -> AttemptStats windows ->
/v1/stats -> the router provider's text-accuracy and text-pass-rate."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import pytest
from aiohttp import web

from modelfleet.api.canary import MetricSpec
from modelfleet.canary.ports import MetricQuery
from modelfleet.providers.router_stats import (
    RouterStatsProvider,
    StatsFormatError,
    measurement_for,
    merge_stats,
)
from modelfleet.routing.ladder import Attempt
from modelfleet.routing.stats import AttemptStats, TextSummary

ACC = MetricSpec(name="acc", builtin="text-accuracy", min_ratio_to_stable=0.9)
PASS = MetricSpec(name="pass", builtin="text-pass-rate", min=0.8)
ERR = MetricSpec(name="err", builtin="error-rate", max=0.05)
T = 5000.0


@pytest.mark.parametrize(
    ("headers", "want"),
    [
        (("2", "1", "1.5"), TextSummary(2, 1, 1.5)),
        (("1", "0", "0"), TextSummary(1, 0, 0.0)),
        ((None, "1", "1"), None),  # no verification: no sample
        (("0", "0", "0"), None),
        (("2", "3", "1"), None),  # more passed than verified
        (("2", "1", "2.5"), None),  # accuracy sum above verified
        (("2", "1", "nan"), None),
        (("x", "1", "1"), None),
        (("2", None, "1"), None),
        (("1000", "1", "1"), None),  # no response carries that many images
    ],
)
def test_text_headers_parse(
    headers: tuple[str | None, str | None, str | None], want: TextSummary | None
) -> None:
    assert TextSummary.parse(*headers) == want


def stats_with(records: Sequence[tuple[str, Attempt, TextSummary | None]]) -> AttemptStats:
    s = AttemptStats()
    for pool, outcome, text in records:
        s.record("ns", pool, outcome, 0.2, T, 0.1, 1, text)
    return s


def doc(s: AttemptStats, window: int = 60, now: float = T) -> dict[str, Any]:
    pools = [w.wire(s.bounds, s.service_bounds) for w in s.window(window, now)]
    return {"window_seconds": window, "pools": pools}


def test_window_counts_verified_renders_of_ok_attempts_only() -> None:
    s = stats_with(
        [
            ("p", Attempt.OK, TextSummary(2, 1, 1.5)),
            ("p", Attempt.OK, TextSummary(1, 1, 1.0)),
            ("p", Attempt.OK, None),  # nothing verified: a request, not a text sample
            ("p", Attempt.UPSTREAM_ERROR, TextSummary(1, 0, 0.0)),  # errors carry no text
            ("q", Attempt.OK, None),
        ]
    )
    wire = {p["pool"]: p for p in doc(s)["pools"]}
    assert wire["p"]["text"] == {"verified": 3, "passed": 2, "accuracy_sum": 2.5}
    assert wire["p"]["requests"] == 4
    assert "text" not in wire["q"]
    # out of the window: gone
    later = {p["pool"]: p for p in doc(s, 10, T + 30)["pools"]}
    assert "text" not in later["p"]


def test_merge_and_measure_two_routers() -> None:
    a = stats_with([("cand", Attempt.OK, TextSummary(4, 1, 1.64))] * 5)
    b = stats_with([("cand", Attempt.OK, TextSummary(2, 2, 2.0))] * 5)
    b.record("ns", "stable", Attempt.OK, 0.2, T, text=TextSummary(8, 8, 7.76))
    merged = merge_stats([doc(a), doc(b)])
    acc = measurement_for(merged[("ns", "cand")], "text-accuracy")
    assert acc.value == pytest.approx((5 * 1.64 + 5 * 2.0) / 30) and acc.samples == 30
    rate = measurement_for(merged[("ns", "cand")], "text-pass-rate")
    assert rate.value == pytest.approx(15 / 30) and rate.samples == 30
    stable = measurement_for(merged[("ns", "stable")], "text-accuracy")
    assert stable.value == pytest.approx(0.97) and stable.samples == 8
    # requests are still counted apart from renders
    assert measurement_for(merged[("ns", "cand")], "error-rate").samples == 10


def test_no_verified_renders_is_no_data() -> None:
    merged = merge_stats([doc(stats_with([("p", Attempt.OK, None)]))])
    m = measurement_for(merged[("ns", "p")], "text-accuracy")
    assert (m.value, m.samples, m.error, m.no_series) == (None, 0, None, False)
    assert measurement_for(None, "text-pass-rate").samples == 0


@pytest.mark.parametrize(
    "text",
    [
        "lots",
        {"verified": 2, "passed": 3, "accuracy_sum": 1},
        {"verified": 2, "passed": 1, "accuracy_sum": -1},
    ],
)
def test_bad_text_object_is_a_format_error(text: Any) -> None:
    bad = {"pools": [{"namespace": "ns", "pool": "p", "requests": 1, "text": text}]}
    with pytest.raises(StatsFormatError):
        merge_stats([bad])


Serve = Callable[[Any], Awaitable[str]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    runners: list[web.AppRunner] = []

    async def start(body: Any) -> str:
        async def stats(_: web.Request) -> web.StreamResponse:
            return web.json_response(body)

        app = web.Application()
        app.router.add_get("/v1/stats", stats)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    yield start
    for r in runners:
        await r.cleanup()


async def test_provider_serves_text_metrics(serve: Serve) -> None:
    s = stats_with(
        [("cand", Attempt.OK, TextSummary(1, 0, 0.41))] * 20
        + [("stable", Attempt.OK, TextSummary(1, 1, 0.97))] * 20
    )
    url = await serve(doc(s))
    p = RouterStatsProvider([url])
    try:
        acc = await p.measure(MetricQuery("ns", "cand", ACC, 60, "stable", "cand"))
        assert acc.value == pytest.approx(0.41) and acc.samples == 20
        stable = await p.measure(MetricQuery("ns", "stable", ACC, 60, "stable", "cand"))
        assert stable.value == pytest.approx(0.97)
        rate = await p.measure(MetricQuery("ns", "cand", PASS, 60, "stable", "cand"))
        assert rate.value == 0.0 and rate.samples == 20
    finally:
        await p.close()
