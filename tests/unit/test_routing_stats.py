"""The per-second ring behind /v1/stats: windows, expiry, bucket maths, exact merging;
and the service-time log beside it, by batch size."""

from __future__ import annotations

import random
from typing import Any

import pytest

from modelfleet.router.upstream import service_time
from modelfleet.routing.ladder import Attempt
from modelfleet.routing.stats import BATCH_STRATA, HORIZON_S, AttemptStats, batch_stratum

BOUNDS = (0.1, 1.0, 10.0)


def _wire(s: AttemptStats, window: int, now: float) -> dict[str, dict[str, Any]]:
    return {w.pool: w.wire(s.bounds, s.service_bounds) for w in s.window(window, now)}


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


# -- service time per image, by batch size -------------------------------------------------

SERVICE = (0.01, 0.02, 0.04)


def test_service_time_by_batch_size() -> None:
    s = AttemptStats(BOUNDS, SERVICE)
    t = 1000.0
    for secs, batch, outcome in [
        (0.005, 1, Attempt.OK),
        (0.015, 1, Attempt.OK),
        (0.02, 4, Attempt.OK),  # on the bound: le
        (0.5, 6, Attempt.OK),  # +Inf, stratum 5-8
        (None, 1, Attempt.OK),  # the worker did not say: latency only
        (0.01, 1, Attempt.TIMEOUT),  # errors carry no service time
        (0.01, 1, Attempt.BUSY),
    ]:
        s.record("ns", "p", outcome, 0.2, t, secs, batch)
    w = _wire(s, 60, t)["p"]
    assert w["requests"] == 6
    assert w["latency_buckets"][-1] == ["+Inf", 5]
    assert w["service_time"] == [
        {"batch_size": "1", "buckets": [[0.01, 1], [0.02, 2], [0.04, 2], ["+Inf", 2]]},
        {"batch_size": "4", "buckets": [[0.01, 0], [0.02, 1], [0.04, 1], ["+Inf", 1]]},
        {"batch_size": "5-8", "buckets": [[0.01, 0], [0.02, 0], [0.04, 0], ["+Inf", 1]]},
    ]


def test_no_service_time_no_key() -> None:
    s = AttemptStats(BOUNDS, SERVICE)
    s.record("ns", "p", Attempt.OK, 0.2, 10.0)
    assert "service_time" not in _wire(s, 60, 10.0)["p"]


@pytest.mark.parametrize(
    ("batch", "name"),
    [(1, "1"), (2, "2"), (3, "3"), (4, "4"), (5, "5-8"), (8, "5-8"), (9, "9-16"), (64, "33-64"),
     (500, "33-64"), (0, "1")],
)  # fmt: skip
def test_batch_strata(batch: int, name: str) -> None:
    assert BATCH_STRATA[batch_stratum(batch)][1] == name


def test_service_window_edges_and_capacity() -> None:
    s = AttemptStats(BOUNDS, SERVICE, service_capacity=8)
    for sec in range(100, 110):  # one per second; only the newest 8 are kept
        s.record("ns", "p", Attempt.OK, 0.2, sec + 0.5, 0.015)

    def n(window: int, now: float) -> int:
        return sum(sum(counts) for _, counts in s.window(window, now)[0].service)

    assert n(1, 109.9) == 1
    assert n(5, 109.9) == 5
    assert n(3600, 109.9) == 8  # the window reaches further back than the log
    assert n(5, 120.0) == 0
    assert n(3, 104.0) == 3  # seconds 102..104, the oldest kept
    assert n(3, 101.0) == 0  # seconds 99..101: dropped for newer ones
    # A clock that steps back is clamped: order (and the binary search) holds.
    s.record("ns", "p", Attempt.OK, 0.2, 50.0, 0.015)
    assert n(1, 109.9) == 2


def test_service_merging_is_exact() -> None:
    rng = random.Random(5)
    a, b, both = (AttemptStats(BOUNDS, SERVICE, service_capacity=500) for _ in range(3))
    for i in range(400):
        secs, batch, now = rng.expovariate(50.0), rng.choice([1, 2, 4]), 7_000 + i * 0.05
        (a if i % 3 else b).record("ns", "p", Attempt.OK, 0.1, now, secs, batch)
        both.record("ns", "p", Attempt.OK, 0.1, now, secs, batch)
    wa, wb, wt = (dict(x.window(15, 7_020)[0].service) for x in (a, b, both))
    assert wt.keys() == {"1", "2", "4"}
    for k, counts in wt.items():
        assert (
            tuple(x + y for x, y in zip(wa.get(k, (0,) * 4), wb.get(k, (0,) * 4), strict=True))
            == counts
        )
    assert sum(sum(c) for c in wt.values()) == 280  # seconds 7006..7019, 20 a second


@pytest.mark.parametrize(
    ("seconds", "batch", "want"),
    [
        ("0.021300", "4", (0.0213, 4)),
        ("0.5", None, (0.5, 1)),
        (None, "4", (None, 1)),
        ("abc", "4", (None, 1)),
        ("nan", "1", (None, 1)),
        ("inf", "1", (None, 1)),
        ("-1", "1", (None, 1)),
        ("0.1", "x", (0.1, 1)),
        ("0.1", "0", (0.1, 1)),
    ],
)
def test_service_time_headers(
    seconds: str | None, batch: str | None, want: tuple[float | None, int]
) -> None:
    assert service_time(seconds, batch) == want
