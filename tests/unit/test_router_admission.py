"""Admission gate: limits, fast refusal, queue timeout, priority order (tier, then key),
shedding the lowest priority first, slot hand-over, recent hold times."""

from __future__ import annotations

import asyncio

import pytest

from modelfleet.api.routingpolicy import RoutingPolicy
from modelfleet.router.admission import (
    AdmissionGate,
    Admitted,
    Limits,
    QueueTimeout,
    Refused,
    Rejected,
    admit,
)
from modelfleet.routing.intent import parse_request
from modelfleet.routing.table import PolicyTable, compile_policy, match_route
from modelfleet.routing.tiers import resolve_tier

PROD, PREVIEW = (100, 0), (0, 0)  # the builtin tiers' priorities, no key priority


async def test_fast_path_and_rejection() -> None:
    g = AdmissionGate(Limits(max_in_flight=2, max_queue=1, queue_timeout_s=5))
    await g.acquire(PROD)
    await g.acquire(PROD)
    waiter = asyncio.create_task(g.acquire(PROD))
    await asyncio.sleep(0)
    assert g.queued == 1
    with pytest.raises(Rejected):
        await g.acquire(PROD)
    g.release()
    await asyncio.wait_for(waiter, 1)
    assert g.in_flight == 2 and g.queued == 0


async def test_queue_timeout() -> None:
    g = AdmissionGate(Limits(max_in_flight=1, max_queue=4, queue_timeout_s=0.05))
    await g.acquire(PREVIEW)
    with pytest.raises(QueueTimeout):
        await g.acquire(PREVIEW)
    assert g.queued == 0 and g.in_flight == 1


async def test_zero_queue_rejects_at_once() -> None:
    g = AdmissionGate(Limits(max_in_flight=1, max_queue=0, queue_timeout_s=5))
    await g.acquire(PROD)
    with pytest.raises(Rejected):
        await g.acquire(PROD)


async def test_production_goes_first() -> None:
    g = AdmissionGate(Limits(max_in_flight=1, max_queue=10, queue_timeout_s=5))
    await g.acquire(PROD)
    order: list[str] = []

    async def wait(prio: tuple[int, int], tag: str) -> None:
        await g.acquire(prio)
        order.append(tag)

    tasks = [
        asyncio.create_task(wait(PREVIEW, "p1")),
        asyncio.create_task(wait(PREVIEW, "p2")),
        asyncio.create_task(wait(PROD, "P1")),
    ]
    await asyncio.sleep(0)
    for _ in range(3):
        g.release()
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert order == ["P1", "p1", "p2"]


async def test_full_queue_evicts_newest_preview_for_production() -> None:
    g = AdmissionGate(Limits(max_in_flight=1, max_queue=2, queue_timeout_s=5))
    await g.acquire(PROD)
    p1 = asyncio.create_task(g.acquire(PREVIEW))
    p2 = asyncio.create_task(g.acquire(PREVIEW))
    await asyncio.sleep(0)
    prod = asyncio.create_task(g.acquire(PROD))
    await asyncio.sleep(0)
    with pytest.raises(Rejected):
        await p2
    with pytest.raises(Rejected):  # previews never evict anything
        await g.acquire(PREVIEW)
    g.release()
    await asyncio.wait_for(prod, 1)
    g.release()
    await asyncio.wait_for(p1, 1)


async def test_cancelled_waiter_leaks_no_slot() -> None:
    g = AdmissionGate(Limits(max_in_flight=1, max_queue=4, queue_timeout_s=5))
    await g.acquire(PROD)
    t = asyncio.create_task(g.acquire(PROD))
    await asyncio.sleep(0)
    g.release()  # hands the slot to t...
    t.cancel()  # ...which is cancelled before it runs
    try:
        await t
        g.release()  # Python 3.11's wait_for lets a completed acquire win over the cancel
    except asyncio.CancelledError:
        pass
    assert g.in_flight == 0 and g.queued == 0
    await asyncio.wait_for(g.acquire(PROD), 1)


