"""The tests' one polling helper: both flavours return the same thing and fail the same way."""

from __future__ import annotations

import itertools
import re
import time
from typing import Any

import pytest

from polling import timeout_message, wait_for, wait_for_async


def counter() -> Any:
    return itertools.count(1).__next__


def test_returns_first_truthy_result() -> None:
    tick = counter()
    assert wait_for(lambda: (n := tick()) >= 3 and n, interval=0.001) == 3


def test_until_returns_the_observation_that_satisfied_it() -> None:
    tick = counter()
    got = wait_for(lambda: {"n": tick()}, until=lambda d: d["n"] == 4, interval=0.001)
    assert got == {"n": 4}


def test_until_may_accept_a_falsy_observation() -> None:
    assert wait_for(lambda: 0, until=lambda v: v == 0) == 0


def test_timeout_names_what_and_the_last_observation() -> None:
    tick = counter()
    t0 = time.monotonic()
    with pytest.raises(AssertionError) as err:
        wait_for(
            lambda: {"phase": f"p{tick()}"},
            until=lambda d: False,
            timeout=0.2,
            interval=0.05,
            what="Ready",
        )
    elapsed = time.monotonic() - t0
    assert 0.2 <= elapsed < 1.0
    msg = str(err.value)
    assert msg.startswith("timed out after 0.2s waiting for Ready (last: {'phase': 'p")
    # The last observation is the one taken at the deadline, not an early one.
    last = int(re.search(r"'p(\d+)'", msg).group(1))  # type: ignore[union-attr]
    assert last >= 4


def test_checks_once_even_when_the_first_try_is_late() -> None:
    calls: list[int] = []

    def check() -> bool:
        calls.append(1)
        return True

    assert wait_for(check, timeout=1e-9) is True
    assert calls == [1]


def test_exceptions_from_the_check_propagate() -> None:
    def boom() -> bool:
        raise KeyError("x")

    with pytest.raises(KeyError):
        wait_for(boom, timeout=5)


def test_rejects_non_positive_timeout_or_interval() -> None:
    with pytest.raises(ValueError, match="must be positive"):
        wait_for(lambda: True, timeout=0)
    with pytest.raises(ValueError, match="must be positive"):
        wait_for(lambda: True, interval=0)


def test_long_last_values_are_truncated() -> None:
    msg = timeout_message("x", 1, "a" * 10_000)
    assert len(msg) < 2100 and msg.endswith("...(truncated))")


async def test_async_accepts_plain_and_coroutine_checks() -> None:
    tick = counter()
    assert await wait_for_async(lambda: (n := tick()) >= 2 and n, interval=0.001) == 2

    async def status() -> dict[str, int]:
        return {"n": tick()}

    got = await wait_for_async(status, until=lambda d: d["n"] >= 5, interval=0.001)
    assert got == {"n": 5}


async def test_async_fails_with_the_same_message() -> None:
    async def never() -> str:
        return "Pending"

    with pytest.raises(AssertionError) as err:
        await wait_for_async(
            never, until=lambda s: s == "Ready", timeout=0.1, interval=0.02, what="Ready"
        )
    assert str(err.value) == timeout_message("Ready", 0.1, "Pending")
