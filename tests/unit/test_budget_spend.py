"""router.spend over the memory store: the probe, reserve/settle/release, expiry of
unsettled reservations, requests per minute, the /v1/stats rows."""

from __future__ import annotations

import asyncio
import re

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from modelfleet.router.spend import Refused, Spend, StoreDown, Ticket
from modelfleet.router.spendstore import MemorySpendStore
from modelfleet.routing.budget import period_of
from modelfleet.routing.clients import Budget, ClientKey, key_digest

NOW = 1_796_150_000.0  # 2026-12-01 (UTC), a fixed wall clock


def key(amount: float = 1.0, rpm: int | None = None, kid: str = "team-a") -> ClientKey:
    return ClientKey(
        kid, "ns", key_digest("sk-secret-" + kid), requests_per_minute=rpm, budget=Budget(amount)
    )


class Wall:
    def __init__(self, t: float = NOW) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def spend(hold_s: float = 300.0, wall: Wall | None = None) -> Spend:
    return Spend(CollectorRegistry(), store=MemorySpendStore(hold_s=hold_s), wall=wall or Wall())


async def test_first_request_is_a_probe_the_rest_wait_for_its_cost() -> None:
    s = spend()
    k = key(1.0)
    probe = await s.reserve(k, 1, ("a",))
    assert isinstance(probe, Ticket) and probe.estimate is None
    waiting = asyncio.ensure_future(s.reserve(k, 1, ("a",)))
    await asyncio.sleep(0)  # it is parked behind the probe, not admitted as another
    assert not waiting.done()
    await s.settle(probe, k, "a", 0.4, 1)
    second = await waiting
    assert isinstance(second, Ticket) and second.estimate == 400_000_000
    # 0.4 spent + 0.4 reserved + 0.4 estimate > 1.0: refused, with the figures.
    third = await s.reserve(k, 1, ("a",))
    assert isinstance(third, Refused)
    assert (third.account.spent, third.account.reserved) == (400_000_000, 400_000_000)
    assert third.period.label == "2026-12-01"


async def test_a_failed_probe_hands_over_to_the_next_request() -> None:
    s = spend()
    k = key(1.0)
    probe = await s.reserve(k, 1, ("a",))
    assert isinstance(probe, Ticket)
    waiters = [asyncio.ensure_future(s.reserve(k, 1, ("a",))) for _ in range(3)]
    await asyncio.sleep(0)
    await s.settle(probe, k, None, None, 0)  # no answer: released, nothing learnt
    await asyncio.sleep(0)
    done = [w for w in waiters if w.done()]
    assert len(done) == 1  # exactly one became the next probe
    nxt = done[0].result()
    assert isinstance(nxt, Ticket) and nxt.estimate is None
    await s.settle(nxt, k, "a", 0.1, 1)
    rest = await asyncio.gather(*(w for w in waiters if w is not done[0]))
    assert all(isinstance(t, Ticket) and t.estimate == 100_000_000 for t in rest)


async def test_probe_wait_is_bounded() -> None:
    s = Spend(CollectorRegistry(), wall=Wall(), probe_wait_s=0.05)
    k = key()
    assert isinstance(await s.reserve(k, 1, ("a",)), Ticket)
    with pytest.raises(StoreDown, match=r"first request has not finished within 0\.05 s"):
        await s.reserve(k, 1, ("a",))


async def test_release_frees_the_reservation_and_settle_charges_real_cost() -> None:
    s = spend()
    k = key(1.0)
    s.costs.learn("ns", "a", 500_000_000)
    t1 = await s.reserve(k, 1, ("a",))
    t2 = await s.reserve(k, 1, ("a",))
    assert isinstance(t1, Ticket) and isinstance(t2, Ticket)
    assert isinstance(await s.reserve(k, 1, ("a",)), Refused)
    await s.settle(t1, k, None, None, 0)  # failed: released
    t3 = await s.reserve(k, 1, ("a",))
    assert isinstance(t3, Ticket)
    await s.settle(t2, k, "a", 0.2, 1)  # cheaper than estimated: only 0.2 charged
    await s.settle(t3, k, "a", 0.2, 1)
    acct = await s.store.account("ns/team-a", period_of(NOW, "day"))
    assert (acct.spent, acct.reserved, acct.images, acct.requests, acct.failed) == (
        400_000_000, 0, 2, 2, 1,
    )  # fmt: skip


