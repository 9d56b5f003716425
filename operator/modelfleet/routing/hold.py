"""Scale from zero: whether a request whose pool has no ready worker is held until one
appears, for how long, what the client hears when the hold ends without one, and the
router's live demand per pool (what the operator's autoscaler reads). Pure.

A pool is held for only when it is autoscaled with minReplicas 0 (its operator brings it up
because the router says requests are held for it); any other pool without endpoints is
skipped at once, as before."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

Key = tuple[str, str]  # (namespace, pool)

# Retry-After for a hold that ended with no worker when no cold start was measured yet.
DEFAULT_COLD_RETRY_S = 5.0


@dataclass(frozen=True)
class HoldLimits:
    """Router-wide bounds (flags). max_held_per_pool 0: never hold. max_held_share: the
    part of a policy's maxInFlight slots one pool's held requests may take, so a burst
    for a pool at zero cannot starve the policy's warm pools of slots."""

    max_held_per_pool: int = 256
    max_hold_s: float = 300.0
    max_held_share: float = 0.5


@dataclass(frozen=True)
class PolicyBounds:
    """The request's policy admission limits that bound its hold."""

    queue_timeout_s: float
    max_in_flight: int


def held_cap(limits: HoldLimits, max_in_flight: int) -> int:
    """Requests one pool may have held at once: the flag, and the policy's share (>= 1)."""
    share = max(1, math.floor(max_in_flight * limits.max_held_share))
    return min(limits.max_held_per_pool, share)


@dataclass(frozen=True)
class Hold:
    until: float  # the router clock's time at which the hold gives up


@dataclass(frozen=True)
class NoHold:
    # not_autoscaled_to_zero | disabled | hold_limit | no_time
    reason: str


def decide_hold(
    *,
    scales_from_zero: bool,
    held_now: int,
    now: float,
    policy: PolicyBounds,
    deadline: float,
    limits: HoldLimits,
) -> Hold | NoHold:
    """Hold a request for a pool with no ready endpoint? At most the policy's queue timeout
    (the longest it lets a request wait for capacity), the router's hold cap and the
    request's own deadline; at most held_cap requests at once per pool (beyond: not
    held, so the ladder falls back or the client hears 503 at once)."""
    if not scales_from_zero:
        return NoHold("not_autoscaled_to_zero")
    if limits.max_held_per_pool <= 0 or limits.max_hold_s <= 0 or policy.queue_timeout_s <= 0:
        return NoHold("disabled")
    if held_now >= held_cap(limits, policy.max_in_flight):
        return NoHold("hold_limit")
    until = min(now + policy.queue_timeout_s, now + limits.max_hold_s, deadline)
    if until <= now:
        return NoHold("no_time")
    return Hold(until)


@dataclass(frozen=True)
class ColdStart:
    """A pool's cold-start clock: started by its first held request, stopped (and
    measured) by its first ready endpoint."""

    first_held_at: float | None = None
    last_seconds: float | None = None  # the previous cold start, for Retry-After

    def held(self, now: float) -> ColdStart:
        if self.first_held_at is not None:
            return self
        return ColdStart(now, self.last_seconds)

    def endpoints_seen(self, now: float) -> tuple[ColdStart, float | None]:
        """The new state and the cold start just measured (None: the clock was not running)."""
        if self.first_held_at is None:
            return self, None
        took = max(0.0, now - self.first_held_at)
        return ColdStart(None, took), took


def cold_retry_after(cold: ColdStart, now: float) -> float:
    """When a client whose hold ended may come back: what is left of the last measured cold
    start if the clock is running, else the last cold start, else a default; at least 1 s."""
    if cold.last_seconds is None:
        return DEFAULT_COLD_RETRY_S
    left = cold.last_seconds
    if cold.first_held_at is not None:
        left = cold.last_seconds - (now - cold.first_held_at)
    return max(1.0, left)


@dataclass(frozen=True)
class ColdFailure:
    status: int
    code: str
    message: str
    retry_after_s: float


def cold_failure(pool: str, reason: str, held_s: float, retry_after_s: float) -> ColdFailure:
    """The client's answer when a pool at zero could not serve and no other pool did.
    reason: "expired" (held, no worker came in time) or a NoHold reason."""
    if reason == "expired":
        why = f"held {held_s:.1f}s and no worker became ready"
    elif reason == "hold_limit":
        why = "the router already holds as many requests for it as it may"
    else:
        why = "no time was left to wait for a worker"
    return ColdFailure(
        503,
        "pool_starting",
        f"pool {pool} is scaling up from zero replicas: {why}; retry after "
        f"{math.ceil(retry_after_s)}s",
        retry_after_s,
    )


def demand_rows(
    in_flight: Mapping[Key, int], queued: Mapping[Key, int], held: Mapping[Key, int]
) -> list[dict[str, Any]]:
    """GET /v1/demand's pools: one row per pool with any demand, sorted; pools with none are
    left out (the operator reads absent as 0)."""
    keys = {k for m in (in_flight, queued, held) for k, v in m.items() if v > 0 and k[1]}
    return [
        {
            "namespace": ns,
            "pool": pool,
            "in_flight": in_flight.get((ns, pool), 0),
            "queued": queued.get((ns, pool), 0),
            "held": held.get((ns, pool), 0),
        }
        for ns, pool in sorted(keys)
    ]
