"""Tiers at a real router (subprocess, --config) in front of slow stand-in workers: under
saturation previews are shed before production; a request whose expected time to answer
exceeds its tier's latency budget is refused at once, or degraded when the policy says so;
a tier the policy does not declare is 400 listing those it does."""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from modelfleet.routing.clients import key_digest
from modelfleet_dev.routerproc import RouterProcess, policy
from polling import wait_for_async
from router_client import metric, metrics, post

pytestmark = pytest.mark.timeout(120)

SOON: dict[str, float] = {"timeout": 10.0, "interval": 0.02}
# A refusal by expected time is decided before queueing: it answers in router time, far
# under any budget here (the smallest is 500 ms). Loaded CI hosts take tens of ms.
AT_ONCE_S = 0.25


def _tiers(
    name: str,
    routes: list[dict[str, Any]],
    tiers: list[dict[str, Any]],
    admission: dict[str, Any] | None = None,
) -> dict[str, Any]:
    doc = policy(routes, name=name, admission=admission)
    doc["spec"]["tiers"] = tiers
    return doc


SLOW_BIG_S, SMALL_S, QUEUE_S = 0.8, 0.02, 0.2
DEGRADE = _tiers(
    "degrade",
    [
        {"name": "fast", "match": {"tiers": ["preview"]}, "pool": "small"},
        {"name": "all", "pool": "big"},
    ],
    [
        {"name": "production", "priority": 100, "latencyBudgetMs": 500,
         "degradeTo": {"slow": "preview"}},
        {"name": "preview", "priority": 0, "latencyBudgetMs": 500},
    ],
)  # fmt: skip
STRICT = _tiers(
    "strict",
    [{"name": "all", "pool": "big"}],
    [{"name": "production", "priority": 100, "latencyBudgetMs": 500}],
)
QUEUE = _tiers(
    "queue",
    [{"name": "all", "pool": "q"}],
    [
        {"name": "production", "priority": 100},
        {"name": "preview", "priority": 0, "latencyBudgetMs": 1000},
    ],
    {"maxInFlight": 1, "maxQueue": 16, "queueTimeoutMs": 30000},
)
# No spec.tiers: today's pair, production ahead of preview.
SHED = policy(
    [{"name": "all", "pool": "shed"}],
    name="shed",
    admission={"maxInFlight": 1, "maxQueue": 2, "queueTimeoutMs": 30000},
)


async def _router(workers: Any, router: Any) -> Any:
    big = await workers("big", delay_s=SLOW_BIG_S)
    small = await workers("small", delay_s=SMALL_S)
    q = await workers("q", delay_s=QUEUE_S)
    shed = await workers("shed", delay_s=0.5)
    r = router(
        [DEGRADE, STRICT, QUEUE, SHED],
        {"big": [big.url], "small": [small.url], "q": [q.url], "shed": [shed.url]},
    )
    return r, shed


def _as(name: str, tier: str | None = None) -> dict[str, str]:
    h = {"X-ModelFleet-Policy": name}
    if tier:
        h["X-ModelFleet-Tier"] = tier
    return h


