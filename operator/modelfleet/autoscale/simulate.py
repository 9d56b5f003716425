"""Run the autoscaler against a demand curve (tables, the bench's steady-load check):
pods become ready `ready_delay` seconds after they are asked for."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise

from modelfleet.autoscale.core import Decision, Demand, Params, State, decide


@dataclass(frozen=True)
class Step:
    t: float
    desired: int
    ready: int
    reason: str


def simulate(
    p: Params,
    demand_at: Callable[[float], Demand | None],
    seconds: float,
    *,
    start: int,
    tick: float = 1.0,
    ready_delay: float = 0.0,
) -> list[Step]:
    state = State()
    current = start
    ups: list[tuple[float, int]] = [(-1e9, start)]  # (when asked, replicas)
    out: list[Step] = []
    t = 0.0
    while t <= seconds + 1e-9:
        # Ready: the replicas asked for at least ready_delay ago (scale-down is instant).
        ready = min(current, max(r for w, r in ups if w <= t - ready_delay))
        d: Decision = decide(p, state, t, demand_at(t), current, ready)
        state = d.state
        if d.desired != current:
            ups.append((t, d.desired))
            current = d.desired
        out.append(Step(t, current, ready, d.reason))
        t += tick
    return out


def changes(steps: list[Step], after: float = 0.0) -> int:
    """How many times the replicas changed after `after` seconds."""
    kept = [s for s in steps if s.t >= after]
    return sum(1 for a, b in pairwise(kept) if a.desired != b.desired)