async def test_cancelled_while_waiting() -> None:
    g = AdmissionGate(Limits(max_in_flight=1, max_queue=4, queue_timeout_s=5))
    await g.acquire(PROD)
    t = asyncio.create_task(g.acquire(PREVIEW))
    await asyncio.sleep(0.01)
    t.cancel()
    with pytest.raises(asyncio.CancelledError):
        await t
    assert g.queued == 0
    g.release()
    assert g.in_flight == 0


async def test_raising_limits_admits_waiters() -> None:
    g = AdmissionGate(Limits(max_in_flight=1, max_queue=4, queue_timeout_s=5))
    await g.acquire(PROD)
    t = asyncio.create_task(g.acquire(PROD))
    await asyncio.sleep(0)
    g.update(Limits(max_in_flight=2, max_queue=4, queue_timeout_s=5))
    await asyncio.wait_for(t, 1)
    assert g.in_flight == 2


async def test_key_priority_orders_within_a_tier_and_tier_goes_first() -> None:
    g = AdmissionGate(Limits(max_in_flight=1, max_queue=10, queue_timeout_s=5))
    await g.acquire(PROD)
    order: list[str] = []

    async def wait(prio: tuple[int, int], tag: str) -> None:
        await g.acquire(prio)
        order.append(tag)

    tasks = [
        asyncio.create_task(wait((0, 9), "preview-key9")),
        asyncio.create_task(wait((100, 0), "prod-key0")),
        asyncio.create_task(wait((100, 5), "prod-key5")),
        asyncio.create_task(wait((100, 5), "prod-key5-later")),
    ]
    await asyncio.sleep(0)
    assert g.ahead((100, 5)) == 2 and g.ahead((100, 0)) == 3 and g.ahead((0, 0)) == 4
    for _ in range(4):
        g.release()
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert order == ["prod-key5", "prod-key5-later", "prod-key0", "preview-key9"]


async def test_full_queue_sheds_lowest_priority_newest_and_counts_it() -> None:
    g = AdmissionGate(Limits(max_in_flight=1, max_queue=3, queue_timeout_s=5))
    await g.acquire(PROD)
    low_old = asyncio.create_task(g.acquire((0, 0), "preview"))
    await asyncio.sleep(0)
    low_new = asyncio.create_task(g.acquire((0, 0), "preview"))
    mid = asyncio.create_task(g.acquire((0, 5), "preview"))
    await asyncio.sleep(0)
    prod = asyncio.create_task(g.acquire((100, 0), "production"))
    await asyncio.sleep(0)
    with pytest.raises(Rejected):  # the newest of the lowest priority, not the key-5 one
        await low_new
    with pytest.raises(Rejected):  # an equal priority sheds nothing
        await g.acquire((0, 0), "preview")
    assert not low_old.done() and not mid.done() and not prod.done()
    assert g.shed == {("preview", "evicted"): 1, ("preview", "queue_full"): 1}
    for t in (prod, mid, low_old):
        g.release()
        await asyncio.wait_for(t, 1)


async def test_hold_times_feed_the_expected_time() -> None:
    now = [1000.0]
    g = AdmissionGate(Limits(max_in_flight=2, max_queue=8, queue_timeout_s=5), lambda: now[0])
    assert g.expected_s(PROD, "a") is None  # nothing recent: unknown
    for held in (1.0, 3.0):
        await g.acquire(PROD)
        g.release("a", held)
    await g.acquire(PROD)
    g.release("b", 8.0)
    assert g.hold_s("a") == 2.0 and g.hold_s() == 4.0 and g.hold_s("c") is None
    assert g.expected_s(PROD, "a") == 2.0  # a free slot: the route's own time
    await g.acquire(PROD)
    await g.acquire(PROD)
    # Both slots busy, none ahead: half a turnover (4 s / 2 slots) then route a's 2 s.
    assert g.expected_s(PROD, "a") == pytest.approx(0.5 * 4.0 / 2 + 2.0)
    assert g.expected_s(PROD, "c") == pytest.approx(0.5 * 4.0 / 2)  # unknown route: the wait
    now[0] += 61  # older than HOLD_WINDOW_S: forgotten
    assert g.hold_s("a") is None and g.expected_s(PROD, "a") is None
    g.release()
    g.release()
    assert g.in_flight == 0


