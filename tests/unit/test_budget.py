"""routing.budget: periods, the estimate, the reservation rule, requests per minute."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from modelfleet.routing.budget import (
    NANO_PER_USD,
    budget_message,
    decide,
    estimate_nano,
    per_image_cost_nano,
    period_of,
    rate_decision,
    reserved_renders,
    reset_time,
    to_nano,
)


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("now", "period", "label", "start", "end"),
    [
        ("2026-12-01T19:10:00", "day", "2026-12-01", "2026-12-01T00:00:00", "2026-12-02T00:00:00"),
        ("2026-12-31T23:59:59", "day", "2026-12-31", "2026-12-31T00:00:00", "2027-01-01T00:00:00"),
        ("2026-12-01T00:00:00", "day", "2026-12-01", "2026-12-01T00:00:00", "2026-12-02T00:00:00"),
        ("2026-12-15T08:00:00", "month", "2026-12", "2026-12-01T00:00:00", "2027-01-01T00:00:00"),
        ("2028-02-29T12:00:00", "month", "2028-02", "2028-02-01T00:00:00", "2028-03-01T00:00:00"),
        ("2027-02-28T23:59:59", "month", "2027-02", "2027-02-01T00:00:00", "2027-03-01T00:00:00"),
        ("2026-04-30T10:00:00", "month", "2026-04", "2026-04-01T00:00:00", "2026-05-01T00:00:00"),
    ],
)
def test_period_of(now: str, period: str, label: str, start: str, end: str) -> None:
    p = period_of(ts(now), period)  # type: ignore[arg-type]
    assert (p.label, p.start, p.end) == (label, ts(start), ts(end))
    assert reset_time(p) == end + "Z"


def test_period_of_refuses_other_periods() -> None:
    with pytest.raises(ValueError, match="day or month"):
        period_of(0.0, "week")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("usd", "nano"),
    [(0.0, 0), (-1.0, 0), (float("nan"), 0), (0.04, 40_000_000), (1e-9, 1), (1.5e-9, 2),
     (0.000_002_3, 2_300), (123.456, 123_456_000_000)],
)  # fmt: skip
def test_to_nano_rounds_up_never_short(usd: float, nano: int) -> None:
    assert to_nano(usd) == nano


@pytest.mark.parametrize(
    ("images", "known", "ladder", "expected"),
    [
        (1, {}, ("a", "b"), None),  # nothing answered yet: a probe
        (1, {"c": 5}, ("a", "b"), None),  # a pool off the ladder does not count
        (1, {"a": 40}, ("a", "b"), 40),
        (4, {"a": 40}, ("a", "b"), 160),
        (2, {"a": 40, "b": 100}, ("a", "b"), 200),  # the dearer fallback
        (0, {"a": 40}, ("a",), 40),  # n defaults to 1
        (3, {"a": 0}, ("a",), 0),  # a pool reporting no cost: known, free
    ],
)
def test_estimate(
    images: int, known: dict[str, int], ladder: tuple[str, ...], expected: int | None
) -> None:
    assert estimate_nano(images, known, ladder) == expected


@pytest.mark.parametrize(
    ("images", "max_rerenders", "renders"),
    [
        (1, None, 1),  # no text gate
        (4, None, 4),
        (1, 0, 1),  # a gate that only marks
        (1, 1, 2),
        (3, 3, 12),  # every image re-rendered three times
        (0, 2, 3),  # n defaults to 1
    ],
)
def test_reserved_renders(images: int, max_rerenders: int | None, renders: int) -> None:
    assert reserved_renders(images, max_rerenders) == renders


@pytest.mark.parametrize(
    ("cost", "images", "per"),
    [(None, 1, 0), (0.08, 2, 40_000_000), (0.1, 3, 33_333_334), (0.04, 0, 40_000_000)],
)
def test_per_image_cost(cost: float | None, images: int, per: int) -> None:
    assert per_image_cost_nano(cost, images) == per


@pytest.mark.parametrize(
    ("spent", "reserved", "estimate", "budget", "admitted"),
    [
        (0, 0, 10, 100, True),
        (80, 10, 10, 100, True),  # exactly fits
        (80, 11, 10, 100, False),  # in-flight reservations count
        (100, 0, 0, 100, True),  # a free request at the edge
        (101, 0, 0, 100, False),
        (0, 0, 101, 100, False),  # one request dearer than the whole budget
        (99, 0, None, 100, True),  # a probe while anything is left
        (90, 10, None, 100, False),
        (100, 0, None, 100, False),
    ],
)
def test_decide(
    spent: int, reserved: int, estimate: int | None, budget: int, admitted: bool
) -> None:
    assert decide(spent, reserved, estimate, budget) is admitted


def test_budget_message_names_key_figures_and_reset() -> None:
    p = period_of(ts("2026-12-01T10:00:00"), "day")
    msg = budget_message("team-a", 4.5, 5.0, p)
    assert "'team-a'" in msg and "4.500000" in msg and "5.000000" in msg
    assert "2026-12-01" in msg and "resets at 2026-12-02T00:00:00Z" in msg


@pytest.mark.parametrize(
    ("previous", "current", "elapsed", "rpm", "admitted", "retry"),
    [
        (0, 0, 0.0, 10, True, 0.0),
        (0, 9, 30.0, 10, True, 0.0),
        (0, 10, 30.0, 10, False, 31.0),  # wait for the next minute
        (10, 0, 0.0, 10, False, 1.0),  # the previous minute's weight must fall below 10
        (10, 0, 30.0, 10, True, 0.0),  # half of it counts: 5 < 10
        (20, 5, 30.0, 10, False, 16.0),  # 10 + 5: fits at 20 * (1 - f) < 5, f > 0.75
        (0, 20, 10.0, 10, False, 81.0),  # next minute, when 20 * (1 - f) < 10
        (5, 3, 59.9, 0, False, 60.0),  # rpm 0 admits nothing
        (0, 1, 59.5, 1, False, 1.0),  # at least a second
    ],
)
def test_rate_decision(
    previous: int, current: int, elapsed: float, rpm: int, admitted: bool, retry: float
) -> None:
    v = rate_decision(previous, current, elapsed, rpm)
    assert (v.admitted, v.retry_after_s) == (admitted, retry)


def test_rate_retry_after_is_when_it_fits() -> None:
    """Over the limit at any point: at the time it says, the next request is admitted."""
    for prev in (0, 3, 10, 25):
        for cur in (0, 4, 10, 17):
            for elapsed in (0.0, 12.5, 44.0, 59.0):
                v = rate_decision(prev, cur, elapsed, 10)
                if v.admitted:
                    continue
                later = elapsed + v.retry_after_s
                if later < 60:
                    assert rate_decision(prev, cur, later, 10).admitted
                else:
                    assert rate_decision(cur, 0, later - 60, 10).admitted


def test_nano_scale() -> None:
    assert NANO_PER_USD == 10**9
