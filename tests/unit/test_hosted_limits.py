"""Provider limits: the token bucket, rate-limit headers, the cool-down."""

from __future__ import annotations

import email.utils

import pytest

from modelfleet_worker.hosted.limits import (
    Cooldown,
    TokenBucket,
    parse_duration,
    retry_after_header,
    retry_after_s,
)


def test_bucket_allows_the_rate_and_says_when_the_next_token_is_due() -> None:
    b = TokenBucket(60, burst=2, now=0.0)  # one a second
    assert b.take(0.0) == 0.0
    assert b.take(0.0) == 0.0
    assert b.take(0.0) == pytest.approx(1.0)
    assert b.take(0.5) == pytest.approx(0.5)
    assert b.take(1.0) == 0.0
    assert b.take(1.0) == pytest.approx(1.0)


def test_bucket_refill_caps_at_burst() -> None:
    b = TokenBucket(120, burst=3, now=0.0)
    for _ in range(3):
        assert b.take(0.0) == 0.0
    # an hour idle refills to the burst, not to 7200
    assert [b.take(3600.0) for _ in range(4)][:3] == [0.0, 0.0, 0.0]
    assert b.take(3600.0) > 0


def test_split_request_goes_into_debt_and_later_ones_wait() -> None:
    b = TokenBucket(60, burst=1, now=0.0)
    assert b.take(0.0, 4) == 0.0  # four calls of one request go together
    assert b.take(0.0) == pytest.approx(4.0)  # the average rate holds
    assert b.take(4.0) == 0.0


def test_bucket_long_run_rate() -> None:
    b = TokenBucket(30, now=0.0)
    taken = sum(1 for t in range(0, 600) if b.take(t * 0.1) == 0.0)  # 60 s of tries
    assert 30 <= taken <= 31


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("1s", 1.0), ("6m0s", 360.0), ("20ms", 0.02), ("1h2m3.5s", 3723.5), ("2.5", 2.5)],
)
def test_parse_duration(value: str, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["", "soon", "5x", "1s2"])
def test_parse_duration_rejects(value: str) -> None:
    assert parse_duration(value) is None


def test_retry_after_sources() -> None:
    now = 1_000_000.0
    assert retry_after_s({"Retry-After": "7"}, now) == 7.0
    assert retry_after_s({"retry-after-ms": "1500", "Retry-After": "9"}, now) == 1.5
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert retry_after_s({"Retry-After": date}, now) == pytest.approx(30.0, abs=1)
    exhausted = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "6m0s"}
    assert retry_after_s(exhausted, now) == 360.0
    left = {"x-ratelimit-remaining-requests": "3", "x-ratelimit-reset-requests": "6m0s"}
    assert retry_after_s(left, now) is None
    assert retry_after_s({}, now) is None


def test_retry_after_header_is_whole_and_never_zero() -> None:
    assert retry_after_header(0.0) == "1"
    assert retry_after_header(1.2) == "2"
    assert retry_after_header(30.0) == "30"


def test_cooldown() -> None:
    c = Cooldown()
    assert c.remaining(10.0) == 0.0
    c.hold(10.0, 5.0)
    c.hold(11.0, 1.0)  # a shorter wait does not shorten the hold
    assert c.remaining(12.0) == pytest.approx(3.0)
    assert c.remaining(20.0) == 0.0
