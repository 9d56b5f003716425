"""The adapter server on a controlled clock, with a scripted in-process backend: quota
and rate-limit holds end when their time comes (readiness, metrics and calls resume)."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp.test_utils import TestClient, TestServer

from modelfleet_common.prices import load_table
from modelfleet_worker.hosted.backend import (
    Capabilities,
    HostedRequest,
    ProviderContext,
    ProviderFailure,
    ProviderImage,
    ProviderQuotaExhausted,
    ProviderRateLimited,
    ProviderResult,
    Size,
)
from modelfleet_worker.hosted.config import HostedConfig
from modelfleet_worker.hosted.server import HostedServer

CAPS = Capabilities(
    sizes=(Size(64, 64),), default_size=Size(64, 64), max_n=1, seed=True, edits=False
)


@dataclass
class Scripted:
    """A backend that raises the scripted failures in turn, then answers one image."""

    script: list[ProviderFailure] = field(default_factory=list)
    calls: int = 0
    name: str = "scripted"
    provider: str = "test"
    model: str = "m"
    default_endpoint: str = "http://127.0.0.1:9"
    capabilities: Capabilities = field(default_factory=lambda: CAPS)

    async def generate(self, req: HostedRequest, ctx: ProviderContext) -> ProviderResult:
        self.calls += 1
        if self.script:
            raise self.script.pop(0)
        return ProviderResult((ProviderImage(b64_json="QUJD", seed=req.seed),))

    async def edit(self, req: HostedRequest, ctx: ProviderContext) -> ProviderResult:
        raise NotImplementedError


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


async def _client(backend: Scripted, clock: Clock) -> TestClient:
    server = HostedServer(HostedConfig(backend="scripted", provider_model="m"), backend, "k",
                          load_table(), wall=clock, mono=clock)  # fmt: skip
    client = TestClient(TestServer(server.app()))
    await client.start_server()
    return client


async def test_quota_hold_ends_at_its_reset() -> None:
    clock = Clock()
    backend = Scripted([ProviderQuotaExhausted("spent", until=clock.t + 600)])
    client = await _client(backend, clock)
    try:
        r = await client.post("/v1/images/generations", json={"prompt": "p", "seed": 5})
        assert r.status == 429 and r.headers["Retry-After"] == "600"
        r = await client.get("/readyz")
        assert r.status == 503 and (await r.json())["until"] == clock.t + 600
        clock.t += 599
        r = await client.post("/v1/images/generations", json={"prompt": "p"})
        assert r.status == 429 and r.headers["Retry-After"] == "1" and backend.calls == 1
        clock.t += 2
        assert "modelfleet_worker_ready 1.0" in await (await client.get("/metrics")).text()
        assert (await client.get("/readyz")).status == 200
        r = await client.post("/v1/images/generations", json={"prompt": "p", "seed": 5})
        assert r.status == 200 and (await r.json())["modelfleet"]["seeds"] == [5]
        assert backend.calls == 2
    finally:
        await client.close()


async def test_rate_limit_hold_ends_after_retry_after() -> None:
    clock = Clock()
    backend = Scripted([ProviderRateLimited("slow down", 30)])
    client = await _client(backend, clock)
    try:
        assert (await client.post("/v1/images/generations", json={"prompt": "p"})).status == 429
        clock.t += 29.5
        r = await client.post("/v1/images/generations", json={"prompt": "p"})
        assert r.status == 429 and r.headers["Retry-After"] == "1"
        assert (await client.get("/readyz")).status == 200  # a rate limit is no unreadiness
        clock.t += 1
        assert (await client.post("/v1/images/generations", json={"prompt": "p"})).status == 200
        assert backend.calls == 2
    finally:
        await client.close()
