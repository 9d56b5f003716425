"""RedisSpendStore against a real redis-server: the Lua reserve/settle/release, keys and
TTLs per key id and period, expiry of unsettled reservations, requests per minute shared
by two clients, and the atomic rule under many concurrent reservations."""

from __future__ import annotations

import asyncio
import time

from modelfleet.router.spendstore import KEEP_AFTER_PERIOD_S, RATE_PREFIX, RedisSpendStore
from modelfleet.routing.budget import period_of
from polling import wait_for_async
from redis_fixture import RedisServer


async def test_reserve_settle_release_and_keys(redis_server: RedisServer) -> None:
    from redis.asyncio import Redis

    s = RedisSpendStore(redis_server.url, hold_s=120)
    raw = Redis.from_url(redis_server.url)
    now = time.time()
    p = period_of(now, "day")
    try:
        ok, acct = await s.reserve("ns/k", p, "r1", 300, 1000, now)
        assert ok and acct.spent == 0 and acct.reserved == 0
        ok, acct = await s.reserve("ns/k", p, "r2", 300, 1000, now)
        assert ok and acct.reserved == 300
        ok, acct = await s.reserve("ns/k", p, "r3", 500, 1000, now)
        assert not ok and acct.reserved == 600  # 600 + 500 > 1000
        await s.settle("ns/k", p, "r1", 250, 1)
        await s.release("ns/k", p, "r2")
        got = await s.account("ns/k", p)
        assert (got.spent, got.reserved, got.images, got.requests, got.failed) == (250, 0, 1, 1, 1)
        # A probe (no estimate) while anything is left; none once it is all spent.
        assert (await s.reserve("ns/k", p, "r4", None, 1000, now))[0]
        await s.settle("ns/k", p, "r4", 800, 1)  # the probe overshoots: 1050 spent
        assert not (await s.reserve("ns/k", p, "r5", None, 1000, now))[0]
        assert not (await s.reserve("ns/k", p, "r6", 0, 1000, now))[0]
        # Keyed by key id and period, expiring a week after the period ends.
        acct_key, res_key = RedisSpendStore.keys("ns/k", p)
        assert acct_key == f"modelfleet:spend:ns/k:{p.label}"
        ttl = await raw.ttl(acct_key)
        assert p.end - now + KEEP_AFTER_PERIOD_S - 5 <= ttl <= p.end - now + KEEP_AFTER_PERIOD_S
        assert await raw.zcard(res_key) == 0  # every reservation settled or released
        month = period_of(now, "month")
        assert (await s.account("ns/k", month)).spent == 0  # another period, another key
    finally:
        await s.close()
        await raw.aclose()


async def test_unsettled_reservation_expires(redis_server: RedisServer) -> None:
    s = RedisSpendStore(redis_server.url, hold_s=30)
    now = time.time()
    p = period_of(now, "month")
    try:
        assert (await s.reserve("ns/k", p, "dead", 900, 1000, now))[0]  # its router died
        assert not (await s.reserve("ns/k", p, "r", 900, 1000, now + 10))[0]
        ok, acct = await s.reserve("ns/k", p, "r", 900, 1000, now + 31)
        assert ok and acct.reserved == 0  # the dead one's hold was dropped first
    finally:
        await s.close()


async def test_concurrent_reservations_never_exceed_the_budget(redis_server: RedisServer) -> None:
    """Two clients (two routers' connections), 200 reservations at once: exactly the
    budget's worth admitted."""
    a = RedisSpendStore(redis_server.url)
    b = RedisSpendStore(redis_server.url)
    now = time.time()
    p = period_of(now, "day")
    try:
        got = await asyncio.gather(
            *(
                (a if i % 2 else b).reserve("ns/edge", p, f"r{i}", 7, 7 * 37 + 3, now)
                for i in range(200)
            )
        )
        assert sum(ok for ok, _ in got) == 37
        assert (await a.account("ns/edge", p)).reserved == 7 * 37
    finally:
        await a.close()
        await b.close()


async def test_requests_per_minute_shared(redis_server: RedisServer) -> None:
    from redis.asyncio import Redis

    a = RedisSpendStore(redis_server.url)
    b = RedisSpendStore(redis_server.url)
    raw = Redis.from_url(redis_server.url)
    try:
        # Not in a minute's last second (Redis' clock decides): the hits fall in one.
        async def early_in_minute() -> bool:
            return (await raw.time())[0] % 60 < 59

        await wait_for_async(early_in_minute, timeout=3, interval=0.1, what="second 0-58")
        verdicts = [await (a if i % 2 else b).hit("ns/k", 5, time.time()) for i in range(8)]
        assert [v.admitted for v in verdicts] == [True] * 5 + [False] * 3
        refused = verdicts[-1]
        assert 1 <= refused.retry_after_s <= 61
        assert (await a.hit("ns/other", 5, time.time())).admitted  # per key
        assert 0 < await raw.ttl(RATE_PREFIX + "ns/k") <= 130
    finally:
        await a.close()
        await b.close()
        await raw.aclose()


async def test_a_dead_store_refuses_budgets_and_counts_rates_locally(
    redis_server: RedisServer,
) -> None:
    """Redis killed: a budgeted key is refused (StoreDown: 503 budget_unavailable), the
    rate limit is this replica's own; Redis back: both work again."""
    import pytest
    from prometheus_client import CollectorRegistry

    from modelfleet.router.spend import Spend, StoreDown, Ticket
    from modelfleet.routing.clients import Budget, ClientKey, key_digest

    reg = CollectorRegistry()
    s = Spend(reg, store=RedisSpendStore(redis_server.url))
    key = ClientKey("k", "ns", key_digest("sk-x"), requests_per_minute=2, budget=Budget(1.0))
    try:
        s.costs.learn("ns", "p", 1000)
        assert isinstance(await s.reserve(key, 1, ("p",)), Ticket)
        redis_server.kill()
        with pytest.raises(StoreDown, match="did not answer"):
            await s.reserve(key, 1, ("p",))
        verdicts = [(await s.rate(key)).admitted for _ in range(3)]
        assert verdicts == [True, True, False]  # the local fallback still limits
        assert (
            reg.get_sample_value("modelfleet_router_spend_store_errors_total", {"op": "reserve"})
            == 1.0
        )
        assert (
            reg.get_sample_value("modelfleet_router_spend_store_errors_total", {"op": "hit"}) == 3.0
        )
        redis_server.start()
        assert isinstance(await s.reserve(key, 1, ("p",)), Ticket)
        acct = await s.store.account("ns/k", period_of(time.time(), "day"))
        assert acct.reserved == 2000  # the first reservation survived the restart (AOF)
    finally:
        await s.close()
