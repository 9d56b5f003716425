"""The operator's demand reader against real HTTP servers on loopback speaking the
routers' /v1/demand format: figures summed over routers, a silent router skipped, none
answering is unknown (never zero), junk refused, one round shared within the cache."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web

from modelfleet.autoscale.core import Demand
from modelfleet.providers.demand import DemandFormatError, DemandReader, parse_demand
from worker_fixtures import free_port


class Router:
    def __init__(self, doc: Callable[[], Any], status: int = 200) -> None:
        self.doc, self.status, self.calls = doc, status, 0
        self.port = free_port()
        self.runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def handle(self, _: web.Request) -> web.Response:
        self.calls += 1
        return web.json_response(self.doc(), status=self.status)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/v1/demand", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


def doc(*pools: tuple[str, str, int, int, int]) -> dict[str, Any]:
    return {
        "time": 1.0,
        "pools": [
            {"namespace": ns, "pool": p, "in_flight": f, "queued": q, "held": h}
            for ns, p, f, q, h in pools
        ],
    }


@pytest.fixture
async def routers() -> AsyncIterator[list[Router]]:
    made = [
        Router(lambda: doc(("ns", "a", 3, 1, 0), ("ns", "b", 0, 0, 2))),
        Router(lambda: doc(("ns", "a", 2, 0, 1), ("other", "a", 5, 0, 0))),
    ]
    for r in made:
        await r.start()
    yield made
    for r in made:
        await r.stop()


async def test_sums_over_routers_and_absent_is_zero(routers: list[Router]) -> None:
    reader = DemandReader([r.url for r in routers])
    try:
        reading = await reader.read()
        assert reading.answered == 2 and reading.errors == []
        assert reading.of("ns", "a") == Demand(5, 1, 1)
        assert reading.of("ns", "b") == Demand(0, 0, 2)
        assert reading.of("other", "a") == Demand(5, 0, 0)
        assert reading.of("ns", "idle") == Demand()  # answered, left out: zero
    finally:
        await reader.close()


async def test_a_silent_router_is_skipped_none_answering_is_unknown(
    routers: list[Router],
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    reader = DemandReader([routers[0].url, dead], timeout_seconds=0.5)
    try:
        reading = await reader.read()
        assert reading.answered == 1 and len(reading.errors) == 1 and dead in reading.errors[0]
        assert reading.of("ns", "a") == Demand(3, 1, 0)
    finally:
        await reader.close()
    deaf = DemandReader([dead], timeout_seconds=0.5)
    try:
        assert (await deaf.read()).of("ns", "a") is None
    finally:
        await deaf.close()
    assert (await DemandReader([]).read()).of("ns", "a") is None


async def test_error_status_and_junk_do_not_count() -> None:
    bad = [Router(lambda: {"error": "x"}, status=500), Router(lambda: {"pools": "many"})]
    for r in bad:
        await r.start()
    reader = DemandReader([r.url for r in bad])
    try:
        reading = await reader.read()
        assert reading.answered == 0 and reading.of("ns", "a") is None
        assert any("HTTP 500" in e for e in reading.errors)
    finally:
        await reader.close()
        for r in bad:
            await r.stop()


async def test_one_round_is_shared_within_the_cache(routers: list[Router]) -> None:
    reader = DemandReader([routers[0].url], cache_seconds=30)
    try:
        for _ in range(5):
            await reader.read()
        assert routers[0].calls == 1
    finally:
        await reader.close()


@pytest.mark.parametrize(
    "raw",
    [
        [],
        {"pools": [{"namespace": "ns"}]},
        {"pools": [{"namespace": "ns", "pool": "a", "in_flight": -1}]},
        {"pools": [{"namespace": "ns", "pool": "a", "queued": "3"}]},
        {"pools": [{"namespace": "ns", "pool": "a", "held": True}]},
    ],
)
def test_parse_refuses_what_is_not_a_demand_document(raw: Any) -> None:
    with pytest.raises(DemandFormatError):
        parse_demand(raw)


def test_parse_ignores_unknown_keys() -> None:
    raw = {
        "time": 1,
        "pools": [{"namespace": "n", "pool": "p", "held": 1, "oldest_held_seconds": 2}],
    }
    assert parse_demand(raw) == {("n", "p"): Demand(0, 0, 1)}
