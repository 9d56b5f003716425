"""The per-second ring behind /v1/stats: windows, expiry, bucket maths, exact merging."""

from __future__ import annotations

import random

from modelfleet.routing.ladder import Attempt
from modelfleet.routing.stats import HORIZON_S, AttemptStats

BOUNDS = (0.1, 1.0, 10.0)


def _wire(s: AttemptStats, window: int, now: float) -> dict[str, dict[str, object]]:
    return {w.pool: w.wire(s.bounds) for w in s.window(window, now)}


def test_counts_and_buckets() -> None:
    s = AttemptStats(BOUNDS)
    t = 1000.0
    for secs, outcome in [
        (0.05, Attempt.OK),
        (0.1, Attempt.OK),  # on the bound: in the 0.1 bucket (le)
        (0.5, Attempt.OK),
        (20.0, Attempt.OK),  # +Inf only
        (3.0, Attempt.TIMEOUT),
        (0.01, Attempt.CONNECT_ERROR),
        (0.2, Attempt.UPSTREAM_ERROR),
        (0.2, Attempt.BUSY),  # neither success nor failure of the pool
        (0.2, Attempt.CLIENT_ERROR),
    ]:
        s.record("ns", "p", outcome, secs, t)
    w = _wire(s, 60, t)["p"]
    assert w["requests"] == 7
    assert w["errors"] == 3
    assert w["latency_buckets"] == [[0.1, 2], [1.0, 3], [10.0, 3], ["+Inf", 4]]
    assert w["namespace"] == "ns"


def test_window_edges_and_expiry() -> None:
    s = AttemptStats(BOUNDS)
    for sec in range(100, 110):  # one ok per second, seconds 100..109
        s.record("ns", "p", Attempt.OK, 0.01, sec + 0.5)
    assert s.window(1, 109.9)[0].requests == 1
    assert s.window(5, 109.9)[0].requests == 5
    assert s.window(3600, 109.9)[0].requests == 10
    assert s.window(5, 120.0)[0].requests == 0  # all older than the window
    # An hour later the same slots are reused, and the old data does not leak in.
    s.record("ns", "p", Attempt.OK, 0.01, 100.5 + HORIZON_S)
    assert s.window(HORIZON_S, 109.5 + HORIZON_S)[0].requests == 1


def test_window_is_clamped() -> None:
    s = AttemptStats(BOUNDS)
    s.record("ns", "p", Attempt.OK, 0.01, 5000.0)
    assert s.window(0, 5000.0)[0].requests == 1
    assert s.window(10**6, 5000.0)[0].requests == 1


def test_merging_two_routers_is_exact() -> None:
    rng = random.Random(3)
    a, b, both = AttemptStats(BOUNDS), AttemptStats(BOUNDS), AttemptStats(BOUNDS)
    for i in range(2000):
        outcome = rng.choice([Attempt.OK, Attempt.OK, Attempt.OK, Attempt.TIMEOUT])
        secs, now = rng.expovariate(2.0), 50_000 + i * 0.01
        (a if i % 2 else b).record("ns", "p", outcome, secs, now)
        both.record("ns", "p", outcome, secs, now)
    wa, wb, wt = (x.window(60, 50_020)[0] for x in (a, b, both))
    assert wa.requests + wb.requests == wt.requests
    assert wa.errors + wb.errors == wt.errors
    assert tuple(x + y for x, y in zip(wa.buckets, wb.buckets, strict=True)) == wt.buckets
