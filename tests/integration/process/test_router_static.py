"""The real router (subprocess, --config) in front of in-process stand-in workers."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from modelfleet_dev.routerproc import policy, write_config
from polling import wait_for_async
from router_client import metric, metrics, post

pytestmark = pytest.mark.timeout(120)


# Everything these tests wait for happens within milliseconds on loopback.
SOON: dict[str, float] = {"timeout": 5.0, "interval": 0.02}

ROUTES = [
    {"name": "text", "match": {"promptPatterns": ["\\bsign\\b"]}, "pool": "typo"},
    {"name": "fast", "match": {"tiers": ["preview"]}, "pool": "small", "fallbacks": ["big"]},
    {"name": "photo", "match": {"tags": ["photoreal"]}, "pool": "photo"},
    {"name": "all", "pool": "big", "fallbacks": ["small"]},
]


async def test_routes_honoured(workers: Any, http: aiohttp.ClientSession, router: Any) -> None:
    ws = {n: await workers(n) for n in ("typo", "small", "photo", "big")}
    other = await workers("other")
    r = router(
        [
            policy(ROUTES),
            policy([{"name": "only", "pool": "other"}], name="second"),
        ],
        {n: [w.url] for n, w in {**ws, "other": other}.items()},
    )
    cases = [
        ({"prompt": "a cat"}, {}, "all", "big"),
        ({"prompt": "a cat", "tier": "preview"}, {}, "fast", "small"),
        ({"prompt": "a cat"}, {"X-ModelFleet-Tier": "preview"}, "fast", "small"),
        ({"prompt": "a SIGN saying hello", "tier": "preview"}, {}, "text", "typo"),
        ({"prompt": "a cat", "tags": ["photoreal", "x"]}, {}, "photo", "photo"),
        (
            {"prompt": "a cat", "tier": "preview"},
            {"X-ModelFleet-Policy": "second"},
            "only",
            "other",
        ),
    ]
    for body, headers, route, pool in cases:
        status, h, doc, _ = await post(http, r, body, headers)
        assert status == 200, doc
        assert (h["X-ModelFleet-Route"], h["X-ModelFleet-Pool"]) == (route, pool)
        assert h["X-ModelFleet-Fallback"] == "false"
        assert doc["data"][0]["b64_json"]
    # Router-only fields never reach the worker.
    assert ws["photo"].bodies == [{"prompt": "a cat"}]
    status, _, doc, _ = await post(http, r, {"prompt": "x"}, {"X-ModelFleet-Policy": "nope"})
    assert status == 400 and doc["error"]["code"] == "unknown_policy"


async def test_malformed_and_large_bodies_never_forwarded(
    workers: Any, http: aiohttp.ClientSession, router: Any
) -> None:
    big = await workers("big")
    r = router([policy(ROUTES[:2])], {"big": [big.url], "small": [big.url]})
    for body, status, code in [
        (b"{not json", 400, "invalid_json"),
        ({"prompt": "x", "n": 99}, 400, "invalid_request"),
        ({"prompt": "x", "tier": "gold"}, 400, "invalid_request"),
        ({"prompt": "no route for production"}, 400, "no_route"),
        (b'{"prompt": "' + b"x" * (1024 * 1024) + b'"}', 413, "body_too_large"),
    ]:
        got, _, doc, _ = await post(http, r, body)
        assert got == status, doc
        assert doc["error"]["code"] == code
        assert set(doc["error"]) == {"code", "message", "param"}
    assert big.requests == 0
    async with http.get(r.url + "/nope") as resp:
        assert resp.status == 404
        assert (await resp.json())["error"]["code"] == "not_found"


async def test_dead_endpoint_is_retried_on_another(
    workers: Any, http: aiohttp.ClientSession, router: Any
) -> None:
    a, b = await workers("a"), await workers("b")
    r = router([policy([{"name": "all", "pool": "big"}])], {"big": [a.url, b.url]})
    await a.stop()  # refuses connections from now on
    results = [await post(http, r, {"prompt": f"p{i}"}) for i in range(20)]
    assert all(s == 200 for s, *_ in results)
    assert all(h["X-ModelFleet-Fallback"] == "false" for _, h, *_ in results)
    m = await metrics(http, r)
    assert (
        metric(m, "modelfleet_router_upstream_requests_total", pool="big", outcome="connect_error")
        >= 1
    )
    assert metric(m, "modelfleet_router_retries_total", pool="big") >= 1
    # The dead endpoint is ejected, so it is not hit once per request.
    assert metric(m, "modelfleet_router_upstream_requests_total", outcome="connect_error") < 10
    assert metric(m, "modelfleet_router_requests_total", outcome="ok") == 20


@pytest.mark.parametrize("mode", ["fail", "garbage", "reset", "busy"])
async def test_failing_endpoint_is_retried(
    mode: str, workers: Any, http: aiohttp.ClientSession, router: Any
) -> None:
    a, b = await workers("a"), await workers("b")
    a.mode = mode
    r = router([policy([{"name": "all", "pool": "big"}])], {"big": [a.url, b.url]})
    # Ties are broken at random, so six requests missed the failing endpoint 1 time in 64:
    # send until it has been tried (64 requests leave a 2^-64 chance), every answer from b.
    for i in range(64):
        status, _h, doc, _ = await post(http, r, {"prompt": f"p{i}"})
        assert status == 200, doc
        assert doc["worker"] == "b"
        if a.requests >= 1:
            break
    assert a.requests >= 1


async def test_whole_pool_down_falls_back(
    workers: Any, http: aiohttp.ClientSession, router: Any
) -> None:
    a, b, s = await workers("a"), await workers("b"), await workers("s")
    a.mode = b.mode = "fail"
    r = router(
        [policy([{"name": "all", "pool": "big", "fallbacks": ["none", "small"]}])],
        {"big": [a.url, b.url], "small": [s.url]},
    )
    status, h, doc, _ = await post(http, r, {"prompt": "x"})
    assert status == 200, doc
    assert (h["X-ModelFleet-Pool"], h["X-ModelFleet-Fallback"]) == ("small", "true")
    assert a.requests + b.requests == 2  # one retry in the pool, then on
    m = await metrics(http, r)
    # "none" has no endpoints: skipped without an attempt.
    assert metric(m, "modelfleet_router_fallbacks_total", from_pool="none", to_pool="small") == 1
    assert metric(m, "modelfleet_router_requests_total", pool="small", outcome="ok") == 1
    # Everything down: 503 naming the pools.
    s.mode = "fail"
    status, _, doc, _ = await post(http, r, {"prompt": "x"})
    assert status == 503
    assert "big" in doc["error"]["message"] and "small" in doc["error"]["message"]


async def test_client_errors_pass_through_unretried(
    workers: Any, http: aiohttp.ClientSession, router: Any
) -> None:
    a, b, s = await workers("a"), await workers("b"), await workers("s")
    a.mode = b.mode = "bad_request"
    r = router(
        [policy([{"name": "all", "pool": "big", "fallbacks": ["small"]}])],
        {"big": [a.url, b.url], "small": [s.url]},
    )
    status, h, doc, _ = await post(http, r, {"prompt": "x"})
    assert status == 400
    assert doc["error"]["code"] == "invalid_request" and "refuses" in doc["error"]["message"]
    assert h["X-ModelFleet-Pool"] == "big"
    assert (a.requests + b.requests, s.requests) == (1, 0)


async def test_hang_times_out_then_falls_back(
    workers: Any, http: aiohttp.ClientSession, router: Any
) -> None:
    a, s = await workers("a"), await workers("s")
    a.mode = "hang"
    r = router(
        [policy([{"name": "all", "pool": "big", "fallbacks": ["small"]}])],
        {"big": [a.url], "small": [s.url]},
        "--attempt-timeout-s", "0.5",
    )  # fmt: skip
    status, h, _doc, elapsed = await post(http, r, {"prompt": "x"})
    assert status == 200 and h["X-ModelFleet-Fallback"] == "true"
    assert 0.5 <= elapsed < 3
    m = await metrics(http, r)
    assert (
        metric(m, "modelfleet_router_upstream_requests_total", pool="big", outcome="timeout") == 1
    )


async def test_saturation_rejects_fast_and_admitted_complete(
    workers: Any, http: aiohttp.ClientSession, router: Any
) -> None:
    a = await workers("a")
    a.delay_s = 1.0
    r = router(
        [policy([{"name": "all", "pool": "big"}],
                admission={"maxInFlight": 2, "maxQueue": 2, "queueTimeoutMs": 10000})],
        {"big": [a.url]},
    )  # fmt: skip
    # Occupy the 2 slots and the 2 queue places first, then flood.
    held = [asyncio.create_task(post(http, r, {"prompt": f"h{i}"})) for i in range(4)]
    await wait_for_async(lambda: a.requests == 2, **SOON, what="2 requests at the worker")

    async def queued() -> bool:
        return metric(await metrics(http, r), "modelfleet_router_queue_depth") == 2

    await wait_for_async(queued, **SOON, what="2 requests queued")
    flood = await asyncio.gather(*(post(http, r, {"prompt": f"f{i}"}) for i in range(30)))
    assert all(s == 429 for s, *_ in flood)
    assert all(h["Retry-After"] == "1" for _, h, *_ in flood)
    assert all(d["error"]["code"] == "overloaded" for *_, d, _ in flood)
    slowest = max(e for *_, e in flood)
    assert slowest < 0.1, f"429s should be immediate, slowest took {slowest * 1000:.0f} ms"
    assert all(s == 200 for s, *_ in await asyncio.gather(*held))
    m = await metrics(http, r)
    assert metric(m, "modelfleet_router_requests_total", outcome="rejected") == 30
    assert metric(m, "modelfleet_router_requests_total", outcome="ok") == 4
    assert metric(m, "modelfleet_router_in_flight") == 0
    # The router's own view of the pool: one ready worker.
    assert metric(m, "modelfleet_router_endpoints", pool="big") == 1


async def test_queue_timeout_answers_429(
    workers: Any, http: aiohttp.ClientSession, router: Any
) -> None:
    a = await workers("a")
    a.delay_s = 2.0
    r = router(
        [policy([{"name": "all", "pool": "big"}],
                admission={"maxInFlight": 1, "maxQueue": 5, "queueTimeoutMs": 200})],
        {"big": [a.url]},
    )  # fmt: skip
    first = asyncio.create_task(post(http, r, {"prompt": "first"}))
    await wait_for_async(lambda: a.requests == 1, **SOON, what="1 request at the worker")
    status, _h, doc, elapsed = await post(http, r, {"prompt": "second"})
    assert status == 429 and doc["error"]["code"] == "queue_timeout"
    assert 0.2 <= elapsed < 1.5
    assert (await first)[0] == 200


async def test_weights_split(workers: Any, http: aiohttp.ClientSession, router: Any) -> None:
    stable, canary = await workers("stable"), await workers("canary")
    r = router(
        [policy([{"name": "all", "pool": "stable"}],
                status_routes=[{"name": "all", "pools": [{"pool": "stable", "weight": 70},
                                                         {"pool": "canary", "weight": 30}]}])],
        {"stable": [stable.url], "canary": [canary.url]},
    )  # fmt: skip
    n = 600
    sem = asyncio.Semaphore(16)

    async def one(i: int) -> str:
        async with sem:
            status, h, *_ = await post(http, r, {"prompt": f"p{i}"})
            assert status == 200
            return str(h["X-ModelFleet-Pool"])

    pools = await asyncio.gather(*(one(i) for i in range(n)))
    share = pools.count("canary") / n
    sigma = (0.3 * 0.7 / n) ** 0.5
    assert abs(share - 0.3) < 4 * sigma, share
    assert canary.requests == pools.count("canary")


async def test_stats_match_what_was_sent(
    workers: Any, http: aiohttp.ClientSession, router: Any
) -> None:
    good, bad, spare = await workers("good"), await workers("bad"), await workers("spare")
    bad.mode = "fail"
    r = router(
        [policy([{"name": "g", "match": {"tiers": ["preview"]}, "pool": "good"},
                 {"name": "b", "pool": "bad", "fallbacks": ["spare"]}])],
        {"good": [good.url], "bad": [bad.url], "spare": [spare.url]},
        "--retries-per-pool", "0",
    )  # fmt: skip
    for i in range(7):
        assert (await post(http, r, {"prompt": f"g{i}", "tier": "preview"}))[0] == 200
    for i in range(3):
        assert (await post(http, r, {"prompt": f"b{i}"}))[0] == 200  # bad fails, spare serves
    async with http.get(r.url + "/v1/stats", params={"window": "60"}) as resp:
        doc = await resp.json()
    assert doc["window_seconds"] == 60
    by_pool = {p["pool"]: p for p in doc["pools"]}
    assert (by_pool["good"]["requests"], by_pool["good"]["errors"]) == (7, 0)
    assert (by_pool["bad"]["requests"], by_pool["bad"]["errors"]) == (3, 3)
    assert (by_pool["spare"]["requests"], by_pool["spare"]["errors"]) == (3, 0)
    assert by_pool["good"]["latency_buckets"][-1] == ["+Inf", 7]
    assert by_pool["bad"]["latency_buckets"][-1] == ["+Inf", 0]  # latency of ok attempts only
    counts = [c for _, c in by_pool["good"]["latency_buckets"]]
    assert counts == sorted(counts)  # cumulative
    async with http.get(r.url + "/v1/stats", params={"window": "0"}) as resp:
        assert resp.status == 400


async def test_shadow_never_delays_primary(
    workers: Any, http: aiohttp.ClientSession, router: Any
) -> None:
    main, shadow = await workers("main"), await workers("shadow")
    shadow.mode = "hang"
    r = router(
        [policy([{"name": "all", "pool": "main", "shadow": {"pool": "shadowp", "percent": 100}}])],
        {"main": [main.url], "shadowp": [shadow.url]},
        "--attempt-timeout-s", "5",
    )  # fmt: skip
    for i in range(5):
        status, h, _doc, elapsed = await post(http, r, {"prompt": f"p{i}", "tier": "preview"})
        assert status == 200 and h["X-ModelFleet-Pool"] == "main"
        assert elapsed < 1
    await wait_for_async(lambda: shadow.requests == 5, **SOON, what="5 shadow copies")
    assert shadow.bodies[0] == {"prompt": "p0"}


async def test_sighup_reloads(
    workers: Any, http: aiohttp.ClientSession, router: Any, tmp_path: Path
) -> None:
    a, b = await workers("a"), await workers("b")
    r = router([policy([{"name": "all", "pool": "a"}])], {"a": [a.url], "b": [b.url]})
    assert (await post(http, r, {"prompt": "x"}))[1]["X-ModelFleet-Pool"] == "a"
    write_config(r.config, [policy([{"name": "all", "pool": "b"}])], {"a": [a.url], "b": [b.url]})
    assert r.proc is not None
    r.proc.send_signal(signal.SIGHUP)

    async def switched() -> bool:
        return (await post(http, r, {"prompt": "x"}))[1]["X-ModelFleet-Pool"] == "b"

    await wait_for_async(switched, **SOON, what="traffic on pool b after SIGHUP")
    # An invalid file is refused; the running config stays.
    r.config.write_text("policies: []\n")
    r.proc.send_signal(signal.SIGHUP)
    await wait_for_async(lambda: "reload of" in r.logs(), **SOON, what="reload refused in the log")
    assert (await post(http, r, {"prompt": "x"}))[0] == 200
