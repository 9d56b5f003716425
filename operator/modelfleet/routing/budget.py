"""Per-key rate limits and budgets: the pure decisions (router/spend.py does the I/O).

Money is kept in integer nano-USD everywhere a sum is stored: Redis adds integers exactly
(HINCRBY) and a Lua number (a double) holds every nano-USD amount below about 9 million
USD exactly, far above any budget the router accepts (MAX_BUDGET_USD).

A request with a budget is admitted only when its estimate fits:
spent + reserved (by requests in flight) + estimate <= budget. The estimate is n images
times the most one image has cost recently on any pool of the request's ladder (the pool
it falls back to may be dearer). When no pool of the ladder has answered yet (a router
just started, a new pool) the estimate is unknown: the request goes as the key's one
"probe" on this replica (admitted while anything is left, spent + reserved < budget), so
a replica overspends by at most one request's cost; its answer teaches the estimate.
"""

from __future__ import annotations

import calendar
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from modelfleet.routing.clients import BudgetPeriod

NANO_PER_USD = 1_000_000_000
MAX_BUDGET_USD = 1_000_000.0  # 1e15 nano-USD: exact as a double, as an int64


def to_nano(usd: float) -> int:
    """USD to integer nano-USD, rounded up (a cost is never charged short)."""
    if not usd > 0:  # 0, negative, nan
        return 0
    return math.ceil(usd * NANO_PER_USD - 1e-6)


def to_usd(nano: int) -> float:
    return nano / NANO_PER_USD


# -- periods -------------------------------------------------------------------------


@dataclass(frozen=True)
class Period:
    """One budget period in UTC: [start, end) as Unix seconds, and its label (the Redis key
    part and what /v1/stats shows): 2026-12-01 for a day, 2026-12 for a month."""

    label: str
    start: float
    end: float


def period_of(now: float, period: BudgetPeriod) -> Period:
    """The UTC day or calendar month holding Unix time `now`."""
    t = datetime.fromtimestamp(now, UTC)
    if period == "day":
        start = datetime(t.year, t.month, t.day, tzinfo=UTC)
        s = start.timestamp()
        return Period(start.strftime("%Y-%m-%d"), s, s + 86400.0)
    if period == "month":
        start = datetime(t.year, t.month, 1, tzinfo=UTC)
        days = calendar.monthrange(t.year, t.month)[1]
        s = start.timestamp()
        return Period(start.strftime("%Y-%m"), s, s + days * 86400.0)
    raise ValueError(f"budget period must be day or month, not {period!r}")


def reset_time(p: Period) -> str:
    """The period's end as RFC 3339 UTC, for messages."""
    return datetime.fromtimestamp(p.end, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- the estimate --------------------------------------------------------------------


def estimate_nano(
    images: int, per_image_nano: Mapping[str, int], ladder: Iterable[str]
) -> int | None:
    """images x the dearest known recent cost per image over the ladder's pools; None when
    none of them has a known cost yet (the request is then a probe). A pool whose
    answers carry no cost header is known at 0."""
    known = [per_image_nano[p] for p in ladder if p in per_image_nano]
    if not known:
        return None
    return max(1, images) * max(known)


def reserved_renders(images: int, max_rerenders: int | None) -> int:
    """The most images one request may render: its own and, behind a text gate
    (max_rerenders set), each of them re-rendered up to max_rerenders times."""
    return max(1, images) * (1 + (max_rerenders or 0))


def per_image_cost_nano(cost_usd: float | None, images: int) -> int:
    """One answer's cost per image (nano-USD, rounded up); no cost header: 0."""
    if cost_usd is None:
        return 0
    return math.ceil(to_nano(cost_usd) / max(1, images))


# -- the reservation -----------------------------------------------------------------


@dataclass(frozen=True)
class Reservation:
    """The decision on one request: admitted or not, and the figures it was made on."""

    admitted: bool
    spent_nano: int
    reserved_nano: int
    budget_nano: int


def decide(spent: int, reserved: int, estimate: int | None, budget: int) -> bool:
    """Admit when the estimate fits in what is left; a probe (estimate None) while anything
    is left. The same rule runs in RedisSpendStore's Lua script (keep them alike)."""
    if estimate is None:
        return spent + reserved < budget
    return spent + reserved + estimate <= budget


def budget_message(key_id: str, spent_usd: float, budget_usd: float, p: Period) -> str:
    return (
        f"client key {key_id!r} has spent {spent_usd:.6f} of its {budget_usd:.6f} USD budget "
        f"for {p.label} (with requests in flight, not enough left for this one); the budget "
        f"resets at {reset_time(p)}"
    )


# -- requests per minute -------------------------------------------------------------

WINDOW_S = 60.0


@dataclass(frozen=True)
class RateVerdict:
    admitted: bool
    retry_after_s: float = 0.0


def rate_decision(previous: int, current: int, elapsed_s: float, rpm: int) -> RateVerdict:
    """Sliding-window counter: the previous minute's count weighed by the part of it still
    inside the last 60 s, plus this minute's. Admitted while that is below rpm; otherwise
    the whole seconds until it is (at least 1: clients retry on whole seconds). The same
    rule runs in the Redis limiter's Lua script (keep them alike)."""
    if rpm <= 0:
        return RateVerdict(False, WINDOW_S)
    f = min(max(elapsed_s / WINDOW_S, 0.0), 1.0)
    if previous * (1.0 - f) + current < rpm:
        return RateVerdict(True)
    if current < rpm:
        # Within this minute the previous one's weight falls: the f at which it fits.
        need = 1.0 - (rpm - current) / previous
        return RateVerdict(False, _after(need * WINDOW_S - elapsed_s))
    # Only in the next minute, where this one is the previous, weighed down as it passes.
    need = 1.0 - rpm / current
    return RateVerdict(False, _after(WINDOW_S - elapsed_s + need * WINDOW_S))


def _after(seconds: float) -> float:
    """Whole seconds strictly after `seconds` (the rule is a strict <), at least 1."""
    return float(max(1, math.floor(seconds) + 1))


def rate_message(key_id: str, rpm: int, retry_after_s: float) -> str:
    return (
        f"client key {key_id!r} is over its limit of {rpm} requests per minute; "
        f"retry after {retry_after_s:g} s"
    )
