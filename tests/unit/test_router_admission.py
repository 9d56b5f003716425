"""Admission gate: limits, fast refusal, queue timeout, production first, slot hand-over."""

from __future__ import annotations

import asyncio

import pytest

from modelfleet.router.admission import AdmissionGate, Limits, QueueTimeout, Rejected


async def test_fast_path_and_rejection() -> None:
    g = AdmissionGate(Limits(max_in_flight=2, max_queue=1, queue_timeout_s=5))
    await g.acquire("production")
    await g.acquire("production")
    waiter = asyncio.create_task(g.acquire("production"))
    await asyncio.sleep(0)
    assert g.queued == 1
    with pytest.raises(Rejected):
        await g.acquire("production")
    g.release()
    await asyncio.wait_for(waiter, 1)
    assert g.in_flight == 2 and g.queued == 0


async def test_queue_timeout() -> None:
    g = AdmissionGate(Limits(max_in_flight=1, max_queue=4, queue_timeout_s=0.05))
    await g.acquire("preview")
    with pytest.raises(QueueTimeout):
        await g.acquire("preview")
    assert g.queued == 0 and g.in_flight == 1


async def test_zero_queue_rejects_at_once() -> None:
    g = AdmissionGate(Limits(max_in_flight=1, max_queue=0, queue_timeout_s=5))
    await g.acquire("production")
    with pytest.raises(Rejected):
        await g.acquire("production")


async def test_production_goes_first() -> None:
    g = AdmissionGate(Limits(max_in_flight=1, max_queue=10, queue_timeout_s=5))
    await g.acquire("production")
    order: list[str] = []

    async def wait(tier: str, tag: str) -> None:
        await g.acquire(tier)
        order.append(tag)

    tasks = [
        asyncio.create_task(wait("preview", "p1")),
        asyncio.create_task(wait("preview", "p2")),
        asyncio.create_task(wait("production", "P1")),
    ]
    await asyncio.sleep(0)
    for _ in range(3):
        g.release()
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert order == ["P1", "p1", "p2"]


async def test_full_queue_evicts_newest_preview_for_production() -> None:
    g = AdmissionGate(Limits(max_in_flight=1, max_queue=2, queue_timeout_s=5))
    await g.acquire("production")
    p1 = asyncio.create_task(g.acquire("preview"))
    p2 = asyncio.create_task(g.acquire("preview"))
    await asyncio.sleep(0)
    prod = asyncio.create_task(g.acquire("production"))
    await asyncio.sleep(0)
    with pytest.raises(Rejected):
        await p2
    with pytest.raises(Rejected):  # previews never evict anything
        await g.acquire("preview")
    g.release()
    await asyncio.wait_for(prod, 1)
    g.release()
    await asyncio.wait_for(p1, 1)


async def test_cancelled_waiter_leaks_no_slot() -> None:
    g = AdmissionGate(Limits(max_in_flight=1, max_queue=4, queue_timeout_s=5))
    await g.acquire("production")
    t = asyncio.create_task(g.acquire("production"))
    await asyncio.sleep(0)
    g.release()  # hands the slot to t...
    t.cancel()  # ...which is cancelled before it runs
    try:
        await t
        g.release()  # Python 3.11's wait_for lets a completed acquire win over the cancel
    except asyncio.CancelledError:
        pass
    assert g.in_flight == 0 and g.queued == 0
    await asyncio.wait_for(g.acquire("production"), 1)


async def test_cancelled_while_waiting() -> None:
    g = AdmissionGate(Limits(max_in_flight=1, max_queue=4, queue_timeout_s=5))
    await g.acquire("production")
    t = asyncio.create_task(g.acquire("preview"))
    await asyncio.sleep(0.01)
    t.cancel()
    with pytest.raises(asyncio.CancelledError):
        await t
    assert g.queued == 0
    g.release()
    assert g.in_flight == 0


async def test_raising_limits_admits_waiters() -> None:
    g = AdmissionGate(Limits(max_in_flight=1, max_queue=4, queue_timeout_s=5))
    await g.acquire("production")
    t = asyncio.create_task(g.acquire("production"))
    await asyncio.sleep(0)
    g.update(Limits(max_in_flight=2, max_queue=4, queue_timeout_s=5))
    await asyncio.wait_for(t, 1)
    assert g.in_flight == 2
