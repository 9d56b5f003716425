"""Micro-batching policy: pure functions over the pending items, no clock, no I/O.

The unit of batching is one image ("item"); a request for n images becomes n
items with seeds seed..seed+n-1, so the OOM splitter and the batch cap never
have to keep a request's images together.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar


@dataclass(frozen=True, order=True)
class BatchKey:
    """Items can share a denoising loop only if all of these match."""

    width: int
    height: int
    steps: int
    guidance_scale: float
    # Presence, not text: a batch with some negative prompts and some without
    # is not equivalent for every family (SDXL zeroes an absent negative embedding).
    has_negative: bool
    # Edits batch only with edits of the same kind and strength (one pipeline call each).
    mode: str = "generate"  # generate | image2image | inpaint
    strength: float = 0.0


T = TypeVar("T")


@dataclass(frozen=True)
class Pending(Generic[T]):
    key: BatchKey
    enqueued_at: float  # seconds, caller's monotonic clock
    seq: int  # arrival order; breaks ties between equal timestamps
    payload: T


@dataclass(frozen=True)
class Selection(Generic[T]):
    key: BatchKey
    items: tuple[Pending[T], ...]
    reason: str  # "full", "deadline" or "drain"


def buckets(pending: Sequence[Pending[T]]) -> dict[BatchKey, list[Pending[T]]]:
    out: dict[BatchKey, list[Pending[T]]] = {}
    for p in sorted(pending, key=lambda p: (p.enqueued_at, p.seq)):
        out.setdefault(p.key, []).append(p)
    return out


def select_batch(
    pending: Sequence[Pending[T]],
    now: float,
    max_latency_s: float,
    cap_for: Callable[[BatchKey], int],
    drain: bool = False,
) -> Selection[T] | None:
    """The next batch to run, or None if every bucket may still wait.

    A bucket is ready when it holds `cap` items or its oldest item has waited
    `max_latency_s`. Among ready buckets the one with the oldest item wins, so
    a busy bucket that keeps filling up cannot starve a quiet one past its
    deadline. When draining, everything is ready: there is nothing to wait for.
    """
    best: Selection[T] | None = None
    best_age: tuple[float, int] | None = None
    for key, items in buckets(pending).items():
        cap = max(1, cap_for(key))
        oldest = items[0]
        if len(items) >= cap:
            reason = "full"
        elif drain:
            reason = "drain"
        elif now - oldest.enqueued_at >= max_latency_s:
            reason = "deadline"
        else:
            continue
        age = (oldest.enqueued_at, oldest.seq)
        if best_age is None or age < best_age:
            best = Selection(key=key, items=tuple(items[:cap]), reason=reason)
            best_age = age
    return best


def next_deadline(pending: Sequence[Pending[T]], max_latency_s: float) -> float | None:
    """When the oldest waiting item is due; None if nothing waits."""
    if not pending:
        return None
    return min(p.enqueued_at for p in pending) + max_latency_s
