"""Cost per image from real parts: the hosted adapter processes (their price table) in
front of strict provider stand-ins, the real router (subprocess) counting what they
report, its /v1/stats and /metrics, and the canary's router provider over it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from hosted_fixtures import start_adapter
from modelfleet.api.canary import MetricSpec
from modelfleet.canary.ports import MetricQuery
from modelfleet.providers.router_stats import RouterStatsProvider
from modelfleet_common.prices import load_table
from modelfleet_dev.routerproc import RouterProcess, policy
from modelfleet_dev.standins.common import in_thread
from modelfleet_dev.standins.gemini_api import GeminiStandIn
from modelfleet_dev.standins.ideogram_api import IdeogramStandIn
from worker_fixtures import Worker

pytestmark = pytest.mark.timeout(120)
KEY = "sk-cost-test-0123456789"
COST = MetricSpec(name="cost", builtin="cost-per-image", max_ratio_to_stable=1.5)
PRICES = load_table()


@pytest.fixture(scope="module")
def adapters() -> Iterator[dict[str, Worker]]:
    with ExitStack() as stack:
        ideogram = stack.enter_context(in_thread(IdeogramStandIn(KEY)))
        imagen = stack.enter_context(in_thread(GeminiStandIn(KEY)))
        workers: dict[str, Worker] = {}
        stack.callback(lambda: [w.stop() for w in workers.values()])
        workers["ideo"] = start_adapter(
            "ideogram",
            "V_3",
            ideogram.url,
            KEY,
            size_policy="nearest",
            provider_defaults='{"rendering_speed": "QUALITY"}',
        )
        workers["imagen"] = start_adapter(
            "gemini-imagen", "imagen-4.0-generate-001", imagen.url, KEY, size_policy="nearest"
        )
        yield workers


def router_metric(text: str, name: str, pool: str) -> float:
    return sum(
        s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == name and s.labels.get("pool") == pool
    )


async def test_router_counts_the_adapters_cost_per_image(
    adapters: dict[str, Worker], router: Any, http: aiohttp.ClientSession
) -> None:
    routes: list[dict[str, Any]] = [
        {"name": "ideo", "match": {"tags": ["ideo"]}, "pool": "ideo"},
        {"name": "imagen", "pool": "imagen"},
    ]
    r: RouterProcess = router([policy(routes)], {n: [w.url] for n, w in adapters.items()})

    async def generate(n: int, **extra: Any) -> None:
        body = {"prompt": "a lighthouse", "size": "256x256", "n": n, **extra}
        async with http.post(r.url + "/v1/images/generations", json=body) as resp:
            assert resp.status == 200, await resp.text()
            doc = await resp.json()
            assert len(doc["data"]) == n
            # The router relays the adapter's own total for the answer.
            assert float(resp.headers["X-ModelFleet-Cost-USD"]) == pytest.approx(
                doc["modelfleet"]["cost_usd"]
            )

    for _ in range(3):
        await generate(2, tags=["ideo"])  # 6 images at V_3 QUALITY
        await generate(1)  # 3 images at Imagen 4
    await generate(3)  # one answer, three images
    ideo = PRICES.lookup("ideogram", "V_3", "QUALITY", "1024x1024")
    imagen = PRICES.lookup("google", "imagen-4.0-generate-001", None, "1024x1024")
    assert ideo is not None and imagen is not None and ideo != imagen

    async with http.get(r.url + "/v1/stats", params={"window": "300"}) as resp:
        doc = await resp.json()
    cost = {p["pool"]: p["cost"] for p in doc["pools"]}
    namespace = doc["pools"][0]["namespace"]
    assert cost["ideo"]["images"] == 6 and cost["ideo"]["usd"] == pytest.approx(6 * ideo)
    assert cost["imagen"]["images"] == 6 and cost["imagen"]["usd"] == pytest.approx(6 * imagen)

    async with http.get(r.url + "/metrics") as resp:
        text = await resp.text()
    assert router_metric(text, "modelfleet_router_images_total", "ideo") == 6
    assert router_metric(text, "modelfleet_router_cost_usd_total", "ideo") == pytest.approx(
        6 * ideo
    )

    provider = RouterStatsProvider([r.url])
    try:
        for pool, usd in (("ideo", ideo), ("imagen", imagen)):
            m = await provider.measure(MetricQuery(namespace, pool, COST, 300, "ideo", "imagen"))
            assert m.error is None and m.samples == 6 and m.value == pytest.approx(usd)
    finally:
        await provider.close()