async def test_latency_budgets_refuse_at_once_or_degrade_and_tiers_are_checked(
    workers: Any, http: aiohttp.ClientSession, router: Any
) -> None:
    r, _ = await _router(workers, router)
    # Recent times: the big pool takes 0.8 s a request, over production's 500 ms budget.
    for name in ("degrade", "strict"):
        assert (await post(http, r, {"prompt": "warm"}, _as(name)))[0] == 200
    assert (await post(http, r, {"prompt": "warm"}, _as("degrade", "preview")))[0] == 200

    # degradeTo.slow: routed as a preview (its route, its pool), said so in a header.
    status, h, _doc, elapsed = await post(http, r, {"prompt": "a fox"}, _as("degrade"))
    assert status == 200
    assert h["X-ModelFleet-Degraded"] == "slow production->preview"
    assert (h["X-ModelFleet-Route"], h["X-ModelFleet-Pool"]) == ("fast", "small")
    assert elapsed < SLOW_BIG_S, f"degraded request took {elapsed * 1000:.0f} ms"

    # No degradeTo: 429 at once, with the expected time and the budget.
    status, h, doc, elapsed = await post(http, r, {"prompt": "a fox"}, _as("strict"))
    assert status == 429 and doc["error"]["code"] == "latency_budget_exceeded", doc
    assert "exceeds the tier's latency budget of 500 ms" in doc["error"]["message"]
    assert doc["error"]["message"].startswith("tier production: expected time to answer")
    assert int(h["Retry-After"]) >= 1
    assert elapsed < AT_ONCE_S, f"refusal took {elapsed * 1000:.0f} ms"

    m = await metrics(http, r)
    degraded = "modelfleet_router_degraded_total"
    assert metric(m, degraded, policy="degrade", tier="production", to="preview") == 1
    shed = "modelfleet_router_shed_total"
    assert metric(m, shed, policy="strict", tier="production", reason="latency_budget") == 1
    assert metric(m, "modelfleet_router_requests_total", policy="strict", outcome="rejected") == 1

    # From queue depth: one slot, 0.2 s a request; behind nine queued production requests
    # (no budget, a higher priority) a preview would wait ~2 s, over its 1 s budget.
    assert (await post(http, r, {"prompt": "warm"}, _as("queue", "preview")))[0] == 200
    prod = [
        asyncio.create_task(post(http, r, {"prompt": f"p{i}"}, _as("queue"))) for i in range(10)
    ]

    async def nine_queued() -> bool:
        m = await metrics(http, r)
        return bool(metric(m, "modelfleet_router_queue_depth", policy="queue") == 9)

    # Even if a few are served before the preview arrives, it would wait over 1 s.
    await wait_for_async(nine_queued, **SOON, what="9 production requests queued")
    status, _h, doc, elapsed = await post(http, r, {"prompt": "v"}, _as("queue", "preview"))
    assert status == 429 and doc["error"]["code"] == "latency_budget_exceeded", doc
    assert elapsed < AT_ONCE_S, f"refusal took {elapsed * 1000:.0f} ms"
    assert all(s == 200 for s, *_ in await asyncio.gather(*prod))

    # A tier the policy does not declare: 400 naming the field, listing the tiers.
    status, _h, doc, _e = await post(http, r, {"prompt": "x", "tier": "gold"}, _as("queue"))
    assert status == 400 and doc["error"]["param"] == "tier"
    assert doc["error"]["message"].endswith("tier must be one of production, preview")


LOW_KEY, HIGH_KEY = "mf-tiers-low-5c0e1d7a9b", "mf-tiers-high-8f2a4c6e1d"
KEYED = policy(
    [{"name": "all", "pool": "shed"}],
    name="keyed",
    admission={"maxInFlight": 1, "maxQueue": 1, "queueTimeoutMs": 30000},
)


def _keyed_config(path: Path, worker: str) -> Path:
    anonymous = copy.deepcopy(SHED)
    anonymous["spec"]["access"] = {"anonymous": True}
    keys = [
        {"id": "low", "sha256": key_digest(LOW_KEY).hex(), "priority": 0},
        {"id": "high", "sha256": key_digest(HIGH_KEY).hex(), "priority": 5},
    ]
    doc = {"policies": [anonymous, KEYED], "endpoints": {"shed": [worker]}, "clientKeys": keys}
    path.write_text(yaml.safe_dump(doc))
    return path


