"""RedisAssetStore against a real redis-server: put/get, TTL, and the fail-open path
when the server is killed and comes back."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry

from modelfleet.router.assets import FailOpenStore, RedisAssetStore
from modelfleet.routing.sticky import AssetRecord
from polling import wait_for_async
from redis_fixture import RedisServer


def rec(pool: str, seed: int | None = 7) -> AssetRecord:
    return AssetRecord(pool, "sd3.5-medium", "rev1", "cd" * 32, seed, 1700000000.5)


async def test_put_get_round_trip(redis_server: RedisServer) -> None:
    s = RedisAssetStore(redis_server.url, ttl_s=3600)
    try:
        assert await s.get("ns", "a1") is None
        await s.put("ns", "a1", rec("stable"))
        await s.put("other", "a1", rec("canary", None))
        assert await s.get("ns", "a1") == rec("stable")
        assert await s.get("other", "a1") == rec("canary", None)
        await s.put("ns", "a1", rec("moved"))
        assert await s.get("ns", "a1") == rec("moved")
        # put_new writes only a first record, and answers the one that was there.
        assert await s.put_new("ns", "fresh", rec("first")) is None
        assert await s.put_new("ns", "fresh", rec("second")) == rec("first")
        assert await s.get("ns", "fresh") == rec("first")
    finally:
        await s.close()


async def test_ttl_is_set_and_slides_on_read(redis_server: RedisServer) -> None:
    from redis.asyncio import Redis

    s = RedisAssetStore(redis_server.url, ttl_s=100)
    raw = Redis.from_url(redis_server.url)
    try:
        await s.put("ns", "a", rec("p"))
        key = RedisAssetStore.key("ns", "a")
        ttl = await raw.ttl(key)
        assert 95 <= ttl <= 100
        await raw.expire(key, 95)  # used a few seconds ago: a lookup stays a read
        assert await s.get("ns", "a") == rec("p")
        assert await raw.ttl(key) <= 95
        await raw.expire(key, 5)  # as if most of the TTL had passed
        assert await s.get("ns", "a") == rec("p")
        assert 95 <= await raw.ttl(key) <= 100  # a use renews it
        # A record written without an expiry (by hand, an old version) gets one when used.
        await raw.set(RedisAssetStore.key("ns", "forever"), rec("p").to_json())
        assert await s.get("ns", "forever") == rec("p")
        assert 95 <= await raw.ttl(RedisAssetStore.key("ns", "forever")) <= 100
        # A record expires: Redis drops it at its TTL.
        short = RedisAssetStore(redis_server.url, ttl_s=1)
        try:
            await short.put("ns", "b", rec("p"))
            assert await short.get("ns", "b") == rec("p")
            await wait_for_async(
                lambda: raw.exists(RedisAssetStore.key("ns", "b")),
                until=lambda n: n == 0,
                timeout=5,
                interval=0.1,
                what="the 1 s record to expire",
            )
            assert await short.get("ns", "b") is None
        finally:
            await short.close()
        # A value that is not a record reads as absent instead of failing the request.
        await raw.set(RedisAssetStore.key("ns", "junk"), b"{not json")
        assert await s.get("ns", "junk") is None
    finally:
        await raw.aclose()
        await s.close()


def errors(reg: CollectorRegistry, op: str) -> float:
    v = reg.get_sample_value("modelfleet_router_asset_store_errors_total", {"op": op})
    assert v is not None
    return v


async def test_killed_redis_fails_open_and_recovers(redis_server: RedisServer) -> None:
    reg = CollectorRegistry()
    s = FailOpenStore(RedisAssetStore(redis_server.url), reg, pause_s=0.2)
    try:
        assert await s.put("ns", "a", rec("stable")) is True
        assert await s.get("ns", "a") == (rec("stable"), True)
        redis_server.kill()
        t0 = time.monotonic()
        got = [await s.get("ns", "a") for _ in range(50)]
        elapsed = time.monotonic() - t0
        assert got == [(None, False)] * 50
        assert await s.put("ns", "b", rec("x")) is False
        # Fast: a refused connection, then the pause; never a request's worth of waiting.
        assert elapsed < 1.0, elapsed
        assert errors(reg, "get") == 50 and errors(reg, "put") == 1
        redis_server.start()  # same port and directory: the append-only file is replayed
        back = await wait_for_async(
            lambda: s.get("ns", "a"),
            until=lambda r: r[1],
            timeout=10,
            interval=0.05,
            what="the store to answer again",
        )
        assert back == (rec("stable"), True)
        assert await s.put("ns", "b", rec("y")) is True
        assert await s.get("ns", "b") == (rec("y"), True)
    finally:
        await s.close()


async def test_unreachable_redis_costs_at_most_the_timeout() -> None:
    """A port nobody listens on (no server started) and a short timeout: each op is
    missed quickly and counted, no exception escapes."""
    from modelfleet_dev.routerproc import free_port

    reg = CollectorRegistry()
    s = FailOpenStore(
        RedisAssetStore(f"redis://127.0.0.1:{free_port()}/0", socket_timeout_s=0.1),
        reg,
        pause_s=0.0,
    )
    try:
        t0 = time.monotonic()
        assert await s.get("ns", "a") == (None, False)
        assert await s.put("ns", "a", rec("p")) is False
        assert time.monotonic() - t0 < 1.0
        assert errors(reg, "get") == 1 and errors(reg, "put") == 1
    finally:
        await s.close()
