"""Retry a failed reconcile with exponential backoff.

kopf's event handlers are fire-and-forget: an exception is logged and the
object waits for its next event. A pool whose apply hit a transient API error
(a timeout, a 500, a 429) would then sit stale until something else changes.
Like controller-runtime's rate-limited work queue, a failed key is queued
again after a delay that doubles per consecutive failure.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Hashable
from typing import Any

from kubernetes.client.rest import ApiException

log = logging.getLogger("modelfleet.requeue")


def backoff_delay(failures: int, base_s: float = 0.5, cap_s: float = 30.0) -> float:
    """Seconds to wait after the `failures`-th consecutive failure (1-based)."""
    if failures < 1:
        return 0.0
    return float(min(cap_s, base_s * 2 ** min(failures - 1, 32)))


def namespace_terminating(exc: BaseException) -> bool:
    """The API server refuses writes into a namespace being deleted: nothing to retry,
    the object goes away with it."""
    return (
        isinstance(exc, ApiException)
        and exc.status == 403
        and "being terminated" in str(exc.body or "")
    )


class Requeue:
    """Per-key failure counts and the pending retry timers of one controller."""

    def __init__(
        self,
        retry: Callable[[Any], Coroutine[Any, Any, None]],
        *,
        base_s: float = 0.5,
        cap_s: float = 30.0,
    ) -> None:
        self._retry = retry
        self._base_s = base_s
        self._cap_s = cap_s
        self.failures: dict[Hashable, int] = {}
        self._timers: dict[Hashable, asyncio.TimerHandle] = {}

    def succeeded(self, key: Hashable) -> None:
        self.failures.pop(key, None)

    def failed(self, key: Hashable) -> float:
        """Count a failure and schedule the retry; returns the delay chosen."""
        n = self.failures[key] = self.failures.get(key, 0) + 1
        delay = backoff_delay(n, self._base_s, self._cap_s)
        old = self._timers.pop(key, None)
        if old is not None:
            old.cancel()
        loop = asyncio.get_running_loop()
        self._timers[key] = loop.call_later(delay, self._fire, key)
        return delay

    def forget(self, key: Hashable) -> None:
        """The object is gone: drop its count and any pending retry."""
        self.failures.pop(key, None)
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()

    def cancel_all(self) -> None:
        """Leadership lost: a standby must not act, not even on a pending retry."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self.failures.clear()

    def _fire(self, key: Hashable) -> None:
        self._timers.pop(key, None)
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(self._retry(key))
        task.add_done_callback(_log_unexpected)


def _log_unexpected(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("retry failed unexpectedly", exc_info=task.exception())
