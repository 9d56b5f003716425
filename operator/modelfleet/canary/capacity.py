"""spec.capacity: how big each pool is while a canary runs. Pure: no clock, no I/O.

surge (the default): both pools keep their own replicas; nothing here writes any.
shift: with N the stable's replicas when the canary began (status.capacity.fullReplicas),

    candidate = max(1, ceil(w x N / 100))     stable = max(1, ceil((100 - w) x N / 100))

so the two sum to at most N + 1 at every weight: the canary needs one model's GPUs plus
one pod. The order of a move keeps that bound and never leaves the stable short of
what its weight needs:

- weight towards the candidate: the route moves first, the stable shrinks to what its
  remaining weight needs, and the candidate grows only into the room the stable's pods
  left (N + 1 - the stable's pods, spec or existing, whichever is more);
- weight back (rollback): the stable grows back first, the candidate shrinks to what is
  left, and the route keeps its old weight (status.capacity.routedWeight) until the stable
  has the ready replicas the new weight needs;
- success: the candidate reaches N ready replicas before the stable goes to 0.

A pool with spec.autoscaling is its autoscaler's: shift writes none of its replicas (the
autoscaler already follows the pool's share of demand, which moves with the weight) and
never waits for it.

A candidate the cluster cannot place (its pool's CapacityStarved condition) pauses the
canary with reason CapacityStarved (canary.core); `paused_message` says so.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from modelfleet.api.canary import CanaryPhase, CanarySpec, CapacityMode, CapacityStatus
from modelfleet.canary.types import Action, Decision, ScaleDownStable, ScalePool, SetWeight

# While shift waits for a pool (or a paused canary for capacity), look again this soon.
WAIT_POLL_SECONDS = 2.0


@dataclass(frozen=True)
class PoolSize:
    """One pool as the controller read it."""

    replicas: int  # spec.replicas
    pods: int = 0  # status.replicas: worker pods that exist
    ready: int = 0  # status.readyReplicas
    autoscaled: bool = False  # spec.autoscaling is set

    @property
    def footprint(self) -> int:
        """Pods the pool holds or is about to hold."""
        return max(self.replicas, self.pods)


@dataclass(frozen=True)
class CapacityPlan:
    """What to route and which replicas to write this tick.

    weight: the route's candidate percent now (may trail the status' canaryWeight);
    stable_replicas / candidate_replicas: to write, None to leave the pool alone;
    scale_down_ok: a succeeded canary may take the stable to 0 now;
    status: status.capacity (None under surge); requeue_after: look again this soon
    (None: no wait of shift's own)."""

    weight: int
    stable_replicas: int | None = None
    candidate_replicas: int | None = None
    scale_down_ok: bool = True
    status: CapacityStatus | None = None
    requeue_after: float | None = None


def stable_need(weight: int, full: int) -> int:
    """Stable replicas the stable's share (100 - weight) needs; at least one, so a
    rollback at 100% has a replica to start from and the sum stays within N + 1."""
    return max(1, math.ceil((100 - weight) * full / 100))


def candidate_need(weight: int, full: int) -> int:
    """Candidate replicas its weight needs; at least one (the canary's first pod)."""
    return max(1, math.ceil(weight * full / 100))


def plan(
    mode: CapacityMode,
    phase: CanaryPhase | None,
    weight: int,
    previous: CapacityStatus | None,
    stable: PoolSize,
    candidate: PoolSize,
) -> CapacityPlan:
    """The pools' sizes for a canary in `phase` whose decision routes `weight` percent."""
    if mode == "surge":
        return CapacityPlan(weight=weight)
    full = (previous.full_replicas if previous else None) or max(1, stable.replicas)
    routed_before = (
        previous.routed_weight if previous and previous.routed_weight is not None else weight
    )
    succeeded = phase == "Succeeded"

    # The route: forwards at once; backwards once the stable can carry the new share.
    routed = weight
    if (
        weight < routed_before
        and not stable.autoscaled
        and stable.ready < stable_need(weight, full)
    ):
        routed = routed_before

    stable_target = None if succeeded or stable.autoscaled else stable_need(weight, full)
    want = full if succeeded else candidate_need(routed, full)
    room = full + 1 - max(stable_target or 0, stable.footprint)
    candidate_target = None if candidate.autoscaled else max(1, min(want, room))

    scale_down_ok = not succeeded or candidate.autoscaled or candidate.ready >= full
    waiting = (
        routed != weight
        or not scale_down_ok
        or (candidate_target is not None and candidate.ready < candidate_target)
    )
    status = CapacityStatus(
        full_replicas=full,
        routed_weight=routed,
        stable_replicas=stable_target,
        candidate_replicas=candidate_target,
        message=_message(full, weight, routed, stable_target, candidate_target, scale_down_ok),
    )
    return CapacityPlan(
        weight=routed,
        stable_replicas=stable_target,
        candidate_replicas=candidate_target,
        scale_down_ok=scale_down_ok,
        status=status,
        requeue_after=WAIT_POLL_SECONDS if waiting else None,
    )


def apply_plan(
    spec: CanarySpec, decision: Decision, stable: PoolSize | None, candidate: PoolSize | None
) -> Decision:
    """decide()'s answer with spec.capacity applied: the route's weight as shift allows,
    the stable's scale-down held until the candidate is full, replicas to write (only
    where they differ from the pool's spec), status.capacity, and a sooner requeue while
    shift waits for a pool. Under surge (or a pool that cannot be read) it is unchanged
    but for status.capacity, which surge leaves empty."""
    st = decision.next_status.model_copy()
    if spec.capacity == "surge" or stable is None or candidate is None:
        st.capacity = None
        return dataclasses.replace(decision, next_status=st)
    weight = next((a.weight for a in decision.actions if isinstance(a, SetWeight)), 100)
    p = plan(spec.capacity, st.phase, weight, st.capacity, stable, candidate)
    st.capacity = p.status
    actions: list[Action] = []
    for a in decision.actions:
        if isinstance(a, SetWeight):
            actions.append(SetWeight(p.weight))
        elif not isinstance(a, ScaleDownStable) or p.scale_down_ok:
            actions.append(a)
    for pool, size, target in (
        (spec.stable_pool, stable, p.stable_replicas),
        (spec.candidate_pool, candidate, p.candidate_replicas),
    ):
        if target is not None and target != size.replicas:
            actions.append(ScalePool(pool, target))
    requeue = decision.requeue_after
    if p.requeue_after is not None:
        requeue = p.requeue_after if requeue is None else min(requeue, p.requeue_after)
    return Decision(next_status=st, actions=actions, requeue_after=requeue)


def _message(
    full: int,
    weight: int,
    routed: int,
    stable: int | None,
    candidate: int | None,
    scale_down_ok: bool,
) -> str:
    def size(n: int | None) -> str:
        return "its autoscaler's" if n is None else str(n)

    text = (
        f"shift: {full + 1} pods at most; stable {size(stable)} replicas, candidate "
        f"{size(candidate)} at {routed}%"
    )
    if routed != weight:
        text += f"; holding {routed}% until the stable is ready for {weight}%"
    if not scale_down_ok:
        text += f"; the stable stays until the candidate has {full} ready replicas"
    return text


def paused_message(pool: str, starved: str, where: str) -> str:
    """Status message of a canary paused because its candidate cannot be placed."""
    return (
        f"paused {where}: candidate pool {pool!r} is short of GPUs ({starved}); weight "
        "held, no analysis; resumes by itself when the pool's pods can be scheduled"
    )
