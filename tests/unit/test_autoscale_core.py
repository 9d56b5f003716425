"""The autoscaler's decisions: windows, panic, stabilisation, steps, zero."""

from __future__ import annotations

import random
from itertools import pairwise

import pytest

from modelfleet.api.autoscaling import AutoscalingSpec
from modelfleet.autoscale import core
from modelfleet.autoscale.core import Demand, Params, State, decide
from modelfleet.autoscale.simulate import changes, simulate


def params(**kw: object) -> Params:
    spec = {"minReplicas": 1, "maxReplicas": 4, "target": 2, **kw}
    return Params.of(AutoscalingSpec.model_validate(spec))


def flat(n: float) -> Demand:
    return Demand(in_flight=n)


def test_params_from_spec_defaults() -> None:
    p = Params.of(AutoscalingSpec(max_replicas=3))
    assert (p.min_replicas, p.max_replicas, p.target) == (1, 3, 4)
    assert (p.stable_s, p.panic_s, p.panic_threshold) == (60, 6, 2)
    assert (p.up_stabilization_s, p.down_stabilization_s, p.zero_delay_s) == (0, 60, 300)
    assert (p.max_up_step, p.max_down_step, p.queue_only) == (4, 1, False)


@pytest.mark.parametrize(
    ("demand", "queue_only", "value"),
    [
        (Demand(3, 2, 1), False, 6),
        (Demand(3, 2, 1), True, 3),
        (Demand(0, 0, 0), False, 0),
    ],
)
def test_demand_value(demand: Demand, queue_only: bool, value: float) -> None:
    assert demand.value(queue_only) == value


@pytest.mark.parametrize(
    ("steady", "start", "expect"),
    [
        (8.0, 1, 4),  # 8 in flight / 2 per replica
        (5.0, 1, 3),  # ceil(2.5)
        (100.0, 1, 4),  # capped at maxReplicas
        (1.0, 4, 1),  # down to minReplicas' worth
        (0.0, 3, 1),  # never below minReplicas
    ],
)
def test_steady_demand_settles_on_its_replicas(steady: float, start: int, expect: int) -> None:
    steps = simulate(params(), lambda t: flat(steady), 400, start=start)
    assert steps[-1].desired == expect
    assert changes(steps, after=300) == 0


def test_burst_panics_and_scales_up_at_once() -> None:
    p = params(maxReplicas=10, maxScaleUpStep=10)
    # 10 s of calm, then 20 in flight: the 6 s window needs 10 replicas (>= 2 x 1 ready).
    steps = simulate(p, lambda t: flat(0 if t < 10 else 20), 20, start=1)
    up = next(s for s in steps if s.desired > 1)
    assert up.t == 10 and up.reason == core.PANIC
    # The panic window's average reaches 20 once it holds only burst samples (6 s).
    assert next(s.t for s in steps if s.desired == 10) <= 16


def test_step_bound_limits_each_change() -> None:
    p = params(maxReplicas=10, maxScaleUpStep=2)
    steps = simulate(p, lambda t: flat(0 if t < 10 else 20), 20, start=1)
    sizes = [s.desired for s in steps]
    assert max(b - a for a, b in pairwise(sizes)) <= 2
    assert sizes[-1] == 10


def test_panic_never_scales_down_until_a_calm_stable_window() -> None:
    p = params(maxReplicas=8, stableWindow="30s", panicWindow="3s", scaleDownStabilization="0s")
    steps = simulate(p, lambda t: flat(16 if 5 <= t < 10 else 0), 120, start=1)
    at = {int(s.t): s for s in steps}
    assert at[8].desired == 8
    assert at[8].reason == core.PANIC
    # Panic was last (re)entered at 6 s; it lasts a whole stable window (30 s) from there.
    assert all(at[t].desired == 8 for t in range(8, 36))
    assert at[36].desired == 7
    assert at[119].desired == 1


def test_scale_down_waits_for_stabilization_window_and_steps_by_one() -> None:
    p = params(stableWindow="10s", panicWindow="2s", scaleDownStabilization="20s")
    steps = simulate(p, lambda t: flat(8 if t < 30 else 0), 90, start=4)
    downs = [s for a, s in pairwise(steps) if s.desired < a.desired]
    assert downs, "it scales down"
    assert downs[0].t >= 30 + 20 - 1  # the highest recommendation of the last 20 s rules
    assert all(a.desired - s.desired <= 1 for a, s in pairwise(steps))
    assert steps[-1].desired == 1