async def test_a_tier_budget_shorter_than_the_queue_timeout_bounds_the_wait() -> None:
    g = AdmissionGate(Limits(max_in_flight=1, max_queue=4, queue_timeout_s=5))
    await g.acquire(PROD)
    with pytest.raises(QueueTimeout) as err:
        await asyncio.wait_for(g.acquire(PREVIEW, "preview", budget_s=0.05), 1)
    assert err.value.budget
    assert g.shed == {("preview", "latency_budget"): 1} and g.queued == 0
    g.update(Limits(max_in_flight=1, max_queue=4, queue_timeout_s=0.05))
    with pytest.raises(QueueTimeout) as err:  # the queue's own limit is the shorter one
        await asyncio.wait_for(g.acquire(PREVIEW, "preview", budget_s=10), 1)
    assert not err.value.budget and g.shed[("preview", "queue_timeout")] == 1


def _policy() -> PolicyTable:
    spec = {
        "tiers": [
            {"name": "production", "priority": 100, "latencyBudgetMs": 500,
             "degradeTo": {"slow": "preview"}},
            {"name": "preview", "latencyBudgetMs": 500},
        ],
        "routes": [
            {"name": "fast", "match": {"tiers": ["preview"]}, "pool": "small"},
            {"name": "all", "pool": "big"},
        ],
    }  # fmt: skip
    return compile_policy(RoutingPolicy.model_validate({"metadata": {"name": "p"}, "spec": spec}))


async def _admit(g: AdmissionGate, table: PolicyTable, tier: str) -> Admitted | Refused:
    parsed = resolve_tier(parse_request(f'{{"prompt": "x", "tier": "{tier}"}}'.encode(), {}),
                          table.tiers, table.key)  # fmt: skip
    route = match_route(table.routes, parsed.intent)
    assert route is not None
    queued: dict[tuple[str, str], int] = {}
    got = await admit(
        g, table, parsed, route, lambda p: match_route(table.routes, p.intent), 0, lambda: 0.0,
        queued,
    )  # fmt: skip
    assert queued == {}
    return got


async def test_admit_degrades_a_slow_tier_and_refuses_when_nothing_fits() -> None:
    table = _policy()
    g = AdmissionGate(Limits(max_in_flight=4, max_queue=8, queue_timeout_s=5))
    got = await _admit(g, table, "production")  # nothing measured yet: admitted as asked
    assert (
        isinstance(got, Admitted)
        and got.route.name == "all"
        and "X-ModelFleet-Degraded" not in got.headers
    )
    g.release("all", 0.8)
    got = await _admit(g, table, "production")
    assert isinstance(got, Admitted)
    assert (got.route.name, got.parsed.intent.tier, got.chosen) == ("fast", "preview", "small")
    assert got.headers == {
        "X-ModelFleet-Degraded": "slow production->preview",
        "X-ModelFleet-Route": "fast",
    }
    g.release("fast", 0.9)  # the preview route is slow now too
    got = await _admit(g, table, "production")
    assert isinstance(got, Refused) and got.code == "latency_budget_exceeded"
    assert "degraded via preview" in got.message and got.retry_after_s == 1.0
    got = await _admit(g, table, "preview")
    assert isinstance(got, Refused) and got.code == "latency_budget_exceeded"
    assert g.degraded == {("production", "preview", "slow"): 1}
    assert g.shed == {("production", "latency_budget"): 1, ("preview", "latency_budget"): 1}
    assert g.in_flight == 0
