"""Scale from zero through the real router (subprocess, static config): a request for a pool
at zero replicas is held, shows in GET /v1/demand, and is served with no error once the
pool's first endpoint appears (a SIGHUP'd config stands in for the EndpointSlice watch);
a hold that ends without one falls back, or answers 503 pool_starting with Retry-After."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from modelfleet_dev.routerproc import RouterProcess, policy
from polling import wait_for_async
from router_client import metric, metrics, post

pytestmark = pytest.mark.timeout(120)

SOON: dict[str, float] = {"timeout": 10.0, "interval": 0.02}
BODY = {"prompt": "a lighthouse at dusk", "size": "256x256"}


def _write(path: Path, policies: list[dict[str, Any]], endpoints: dict[str, list[str]]) -> Path:
    doc = {"policies": policies, "endpoints": endpoints, "scaleFromZero": ["cold"]}
    path.write_text(yaml.safe_dump(doc))
    return path


def _policy(fallbacks: list[str] | None = None, **admission: Any) -> dict[str, Any]:
    route: dict[str, Any] = {"name": "all", "pool": "cold"}
    if fallbacks:
        route["fallbacks"] = fallbacks
    return policy([route], admission=admission or None)


async def _demand(s: aiohttp.ClientSession, r: RouterProcess) -> dict[str, dict[str, int]]:
    async with s.get(r.url + "/v1/demand") as resp:
        assert resp.status == 200
        doc = await resp.json()
    assert isinstance(doc["time"], float) and abs(doc["time"] - time.time()) < 60
    return {row["pool"]: row for row in doc["pools"]}


async def test_held_until_the_first_endpoint_then_served_without_error(
    tmp_path: Path, workers: Any, http: aiohttp.ClientSession
) -> None:
    w = await workers("cold")
    # One slot: the held request keeps it, so a second one queues behind it.
    pol = [_policy(maxInFlight=1, queueTimeoutMs=60000)]
    cfg = _write(tmp_path / "r.yaml", pol, {})
    with RouterProcess(cfg) as r:
        assert await _demand(http, r) == {}
        first = asyncio.create_task(post(http, r, BODY))
        await wait_for_async(
            lambda: _demand(http, r), until=lambda d: d.get("cold", {}).get("held") == 1,
            **SOON, what="the first request held for pool cold",
        )  # fmt: skip
        second = asyncio.create_task(post(http, r, BODY))
        d = await wait_for_async(
            lambda: _demand(http, r), until=lambda d: d["cold"]["queued"] == 1,
            **SOON, what="the second request queued behind the held one",
        )  # fmt: skip
        assert d["cold"] == {
            "namespace": "default", "pool": "cold", "in_flight": 0, "queued": 1, "held": 1
        }  # fmt: skip
        m = await metrics(http, r)
        assert metric(m, "modelfleet_router_held_requests", pool="cold") == 1
        assert not first.done() and w.requests == 0
        # The pool's first worker becomes ready.
        _write(cfg, pol, {"cold": [w.url]})
        assert r.proc is not None
        r.proc.send_signal(signal.SIGHUP)
        for task in (first, second):
            status, headers, doc, _ = await asyncio.wait_for(task, 10)
            assert status == 200, doc
            assert headers["X-ModelFleet-Pool"] == "cold"
            assert headers["X-ModelFleet-Fallback"] == "false"
            assert doc["data"]
        assert w.requests == 2
        assert await _demand(http, r) == {}
        m = await metrics(http, r)
        labels = {"namespace": "default", "pool": "cold"}
        assert metric(m, "modelfleet_router_cold_start_seconds_count", **labels) == 1
        assert metric(m, "modelfleet_router_cold_start_seconds_sum", **labels) > 0
        assert metric(m, "modelfleet_router_holds_total", outcome="served", **labels) == 1
        assert metric(m, "modelfleet_router_held_requests", **labels) == 0
        assert metric(m, "modelfleet_router_requests_total", outcome="ok") == 2


async def test_demand_counts_requests_at_the_workers(
    tmp_path: Path, workers: Any, http: aiohttp.ClientSession
) -> None:
    w = await workers("cold", delay_s=2.0)
    cfg = _write(tmp_path / "r.yaml", [_policy()], {"cold": [w.url]})
    with RouterProcess(cfg) as r:
        task = asyncio.create_task(post(http, r, BODY))
        await wait_for_async(lambda: w.in_flight == 1, **SOON, what="the worker rendering")
        d = await _demand(http, r)
        assert d["cold"]["in_flight"] == 1 and d["cold"]["held"] == 0
        status, *_ = await asyncio.wait_for(task, 10)
        assert status == 200
        assert await _demand(http, r) == {}


async def test_hold_ends_at_the_queue_timeout_and_falls_back(
    tmp_path: Path, workers: Any, http: aiohttp.ClientSession
) -> None:
    warm = await workers("warm")
    cfg = _write(tmp_path / "r.yaml", [_policy(["warm"], queueTimeoutMs=400)], {"warm": [warm.url]})
    with RouterProcess(cfg) as r:
        status, headers, doc, seconds = await post(http, r, BODY)
        assert status == 200, doc
        assert headers["X-ModelFleet-Pool"] == "warm"
        assert headers["X-ModelFleet-Fallback"] == "true"
        assert seconds >= 0.4  # it waited for pool cold first
        m = await metrics(http, r)
        assert metric(m, "modelfleet_router_holds_total", pool="cold", outcome="expired") == 1
        # Nothing came up: no cold start was measured.
        assert metric(m, "modelfleet_router_cold_start_seconds_count", pool="cold") == 0


async def test_hold_without_fallback_answers_503_with_retry_after(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    cfg = _write(tmp_path / "r.yaml", [_policy(queueTimeoutMs=300)], {})
    with RouterProcess(cfg) as r:
        status, headers, doc, seconds = await post(http, r, BODY)
        assert status == 503
        assert doc["error"]["code"] == "pool_starting"
        assert "pool cold is scaling up from zero replicas" in doc["error"]["message"]
        assert int(headers["Retry-After"]) >= 1
        assert seconds >= 0.3


async def test_hold_limit_per_pool(
    tmp_path: Path, workers: Any, http: aiohttp.ClientSession
) -> None:
    """Beyond --max-held-per-pool a request is not held: 503 at once; the held one is
    still served when the worker comes."""
    w = await workers("cold")
    pol = [_policy(queueTimeoutMs=60000)]
    cfg = _write(tmp_path / "r.yaml", pol, {})
    with RouterProcess(cfg, ["--max-held-per-pool", "1"]) as r:
        held = asyncio.create_task(post(http, r, BODY))
        await wait_for_async(
            lambda: _demand(http, r), until=lambda d: d.get("cold", {}).get("held") == 1,
            **SOON, what="one request held",
        )  # fmt: skip
        status, headers, doc, seconds = await post(http, r, BODY)
        assert status == 503 and doc["error"]["code"] == "pool_starting"
        assert "already holds as many requests" in doc["error"]["message"]
        assert "Retry-After" in headers
        assert seconds < 5  # not held
        _write(cfg, pol, {"cold": [w.url]})
        assert r.proc is not None
        r.proc.send_signal(signal.SIGHUP)
        status, *_ = await asyncio.wait_for(held, 10)
        assert status == 200
        m = await metrics(http, r)
        assert metric(m, "modelfleet_router_holds_total", outcome="hold_limit") == 1


async def test_a_pool_not_scaled_from_zero_is_not_held(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    pol = [policy([{"name": "all", "pool": "fixed"}], admission={"queueTimeoutMs": 60000})]
    cfg = _write(tmp_path / "r.yaml", pol, {})
    with RouterProcess(cfg) as r:
        status, _, doc, seconds = await post(http, r, BODY)
        assert status == 503 and doc["error"]["code"] == "no_endpoints"
        assert seconds < 5


async def test_a_client_leaving_while_held_frees_its_slot(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    pol = [_policy(maxInFlight=1, queueTimeoutMs=60000)]
    cfg = _write(tmp_path / "r.yaml", pol, {})
    with RouterProcess(cfg) as r:
        held = asyncio.create_task(post(http, r, BODY))
        await wait_for_async(
            lambda: _demand(http, r), until=lambda d: d.get("cold", {}).get("held") == 1,
            **SOON, what="one request held",
        )  # fmt: skip
        held.cancel()  # the client hangs up
        await wait_for_async(
            lambda: _demand(http, r), until=lambda d: d == {}, **SOON, what="no demand left"
        )
        m = await metrics(http, r)
        assert metric(m, "modelfleet_router_holds_total", outcome="cancelled") == 1
        assert metric(m, "modelfleet_router_in_flight") == 0
        # The only slot is free again: the next request is held, not queued.
        again = asyncio.create_task(post(http, r, BODY))
        d = await wait_for_async(
            lambda: _demand(http, r), until=lambda d: d.get("cold", {}).get("held") == 1,
            **SOON, what="the next request held",
        )  # fmt: skip
        assert d["cold"]["queued"] == 0
        again.cancel()  # and leave nothing held for the router's shutdown to wait on
        await wait_for_async(
            lambda: _demand(http, r), until=lambda d: d == {}, **SOON, what="no demand left"
        )


async def test_held_requests_leave_slots_to_the_policys_warm_pools(
    tmp_path: Path, workers: Any, http: aiohttp.ClientSession
) -> None:
    """--max-held-share 0.5 of maxInFlight 2: one request held for pool cold; the next for
    cold is not held (503 at once) and a request for pool warm still gets the other slot."""
    warm = await workers("warm")
    routes = [
        {"name": "fast", "match": {"tiers": ["preview"]}, "pool": "warm"},
        {"name": "all", "pool": "cold"},
    ]
    pol = [policy(routes, admission={"maxInFlight": 2, "queueTimeoutMs": 60000})]
    cfg = _write(tmp_path / "r.yaml", pol, {"warm": [warm.url]})
    with RouterProcess(cfg) as r:
        held = asyncio.create_task(post(http, r, BODY))
        await wait_for_async(
            lambda: _demand(http, r), until=lambda d: d.get("cold", {}).get("held") == 1,
            **SOON, what="one request held",
        )  # fmt: skip
        status, _, doc, seconds = await post(http, r, BODY)
        assert (status, doc["error"]["code"]) == (503, "pool_starting") and seconds < 5
        status, headers, _, seconds = await post(http, r, {**BODY, "tier": "preview"})
        assert (status, headers["X-ModelFleet-Pool"]) == (200, "warm") and seconds < 5
        held.cancel()
        await wait_for_async(
            lambda: _demand(http, r), until=lambda d: d == {}, **SOON, what="no demand left"
        )
