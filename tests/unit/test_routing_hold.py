"""Scale from zero's decisions (routing.hold): hold or not and until when, the cold-start
clock, the client's answer when no worker came, and the demand rows the autoscaler reads."""

from __future__ import annotations

import pytest

from modelfleet.routing.hold import (
    DEFAULT_COLD_RETRY_S,
    ColdStart,
    Hold,
    HoldLimits,
    NoHold,
    PolicyBounds,
    cold_failure,
    cold_retry_after,
    decide_hold,
    demand_rows,
    held_cap,
)

LIMITS = HoldLimits(max_held_per_pool=2, max_hold_s=50.0, max_held_share=1.0)


@pytest.mark.parametrize(
    ("zero", "held", "queue_timeout", "deadline", "limits", "want"),
    [
        # A pool that does not scale from zero is never held for.
        (False, 0, 30.0, 1120.0, LIMITS, NoHold("not_autoscaled_to_zero")),
        # The policy's queue timeout bounds the hold ...
        (True, 0, 30.0, 1120.0, LIMITS, Hold(1030.0)),
        # ... the router's cap ...
        (True, 1, 600.0, 1120.0, LIMITS, Hold(1050.0)),
        # ... and the request's deadline.
        (True, 0, 30.0, 1010.0, LIMITS, Hold(1010.0)),
        # At the per-pool limit: not held.
        (True, 2, 30.0, 1120.0, LIMITS, NoHold("hold_limit")),
        (True, 0, 30.0, 1000.0, LIMITS, NoHold("no_time")),
        (True, 0, 30.0, 990.0, LIMITS, NoHold("no_time")),
        # Holding off (flag 0) or a policy that never lets a request wait.
        (True, 0, 30.0, 1120.0, HoldLimits(0, 50.0, 1.0), NoHold("disabled")),
        # Held requests of one pool take at most their share of the policy's 8 slots.
        (True, 3, 30.0, 1120.0, HoldLimits(9, 50.0, 0.5), Hold(1030.0)),
        (True, 4, 30.0, 1120.0, HoldLimits(9, 50.0, 0.5), NoHold("hold_limit")),
        (True, 0, 0.0, 1120.0, LIMITS, NoHold("disabled")),
    ],
)
def test_decide_hold(
    zero: bool,
    held: int,
    queue_timeout: float,
    deadline: float,
    limits: HoldLimits,
    want: Hold | NoHold,
) -> None:
    got = decide_hold(
        scales_from_zero=zero,
        held_now=held,
        now=1000.0,
        policy=PolicyBounds(queue_timeout, max_in_flight=8),
        deadline=deadline,
        limits=limits,
    )
    assert got == want


@pytest.mark.parametrize(
    ("flag", "share", "max_in_flight", "want"),
    [
        (256, 0.5, 64, 32),  # the defaults: half the policy's slots
        (10, 0.5, 64, 10),  # the flag is lower
        (256, 0.5, 1, 1),  # a one-slot policy still holds one
        (256, 1.0, 64, 64),
        (0, 0.5, 64, 0),
    ],
)
def test_held_cap(flag: int, share: float, max_in_flight: int, want: int) -> None:
    assert held_cap(HoldLimits(flag, 300.0, share), max_in_flight) == want


def test_cold_start_clock_runs_from_the_first_held_request_to_the_first_endpoint() -> None:
    c = ColdStart()
    assert c.endpoints_seen(5.0) == (c, None)  # not running: nothing measured
    c = c.held(10.0).held(12.0)  # a second held request does not restart it
    assert c.first_held_at == 10.0
    c, took = c.endpoints_seen(17.5)
    assert took == 7.5 and c == ColdStart(None, 7.5)
    c, again = c.endpoints_seen(20.0)  # later snapshots with endpoints measure nothing
    assert again is None and c.last_seconds == 7.5
    c = c.held(100.0)  # the next cold start keeps the last one for Retry-After
    assert c == ColdStart(100.0, 7.5)


@pytest.mark.parametrize(
    ("cold", "now", "want"),
    [
        (ColdStart(), 0.0, DEFAULT_COLD_RETRY_S),
        (ColdStart(50.0, None), 60.0, DEFAULT_COLD_RETRY_S),
        (ColdStart(None, 40.0), 60.0, 40.0),  # clock stopped: a whole cold start
        (ColdStart(50.0, 40.0), 60.0, 30.0),  # 10 s of 40 gone
        (ColdStart(50.0, 40.0), 200.0, 1.0),  # overdue: at least 1 s
    ],
)
def test_cold_retry_after(cold: ColdStart, now: float, want: float) -> None:
    assert cold_retry_after(cold, now) == want


def test_cold_failure_names_the_pool_the_reason_and_when_to_retry() -> None:
    f = cold_failure("big", "expired", 29.96, 12.2)
    assert (f.status, f.code, f.retry_after_s) == (503, "pool_starting", 12.2)
    assert "pool big is scaling up from zero replicas" in f.message
    assert "held 30.0s" in f.message and "retry after 13s" in f.message
    limit = cold_failure("big", "hold_limit", 0.0, 5.0)
    assert "as many requests" in limit.message and "held" not in limit.message.split(":")[0]
    assert "no time" in cold_failure("big", "no_time", 0.0, 5.0).message


def test_demand_rows_merge_sort_and_leave_out_idle_pools() -> None:
    rows = demand_rows(
        {("b", "p"): 3, ("a", "q"): 1, ("a", "idle"): 0},
        {("a", "q"): 2, ("a", ""): 4},  # "": a route whose weights are all 0
        {("a", "z"): 1},
    )
    assert rows == [
        {"namespace": "a", "pool": "q", "in_flight": 1, "queued": 2, "held": 0},
        {"namespace": "a", "pool": "z", "in_flight": 0, "queued": 0, "held": 1},
        {"namespace": "b", "pool": "p", "in_flight": 3, "queued": 0, "held": 0},
    ]
    assert demand_rows({}, {}, {}) == []