async def test_saturation_sheds_previews_before_production_and_low_keys_first(
    workers: Any, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    # 1 s a request: the steps below, each awaited, fit well inside one (a production
    # request finishing early would free a slot and leave the queue not full).
    worker = await workers("shed", delay_s=1.0)
    with RouterProcess(
        _keyed_config(tmp_path / "r.yaml", worker.url), ("--client-auth", "keys")
    ) as r:
        await _sheds(http, r, worker)
        await _sheds_low_keys_first(http, r, worker)


async def _sheds(http: aiohttp.ClientSession, r: RouterProcess, worker: Any) -> None:
    p0 = asyncio.create_task(post(http, r, {"prompt": "p0"}, _as("shed")))
    await wait_for_async(lambda: worker.requests == 1, **SOON, what="p0 at the worker")

    async def depth(n: int) -> bool:
        m = await metrics(http, r)
        return bool(metric(m, "modelfleet_router_queue_depth", policy="shed") == n)

    v1 = asyncio.create_task(post(http, r, {"prompt": "v1"}, _as("shed", "preview")))
    await wait_for_async(lambda: depth(1), **SOON, what="v1 queued")
    v2 = asyncio.create_task(post(http, r, {"prompt": "v2"}, _as("shed", "preview")))
    await wait_for_async(lambda: depth(2), **SOON, what="v2 queued")
    # The queue is full: each production request takes the newest preview's place.
    p1 = asyncio.create_task(post(http, r, {"prompt": "p1"}, _as("shed")))
    status, _h, doc, _e = await v2
    assert status == 429 and doc["error"]["code"] == "overloaded"
    assert not v1.done()
    p2 = asyncio.create_task(post(http, r, {"prompt": "p2"}, _as("shed")))
    status, _h, doc, _e = await v1
    assert status == 429 and doc["error"]["code"] == "overloaded"
    # Full of production: a preview is refused at once, nothing is shed for it.
    status, _h, doc, elapsed = await post(http, r, {"prompt": "v3"}, _as("shed", "preview"))
    assert status == 429 and doc["error"]["code"] == "overloaded"
    assert elapsed < AT_ONCE_S
    assert [s for s, *_ in await asyncio.gather(p0, p1, p2)] == [200, 200, 200]

    m = await metrics(http, r)
    shed = "modelfleet_router_shed_total"
    assert metric(m, shed, policy="shed", tier="preview", reason="evicted") == 2
    assert metric(m, shed, policy="shed", tier="preview", reason="queue_full") == 1
    assert metric(m, shed, policy="shed", tier="production") == 0


async def _sheds_low_keys_first(http: aiohttp.ClientSession, r: RouterProcess, worker: Any) -> None:
    """One tier, two keys: a full queue sheds the low-priority key's request for the
    high one's, and refuses the low key while the high one waits."""
    before = worker.requests
    low = {"X-ModelFleet-Policy": "keyed", "Authorization": f"Bearer {LOW_KEY}"}
    high = {"X-ModelFleet-Policy": "keyed", "Authorization": f"Bearer {HIGH_KEY}"}
    h0 = asyncio.create_task(post(http, r, {"prompt": "h0"}, high))
    await wait_for_async(lambda: worker.requests == before + 1, **SOON, what="h0 at the worker")
    l1 = asyncio.create_task(post(http, r, {"prompt": "l1"}, low))

    async def queued() -> bool:
        m = await metrics(http, r)
        return bool(metric(m, "modelfleet_router_queue_depth", policy="keyed") == 1)

    await wait_for_async(queued, **SOON, what="l1 queued")
    h1 = asyncio.create_task(post(http, r, {"prompt": "h1"}, high))
    status, _h, doc, _e = await l1
    assert status == 429 and doc["error"]["code"] == "overloaded"
    status, _h, doc, _e = await post(http, r, {"prompt": "l2"}, low)
    assert status == 429 and doc["error"]["code"] == "overloaded"
    assert [s for s, *_ in await asyncio.gather(h0, h1)] == [200, 200]
    m = await metrics(http, r)
    shed = "modelfleet_router_shed_total"
    assert metric(m, shed, policy="keyed", reason="evicted") == 1
    assert metric(m, shed, policy="keyed", reason="queue_full") == 1
