"""Budgets and requests per minute through real routers: two router processes sharing a
real redis-server, a stand-in worker with a fixed cost per image, 100 concurrent requests
at the edge of a key's budget (overspend at most one request's cost per replica), spend
kept across a router restart, requests per minute shared by the replicas, and the key
never in the answers, /metrics, /v1/stats or the logs."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from modelfleet.kubectl.main import main as kubectl_main
from modelfleet.router.spendstore import RedisSpendStore
from modelfleet.routing.budget import period_of
from modelfleet_dev.fakeworker import FakeWorker
from modelfleet_dev.routerproc import RouterProcess, policy
from redis_fixture import RedisServer

COST = 0.01  # USD per image, as the stand-in worker reports it
BUDGET_KEY = "sk-budget-4f1c9a0e7d2b"
RATE_KEY = "sk-rate-77aa01bc3e"


def config(path: Path, worker: FakeWorker) -> Path:
    keys = [
        {
            "id": "team-budget",
            "sha256": hashlib.sha256(BUDGET_KEY.encode()).hexdigest(),
            "budget": "0.305 USD/day",
        },
        {
            "id": "team-rate",
            "sha256": hashlib.sha256(RATE_KEY.encode()).hexdigest(),
            "requestsPerMinute": 3,
        },
    ]
    doc: dict[str, Any] = {
        "policies": [policy([{"name": "all", "pool": "p"}])],
        "endpoints": {"p": [worker.url]},
        "clientKeys": keys,
    }
    path.write_text(yaml.safe_dump(doc))
    return path


async def post(
    http: aiohttp.ClientSession, url: str, key: str, prompt: str = "a cat"
) -> tuple[int, dict[str, Any], dict[str, str]]:
    async with http.post(
        url + "/v1/images/generations",
        json={"prompt": prompt},
        headers={"Authorization": f"Bearer {key}"},
    ) as r:
        return r.status, await r.json(), dict(r.headers)


async def test_budget_edge_two_replicas_restart_and_rate(
    tmp_path: Path,
    redis_server: RedisServer,
    workers: Callable[..., Any],
    http: aiohttp.ClientSession,
    capsys: pytest.CaptureFixture[str],
) -> None:
    worker = await workers("p", cost_usd=COST, delay_s=0.05)
    cfg = config(tmp_path / "router.yaml", worker)
    flags = ["--client-auth", "keys", "--spend-store", redis_server.url]
    routers = [RouterProcess(cfg, flags).start() for _ in range(2)]
    try:
        # 100 at once, alternating between the replicas, from a cold start (no cost
        # known yet: each replica sends one probe and holds the rest for its cost).
        got = await asyncio.gather(
            *(post(http, routers[i % 2].url, BUDGET_KEY, f"cat {i}") for i in range(100))
        )
        statuses = [s for s, _, _ in got]
        ok = statuses.count(200)
        refused = [b for s, b, _ in got if s == 429]
        # Every one served or refused explicitly.
        assert ok + len(refused) == 100, [b for s, b, _ in got if s not in (200, 429)]
        assert all(b["error"]["code"] == "budget_exceeded" for b in refused)
        store = RedisSpendStore(redis_server.url)
        try:
            acct = await store.account("default/team-budget", period_of(time.time(), "day"))
        finally:
            await store.close()
        spent = acct.spent / 1e9
        assert abs(spent - ok * COST) < 1e-9  # every answer charged, at its real cost
        assert acct.reserved == 0  # every reservation settled or released
        assert spent <= 0.305 + 2 * COST  # the bound: one request per replica
        assert ok >= 30  # and the budget is used: 30 fit in 0.305
        print(f"100 concurrent at 0.305 USD, {COST} per image: {ok} served, spent {spent:.6f}")
        msg = refused[0]["error"]["message"]
        assert "'team-budget'" in msg and "0.305000" in msg and "resets at" in msg
        assert all(int(h["Retry-After"]) >= 1 for s, _, h in got if s == 429)

        # A replica restarted (a fresh process): the spend is still counted.
        routers[0].stop()
        routers[0] = RouterProcess(cfg, flags).start()
        status, body, _ = await post(http, routers[0].url, BUDGET_KEY)
        assert status == 429 and body["error"]["code"] == "budget_exceeded"
        assert f"{spent:.6f}" in body["error"]["message"]
        async with http.get(routers[0].url + "/v1/stats") as resp:
            stats = await resp.json()
        (row,) = [c for c in stats["clients"] if c["key"] == "team-budget"]
        assert abs(row["budget"]["spent_usd"] - spent) < 1e-9
        assert row["budget"]["remaining_usd"] < COST

        # Requests per minute, shared by the replicas through Redis: 3, then 429.
        rate = [await post(http, routers[i % 2].url, RATE_KEY) for i in range(4)]
        assert [s for s, _, _ in rate] == [200, 200, 200, 429]
        status, body, headers = rate[-1]
        assert body["error"]["code"] == "rate_limit_exceeded"
        assert "'team-rate'" in body["error"]["message"] and int(headers["Retry-After"]) >= 1

        # The plugin's view over both replicas: counts summed, the store's spend.
        capsys.readouterr()
        assert kubectl_main(["keys", "-o", "json", *_urls(routers)]) == 0
        rows = {r["key"]: r for r in json.loads(capsys.readouterr().out)}
        # (Counts are each router's since it started: the restarted one's are new.)
        assert 0 < rows["team-budget"]["images"] < ok
        budget = rows["team-budget"]["budget"]
        assert (budget["images"], budget["requests"]) == (ok, ok)  # the store's, all along
        assert abs(budget["spent_usd"] - spent) < 1e-9
        assert rows["team-rate"]["requests"] == 3 and rows["team-rate"]["rejected"] == 1
        assert kubectl_main(["keys", *_urls(routers)]) == 0
        table = capsys.readouterr().out
        with capsys.disabled():
            print(table)
        assert "team-budget" in table and "0.3050/day" in table

        # The keys themselves appear nowhere the router writes.
        seen = [repr(got), repr(rate), table]
        for proc in routers:
            for path in ("/metrics", "/v1/stats"):
                async with http.get(proc.url + path) as resp:
                    seen.append(await resp.text())
            seen.append(proc.logs())
        async with http.get(routers[1].url + "/metrics") as resp:
            metrics = await resp.text()
        limited = [x for x in metrics.splitlines() if x.startswith("modelfleet_router_client_lim")]
        assert any('key="team-budget"' in x and "budget_exceeded" in x for x in limited)
        # One family per name: the exposition parses (router.access has client_requests).
        families = [f.name for f in text_string_to_metric_families(metrics)]
        assert len(families) == len(set(families))
        for text in seen:
            assert BUDGET_KEY not in text and RATE_KEY not in text
    finally:
        for r in routers:
            r.__exit__()


def _urls(routers: list[RouterProcess]) -> list[str]:
    return [a for r in routers for a in ("--router-url", r.url)]


DEGRADE_KEY = "sk-degrade-91be2c"
STRICT_KEY = "sk-strict-03d7aa"


async def test_over_budget_degrades_to_the_policys_cheaper_tier(
    tmp_path: Path, workers: Callable[..., Any], http: aiohttp.ClientSession
) -> None:
    """production degradeTo.budget preview: a key whose budget no longer fits a
    production render is served by the preview route's cheaper pool; a key allowed only
    production is refused instead."""
    dear = await workers("dear", cost_usd=0.04)
    cheap = await workers("cheap", cost_usd=0.001)
    doc = policy(
        [
            {"name": "prod", "match": {"tiers": ["production"]}, "pool": "dear"},
            {"name": "prev", "match": {"tiers": ["preview"]}, "pool": "cheap"},
        ]
    )
    doc["spec"]["tiers"] = [
        {"name": "production", "priority": 100, "degradeTo": {"budget": "preview"}},
        {"name": "preview", "priority": 0},
    ]
    keys = [
        {"id": "team-d", "sha256": hashlib.sha256(DEGRADE_KEY.encode()).hexdigest(),
         "budget": "0.1 USD/day"},
        {"id": "team-s", "sha256": hashlib.sha256(STRICT_KEY.encode()).hexdigest(),
         "budget": "0.1 USD/day", "tiers": ["production"]},
    ]  # fmt: skip
    cfg = tmp_path / "router.yaml"
    endpoints = {"dear": [dear.url], "cheap": [cheap.url]}
    cfg.write_text(yaml.safe_dump({"policies": [doc], "endpoints": endpoints, "clientKeys": keys}))
    with RouterProcess(cfg, ["--client-auth", "keys"]) as r:
        got = [await post(http, r.url, DEGRADE_KEY) for _ in range(4)]
        assert [s for s, _, _ in got] == [200] * 4
        pools = [h["X-ModelFleet-Pool"] for _, _, h in got]
        assert pools == ["dear", "dear", "cheap", "cheap"]  # 0.08 spent: 0.04 does not fit
        assert got[2][2]["X-ModelFleet-Degraded"] == "budget production->preview"
        assert got[2][2]["X-ModelFleet-Route"] == "prev"
        assert "X-ModelFleet-Degraded" not in got[1][2]
        strict = [await post(http, r.url, STRICT_KEY) for _ in range(3)]
        assert [s for s, _, _ in strict] == [200, 200, 429]
        err = strict[2][1]["error"]
        assert err["code"] == "budget_exceeded" and "'team-s'" in err["message"]
        # The official SDK with the key: served while the budget fits (degraded here),
        # and its RateLimitError carries budget_exceeded.
        async with openai.AsyncOpenAI(
            base_url=r.url + "/v1", api_key=DEGRADE_KEY, max_retries=0
        ) as sdk:
            img = await sdk.images.generate(prompt="a lighthouse")
            assert img.data and img.data[0].b64_json
        async with openai.AsyncOpenAI(
            base_url=r.url + "/v1", api_key=STRICT_KEY, max_retries=0
        ) as sdk:
            with pytest.raises(openai.RateLimitError) as refused:
                await sdk.images.generate(prompt="a lighthouse")
            assert refused.value.code == "budget_exceeded"
            assert STRICT_KEY not in str(refused.value)
        async with http.get(r.url + "/metrics") as resp:
            metrics = await resp.text()
        line = next(x for x in metrics.splitlines() if x.startswith("modelfleet_router_budget_d"))
        assert 'key="team-d"' in line and 'to="preview"' in line and line.endswith(" 3.0")


GATED_KEY = "sk-gated-5e0b7c21"
SIGN = 'a shop sign saying "SALE NOW"'


async def test_text_gate_rerenders_are_reserved_and_charged(
    tmp_path: Path, workers: Callable[..., Any], http: aiohttp.ClientSession
) -> None:
    """A verify route whose first pool misreads its text (0.01 USD an image) and whose
    onFail pool passes (0.03 USD): each rescued request is charged both renders, 0.04,
    and reserves its worst case, one re-render at the dearer pool (2 x 0.03), so the
    key's 0.11 USD stops after two rescued requests (0.08 spent) instead of admitting a
    third on the first pool's price. A request without expected text on the same route
    reserves its own render only."""
    typo = await workers("typo", 0.5, cost_usd=0.01)
    good = await workers("good", 1.0, cost_usd=0.03)
    route = {"name": "typo", "pool": "typo",
             "verify": {"minWordAccuracy": 0.9, "onFail": {"pool": "good"}}}  # fmt: skip
    keys = [{"id": "team-g", "sha256": hashlib.sha256(GATED_KEY.encode()).hexdigest(),
             "budget": "0.11 USD/day"}]  # fmt: skip
    cfg = tmp_path / "router.yaml"
    doc = {
        "policies": [policy([route])],
        "endpoints": {"typo": [typo.url], "good": [good.url]},
        "clientKeys": keys,
    }
    cfg.write_text(yaml.safe_dump(doc))
    with RouterProcess(cfg, ["--client-auth", "keys"]) as r:
        got = [await post(http, r.url, GATED_KEY, SIGN) for _ in range(3)]
        assert [s for s, _, _ in got] == [200, 200, 429], got
        for _, _, h in got[:2]:
            assert h["X-ModelFleet-Verify"] == "rescued"
            assert float(h["X-ModelFleet-Cost-USD"]) == pytest.approx(0.01)
            assert float(h["X-ModelFleet-Rerender-Cost-USD"]) == pytest.approx(0.03)
        assert got[2][1]["error"]["code"] == "budget_exceeded"
        assert "0.080000" in got[2][1]["error"]["message"]
        status, _, h = await post(http, r.url, GATED_KEY, "a cat on a sofa")
        assert status == 200 and "X-ModelFleet-Rerender-Cost-USD" not in h
        async with http.get(r.url + "/v1/stats") as resp:
            stats = await resp.json()
        (row,) = [c for c in stats["clients"] if c["key"] == "team-g"]
        assert row["budget"]["spent_usd"] == pytest.approx(0.09)
        assert row["budget"]["reserved_usd"] == 0
        assert (len(typo.bodies), len(good.bodies)) == (3, 2)
