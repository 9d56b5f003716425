"""Admission control per policy: at most max_in_flight forwarded, at most max_queue waiting
(production ahead of preview), everything beyond refused at once so clients hear 429 in
microseconds instead of piling up behind a saturated fleet."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass


class Rejected(Exception):
    """Queue full: refuse now."""


class QueueTimeout(Exception):
    """Waited queue_timeout_ms for a slot without getting one."""


@dataclass
class Limits:
    max_in_flight: int
    max_queue: int
    queue_timeout_s: float


class AdmissionGate:
    """Slots are handed from a finishing request straight to the next waiter, so a slot
    freed never races with a newcomer and the priority order holds."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.in_flight = 0
        self._queues: dict[str, deque[asyncio.Future[None]]] = {
            "production": deque(),
            "preview": deque(),
        }

    @property
    def queued(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def update(self, limits: Limits) -> None:
        """Apply new limits in place; requests already in flight keep their slots."""
        self.limits = limits
        self._hand_over()

    async def acquire(self, tier: str) -> None:
        tier = tier if tier in self._queues else "production"
        if self.in_flight < self.limits.max_in_flight and self.queued == 0:
            self.in_flight += 1
            return
        if self.queued >= self.limits.max_queue and not self._evict_for(tier):
            raise Rejected()
        if self.limits.queue_timeout_s <= 0:
            raise QueueTimeout()
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self._queues[tier]
        queue.append(fut)
        try:
            await asyncio.wait_for(asyncio.shield(fut), self.limits.queue_timeout_s)
        except (TimeoutError, asyncio.CancelledError) as exc:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                # The slot arrived just as we gave up: pass it on rather than leak it.
                self.release()
            else:
                if not fut.done():
                    fut.cancel()
                if fut in queue:
                    queue.remove(fut)
            if isinstance(exc, TimeoutError):
                raise QueueTimeout() from None
            raise

    def release(self) -> None:
        self.in_flight -= 1
        self._hand_over()

    def _hand_over(self) -> None:
        while self.in_flight < self.limits.max_in_flight:
            fut = self._next_waiter()
            if fut is None:
                return
            self.in_flight += 1
            fut.set_result(None)

    def _next_waiter(self) -> asyncio.Future[None] | None:
        for tier in ("production", "preview"):
            q = self._queues[tier]
            while q:
                fut = q.popleft()
                if not fut.done():
                    return fut
        return None

    def _evict_for(self, tier: str) -> bool:
        """A full queue still takes a production request by refusing the newest preview
        waiter instead."""
        if tier != "production":
            return False
        q = self._queues["preview"]
        while q:
            fut = q.pop()
            if not fut.done():
                fut.set_exception(Rejected())
                return True
        return False