async def test_rerenders_are_charged_but_not_learnt_as_the_pools_cost() -> None:
    s = spend()
    k = key(1.0)
    s.costs.learn("ns", "a", 100_000_000)
    t = await s.reserve(k, 2, ("a",))
    assert isinstance(t, Ticket) and t.estimate == 200_000_000
    # The first render 0.1, the text gate's re-render 0.3: the key pays 0.4; pool a's
    # cost per image stays its own answer's (the re-renders are in the reservation).
    await s.settle(t, k, "a", 0.1, 1, 0.3)
    acct = await s.store.account("ns/team-a", period_of(NOW, "day"))
    assert (acct.spent, acct.reserved) == (400_000_000, 0)
    assert s.costs.per_image("ns", ("a",)) == {"a": 100_000_000}
    # An answer refused by the gate (422, no pool) is charged what its renders cost.
    t2 = await s.reserve(k, 1, ("a",))
    assert isinstance(t2, Ticket)
    await s.settle(t2, k, None, 0.1, 0, 0.1)
    acct = await s.store.account("ns/team-a", period_of(NOW, "day"))
    assert (acct.spent, acct.reserved) == (600_000_000, 0)


async def test_unsettled_reservations_expire_after_hold() -> None:
    wall = Wall()
    s = spend(hold_s=60.0, wall=wall)
    k = key(1.0)
    s.costs.learn("ns", "a", 1_000_000_000)
    assert isinstance(await s.reserve(k, 1, ("a",)), Ticket)  # never settled (router died)
    assert isinstance(await s.reserve(k, 1, ("a",)), Refused)
    wall.t += 61
    assert isinstance(await s.reserve(k, 1, ("a",)), Ticket)


async def test_a_new_period_starts_from_zero() -> None:
    wall = Wall()
    s = spend(wall=wall)
    k = key(1.0)
    s.costs.learn("ns", "a", 1_000_000_000)
    t = await s.reserve(k, 1, ("a",))
    assert isinstance(t, Ticket)
    await s.settle(t, k, "a", 1.0, 1)
    assert isinstance(await s.reserve(k, 1, ("a",)), Refused)
    wall.t += 86400
    assert isinstance(await s.reserve(k, 1, ("a",)), Ticket)


async def test_requests_per_minute() -> None:
    wall = Wall(60.0 * 29_935_000)  # the start of a minute
    s = spend(wall=wall)
    k = key(rpm=2)
    assert (await s.rate(k)).admitted
    assert (await s.rate(k)).admitted
    v = await s.rate(k)
    assert not v.admitted and v.retry_after_s == 61.0
    other = key(rpm=2, kid="team-b")
    assert (await s.rate(other)).admitted  # per key
    wall.t += 61
    assert (await s.rate(k)).admitted  # 2 * (59/60) + 0 < 2
    assert (await s.rate(key(rpm=None))).admitted  # no limit


async def test_clients_rows_and_metrics_never_hold_the_key() -> None:
    reg = CollectorRegistry()
    s = Spend(reg, wall=Wall())
    k = key(2.0, rpm=10)
    s.costs.learn("ns", "a", 500_000_000)
    await s.rate(k)
    t = await s.reserve(k, 2, ("a",))
    assert isinstance(t, Ticket) and t.estimate == 1_000_000_000
    await s.settle(t, k, "a", 0.8, 2)
    (row,) = await s.clients()
    assert row["key"] == "team-a" and row["requests"] == 1 and row["images"] == 2
    assert row["requests_per_minute"] == 10
    budget = row["budget"]
    assert isinstance(budget, dict)
    assert budget["spent_usd"] == pytest.approx(0.8)
    assert budget["remaining_usd"] == pytest.approx(1.2)
    assert budget["resets"] == "2026-12-02T00:00:00Z"
    text = generate_latest(reg).decode()
    assert 'modelfleet_router_client_images_total{key="team-a",namespace="ns"} 2.0' in text
    assert "sk-secret" not in text and "sk-secret" not in repr(row)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--spend-store", "mysql://x"], "--spend-store: 'mysql://x' is not memory"),
        (["--spend-store", "redis://:pw@r:6379/0"], "must not carry a password"),
        (["--spend-store", "asset-store"], "needs a redis:// --asset-store"),
        (["--spend-store-password-file", "/x"], "needs a redis:// --spend-store"),
        (["--spend-store", "redis://r:6379/0", "--spend-store-password-file", "/nonexistent"],
         "--spend-store-password-file /nonexistent: No such file"),
        (["--spend-hold", "0.5"], "--spend-hold: 0.5 is not at least 1 second"),
    ],
)  # fmt: skip
def test_spend_flags_refused_naming_the_flag(flags: list[str], message: str) -> None:
    import argparse

    from modelfleet.router.assets import add_asset_args
    from modelfleet.router.spendstore import SpendConfigError, add_spend_args, spend_store_from_args

    p = argparse.ArgumentParser()
    add_asset_args(p)
    add_spend_args(p)
    with pytest.raises(SpendConfigError, match=re.escape(message)):
        spend_store_from_args(p.parse_args(flags), 120.0)
