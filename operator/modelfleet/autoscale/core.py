"""Desired replicas from the routers' live demand, as Knative's KPA decides them.

Demand samples (requests in flight at the workers plus queued/held in the routers, summed
over all routers) arrive every second or two. Two averages are kept: the stable window
(default 60 s) sizes the pool; the panic window (default 6 s) reacts to a burst. When the
short window needs `panic_threshold` times the ready replicas, the pool scales on it and
does not scale down until a full stable window has passed without panic.

Against flapping: a dead band (the stable demand must leave +-10 % of what the current
replicas carry before anything moves), HPA-style stabilisation (scale up to the lowest,
down to the highest recommendation of their windows), step bounds per change, and no
scale-down before a whole stable window has been observed (a new leadership term starts
with no history). Scale to zero only after `scale_to_zero_delay` without any demand; from
zero at once when a router holds a request for the pool.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from modelfleet.api.autoscaling import AutoscalingSpec

TOLERANCE = 0.1  # the dead band around the current replicas' capacity
_EPS = 1e-9

# Reasons (stable strings for status.scaleReason and Events).
NO_DATA = "NoDemandData"
HELD_AT_ZERO = "RequestsHeldAtZero"
PANIC = "Panic"
STABLE = "StableWindow"
WITHIN_TOLERANCE = "WithinTolerance"
WARMING_UP = "WarmingUp"
STABILIZING = "Stabilizing"
IDLE = "ScaleToZero"
IDLE_PENDING = "WaitingForScaleToZeroDelay"
BOUNDS = "Bounds"


@dataclass(frozen=True)
class Params:
    min_replicas: int
    max_replicas: int
    target: float
    queue_only: bool
    stable_s: float
    panic_s: float
    panic_threshold: float
    up_stabilization_s: float
    down_stabilization_s: float
    max_up_step: int
    max_down_step: int
    zero_delay_s: float

    @staticmethod
    def of(spec: AutoscalingSpec) -> Params:
        return Params(
            min_replicas=spec.min_replicas,
            max_replicas=spec.max_replicas,
            target=spec.target,
            queue_only=spec.metric == "queueDepth",
            stable_s=spec.seconds("stable_window"),
            panic_s=spec.seconds("panic_window"),
            panic_threshold=spec.panic_threshold,
            up_stabilization_s=spec.seconds("scale_up_stabilization"),
            down_stabilization_s=spec.seconds("scale_down_stabilization"),
            max_up_step=spec.max_scale_up_step,
            max_down_step=spec.max_scale_down_step,
            zero_delay_s=spec.seconds("scale_to_zero_delay"),
        )


@dataclass(frozen=True)
class Demand:
    """One pool's demand summed over the routers that answered."""

    in_flight: float = 0
    queued: float = 0
    held: float = 0

    def value(self, queue_only: bool) -> float:
        waiting = self.queued + self.held
        return waiting if queue_only else self.in_flight + waiting


@dataclass(frozen=True)
class State:
    """What the autoscaler remembers of one pool (per leadership term)."""

    since: float | None = None  # first sample of this term
    samples: tuple[tuple[float, float], ...] = ()  # (time, demand) within the stable window
    recommendations: tuple[tuple[float, int], ...] = ()  # (time, replicas) for stabilisation
    panic_until: float | None = None
    last_demand: float | None = None  # last time any demand (or a held request) was seen


@dataclass(frozen=True)
class Decision:
    desired: int
    reason: str
    message: str
    state: State
    stable_demand: float = 0.0
    panic_demand: float = 0.0
    panicking: bool = False


def _avg(samples: tuple[tuple[float, float], ...], since: float) -> float:
    vals = [d for t, d in samples if t >= since]
    return sum(vals) / len(vals) if vals else 0.0


def _need(demand: float, target: float) -> int:
    return max(0, math.ceil(demand / target - _EPS))


def decide(
    p: Params,
    state: State,
    now: float,
    demand: Demand | None,
    current: int,
    ready: int,
) -> Decision:
    """The replicas the pool should have now. `demand` None: no router answered (keep
    the current replicas, but a pool below minReplicas still comes up to it)."""
    if demand is None:
        desired = min(max(current, p.min_replicas), p.max_replicas)
        why = BOUNDS if desired != current else NO_DATA
        return Decision(desired, why, "no router answered the demand query", state)

    since = state.since if state.since is not None else now
    value = demand.value(p.queue_only)
    keep_from = now - p.stable_s
    samples = (*(s for s in state.samples if s[0] > keep_from), (now, value))
    last_demand = now if (value > 0 or demand.held > 0) else state.last_demand
    stable = _avg(samples, keep_from)
    panic = _avg(samples, now - p.panic_s)
    want_stable = _need(stable, p.target)
    want_panic = _need(panic, p.target)

    panic_until = state.panic_until
    if panic_until is not None and now >= panic_until:
        panic_until = None
    if want_panic > current and want_panic >= p.panic_threshold * max(ready, 1):
        panic_until = now + p.stable_s  # (re)enter: stay until a calm stable window
    panicking = panic_until is not None

    if panicking:
        rec, reason = max(want_panic, current), PANIC
    elif current > 0 and abs(stable / p.target - current) <= TOLERANCE * current:
        rec, reason = current, WITHIN_TOLERANCE
    else:
        rec, reason = want_stable, STABLE

    floor = p.min_replicas
    idle_for = now - (last_demand if last_demand is not None else since)
    if floor == 0 and rec == 0 and idle_for < p.zero_delay_s and current > 0:
        floor, reason = 1, IDLE_PENDING
    rec = min(max(rec, floor), p.max_replicas)

    horizon = now - max(p.up_stabilization_s, p.down_stabilization_s)
    recs = (*(r for r in state.recommendations if r[0] > horizon), (now, rec))
    new_state = State(
        since=since,
        samples=samples,
        recommendations=recs,
        panic_until=panic_until,
        last_demand=last_demand,
    )
    desired = current
    if demand.held > 0 and current == 0:
        # From zero at once (a client waits), sized by what waits now: no history to smooth.
        now_need = min(_need(value, p.target), p.max_up_step)
        desired, reason = max(rec, now_need, 1), HELD_AT_ZERO
    elif rec > current:
        up = rec if panicking else min(r for t, r in recs if t >= now - p.up_stabilization_s)
        if up > current:
            desired = min(up, current + p.max_up_step)
        else:
            reason = STABILIZING
    elif rec < current:
        down = max(r for t, r in recs if t >= now - p.down_stabilization_s)
        if current > p.max_replicas:
            desired, reason = p.max_replicas, BOUNDS  # spec edited: back in bounds at once
        elif now - since < p.stable_s:
            reason = WARMING_UP  # a whole stable window of samples before scaling down
        elif down < current:
            desired = max(down, current - p.max_down_step)
            if desired == 0:
                reason = IDLE
        else:
            reason = STABILIZING
    if desired < p.min_replicas and not (desired == 0 and p.min_replicas == 0):
        desired, reason = p.min_replicas, BOUNDS
    desired = min(desired, p.max_replicas)
    message = (
        f"demand {value:g} (stable {stable:.2f}, panic {panic:.2f} over "
        f"{p.stable_s:g}s/{p.panic_s:g}s), target {p.target:g} per replica: "
        f"{current} -> {desired}"
    )
    return Decision(
        desired,
        reason,
        message,
        new_state,
        stable_demand=stable,
        panic_demand=panic,
        panicking=panicking,
    )
