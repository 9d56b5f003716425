"""Text canary metrics from real parts: the text-drawing worker read by the real OCR,
the real router (subprocess) on routes without a verify gate, its /v1/stats, and the
router provider over it."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from modelfleet.api.canary import MetricSpec
from modelfleet.canary.ports import MetricQuery
from modelfleet.providers.router_stats import RouterStatsProvider
from modelfleet_dev.routerproc import RouterProcess, policy, write_config
from worker_fixtures import Worker, running_text_workers

pytestmark = pytest.mark.timeout(180)

PLAIN = "HAPPY MARKET"  # no letters the corruption could swap for a look-alike (O/0, I/1)
ACC = MetricSpec(name="acc", builtin="text-accuracy", min_ratio_to_stable=0.9)
PASS = MetricSpec(name="pass", builtin="text-pass-rate", min=0.8)


@pytest.fixture(scope="module")
def pools(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Worker]]:
    tmp = tmp_path_factory.mktemp("textstats")
    with running_text_workers(tmp, {"mangled": 1.0, "clean": 0.0}) as ws:
        yield ws


@pytest.fixture
def router(tmp_path: Path, pools: dict[str, Worker]) -> Iterator[RouterProcess]:
    routes: list[dict[str, Any]] = [
        {"name": "clean", "match": {"tags": ["clean"]}, "pool": "clean"},
        {"name": "mangled", "pool": "mangled"},
    ]
    cfg = write_config(
        tmp_path / "router.yaml", [policy(routes)], {n: [w.url] for n, w in pools.items()}
    )
    r = RouterProcess(cfg, ())
    try:
        yield r.start()
    finally:
        r.__exit__()


async def test_router_counts_verified_renders_per_pool(
    router: RouterProcess, http: aiohttp.ClientSession
) -> None:
    async def render(seed: int, **extra: Any) -> None:
        body = {"prompt": f'a banner "{PLAIN}"', "seed": seed, "size": "512x256", **extra}
        async with http.post(router.url + "/v1/images/generations", json=body) as resp:
            assert resp.status == 200, await resp.text()

    for seed in range(3):
        await render(seed, tags=["clean"])
        await render(seed)
    await render(9, n=2)  # one response, two verified renders
    # no expected text: a request, not a verified render
    async with http.post(
        router.url + "/v1/images/generations", json={"prompt": "a cube", "size": "256x256"}
    ) as resp:
        assert resp.status == 200

    async with http.get(router.url + "/v1/stats", params={"window": "300"}) as resp:
        doc = await resp.json()
    text = {p["pool"]: (p["requests"], p.get("text")) for p in doc["pools"]}
    assert text["clean"][0] == 3 and text["clean"][1] == {
        "verified": 3,
        "passed": 3,
        "accuracy_sum": pytest.approx(3.0),
    }
    requests, mangled = text["mangled"]
    assert requests == 5 and mangled["verified"] == 5 and mangled["passed"] == 0
    assert mangled["accuracy_sum"] < 5.0

    p = RouterStatsProvider([router.url])
    try:
        ns = doc["pools"][0]["namespace"]
        clean = await p.measure(MetricQuery(ns, "clean", ACC, 300, "clean", "mangled"))
        bad = await p.measure(MetricQuery(ns, "mangled", ACC, 300, "clean", "mangled"))
        rate = await p.measure(MetricQuery(ns, "mangled", PASS, 300, "clean", "mangled"))
    finally:
        await p.close()
    assert clean.value == pytest.approx(1.0) and clean.samples == 3
    assert bad.samples == 5 and bad.value is not None and bad.value < 0.9
    assert (rate.value, rate.samples) == (0.0, 5)
