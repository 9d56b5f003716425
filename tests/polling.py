"""The one way tests wait: poll a check until it holds or a deadline passes.

`wait_for` (threads, subprocesses, the cluster) and `wait_for_async` (inside an
event loop) share their semantics and their failure message:

- `check` runs at least once, then every `interval` seconds until `timeout`;
- without `until`, the first truthy result of `check` is returned;
- with `until`, the first result `r` for which `until(r)` is truthy is returned
  (so the caller gets the whole observation, not just a bool);
- on timeout: AssertionError "timed out after {timeout}s waiting for {what}
  (last: {last result!r})", so a failure says what was seen, not just that
  something was not;
- an exception raised by `check` propagates at once: a check that expects
  transient errors (a server still starting) catches them itself.

A sleep in a test that stands in for a condition is a bug; poll instead.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

T = TypeVar("T")

_LAST_REPR_MAX = 2000


def timeout_message(what: str, timeout: float, last: object) -> str:
    shown = repr(last)
    if len(shown) > _LAST_REPR_MAX:
        shown = shown[:_LAST_REPR_MAX] + "...(truncated)"
    return f"timed out after {timeout:g}s waiting for {what} (last: {shown})"


class _Deadline:
    def __init__(self, timeout: float, interval: float) -> None:
        if timeout <= 0 or interval <= 0:
            raise ValueError(f"timeout ({timeout}) and interval ({interval}) must be positive")
        self.end = time.monotonic() + timeout
        self.interval = interval

    def pause(self) -> float | None:
        """Seconds to sleep before the next try, or None when the deadline has passed."""
        remaining = self.end - time.monotonic()
        return None if remaining <= 0 else min(self.interval, remaining)


def _done(result: Any, until: Callable[[Any], object] | None) -> bool:
    return bool(until(result) if until is not None else result)


def wait_for(
    check: Callable[[], T],
    timeout: float = 30.0,
    interval: float = 0.1,
    what: str = "condition",
    until: Callable[[T], object] | None = None,
) -> T:
    """Poll `check` until its result is truthy (or satisfies `until`); return that result."""
    deadline = _Deadline(timeout, interval)
    while True:
        last = check()
        if _done(last, until):
            return last
        pause = deadline.pause()
        if pause is None:
            raise AssertionError(timeout_message(what, timeout, last))
        time.sleep(pause)


@overload
async def wait_for_async(
    check: Callable[[], Awaitable[T]],
    timeout: float = ...,
    interval: float = ...,
    what: str = ...,
    until: Callable[[T], object] | None = ...,
) -> T: ...


@overload
async def wait_for_async(
    check: Callable[[], T],
    timeout: float = ...,
    interval: float = ...,
    what: str = ...,
    until: Callable[[T], object] | None = ...,
) -> T: ...


async def wait_for_async(
    check: Callable[[], Any],
    timeout: float = 30.0,
    interval: float = 0.1,
    what: str = "condition",
    until: Callable[[Any], object] | None = None,
) -> Any:
    """`wait_for` for coroutines: `check` may be a plain function or return an awaitable."""
    deadline = _Deadline(timeout, interval)
    while True:
        last = check()
        if inspect.isawaitable(last):
            last = await last
        if _done(last, until):
            return last
        pause = deadline.pause()
        if pause is None:
            raise AssertionError(timeout_message(what, timeout, last))
        await asyncio.sleep(pause)