def test_no_scale_down_before_a_stable_window_was_observed() -> None:
    # A new leadership term: 4 replicas, zero demand from the first sample on.
    p = params(stableWindow="30s", scaleDownStabilization="0s")
    steps = simulate(p, lambda t: flat(0), 40, start=4)
    assert all(s.desired == 4 for s in steps if s.t < 30)
    assert steps[30].reason != core.WARMING_UP
    assert steps[29].reason == core.WARMING_UP


def test_no_data_keeps_replicas() -> None:
    d = decide(params(), State(), 0, None, 3, 3)
    assert (d.desired, d.reason) == (3, core.NO_DATA)
    assert decide(params(minReplicas=2), State(), 0, None, 0, 0).desired == 2


def test_out_of_bounds_replicas_come_back_at_once() -> None:
    assert decide(params(), State(), 0, flat(0), 7, 7).desired == 4
    assert decide(params(minReplicas=3), State(), 0, flat(0), 1, 1).desired == 3


@pytest.mark.parametrize("noise", [0.5, 1.0, 1.5])
def test_replica_changes_per_minute_under_steady_load_is_zero(noise: float) -> None:
    # 6 in flight on average (3 replicas' worth), each sample off by up to +-noise.
    rnd = random.Random(16)
    p = params(maxReplicas=8, stableWindow="60s", panicWindow="6s")
    steps = simulate(p, lambda t: flat(6 + rnd.uniform(-noise, noise)), 900, start=1)
    assert steps[-1].desired == 3
    assert changes(steps, after=120) == 0  # 13 minutes without a change


def test_sawtooth_around_a_boundary_does_not_flap() -> None:
    # 7-9 in flight with target 2: between 4 and 5 replicas' worth each second.
    p = params(maxReplicas=8)
    steps = simulate(p, lambda t: flat(8 + (1 if int(t) % 2 else -1)), 900, start=4)
    assert changes(steps, after=120) == 0


def test_queue_depth_metric_ignores_in_flight() -> None:
    p = params(metric="queueDepth", target=1, maxReplicas=8)
    steps = simulate(p, lambda t: Demand(in_flight=30, queued=3), 200, start=1)
    assert steps[-1].desired == 3


def test_scale_to_zero_only_after_the_delay_with_no_demand() -> None:
    p = params(
        minReplicas=0,
        stableWindow="10s",
        panicWindow="2s",
        scaleDownStabilization="0s",
        scaleToZeroDelay="30s",
    )
    steps = simulate(p, lambda t: flat(2 if t < 20 else 0), 80, start=1)
    at = {int(s.t): s for s in steps}
    # The last demand was seen at 19 s: 30 s later the pool goes to zero, not before.
    assert all(at[t].desired == 1 for t in range(0, 49))
    assert at[48].reason == core.IDLE_PENDING
    zero = next(s for s in steps if s.desired == 0)
    assert zero.t == 49 and zero.reason == core.IDLE
    assert at[80].desired == 0


def test_zero_delay_counts_from_the_first_sample_of_a_term() -> None:
    p = params(
        minReplicas=0, stableWindow="10s", scaleDownStabilization="0s", scaleToZeroDelay="20s"
    )
    steps = simulate(p, lambda t: flat(0), 40, start=1)
    zero = next(s for s in steps if s.desired == 0)
    assert zero.t == 20


def test_held_request_scales_from_zero_at_once() -> None:
    p = params(minReplicas=0, scaleUpStabilization="30s")
    idle = decide(p, State(), 0, flat(0), 0, 0)
    assert idle.desired == 0
    d = decide(p, idle.state, 1, Demand(held=1), 0, 0)
    assert (d.desired, d.reason) == (1, core.HELD_AT_ZERO)
    many = decide(p, idle.state, 1, Demand(held=7), 0, 0)
    assert many.desired == 4  # the held requests' worth, capped at maxReplicas


def test_scale_up_stabilization_takes_the_lowest_recent_recommendation() -> None:
    p = params(maxReplicas=8, scaleUpStabilization="10s", panicThreshold=100)
    steps = simulate(p, lambda t: flat(0 if t < 5 else 12), 40, start=1)
    first_up = next(s for s in steps if s.desired > 1)
    assert first_up.t >= 15
