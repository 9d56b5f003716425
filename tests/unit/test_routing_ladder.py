"""Attempt classification and the answer when every rung of the ladder failed."""

from __future__ import annotations

import json

import pytest

from modelfleet.routing.ladder import (
    POOL_ERRORS,
    RETRYABLE,
    Attempt,
    Outcome,
    Tried,
    client_error_body,
    exhausted,
    parse_retry_after,
)
from modelfleet.routing.ladder import classify_response as classify

OK_BODY = b'{"created": 1, "data": [{"b64_json": "x", "seed": 1}], "timing": {}}'


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (200, OK_BODY, Attempt.OK),
        (200, b"garbage", Attempt.UPSTREAM_ERROR),
        (200, b'{"error": {"code": "x"}}', Attempt.UPSTREAM_ERROR),
        (200, b'{"created": 1, "data": [{"b64_json": "abc', Attempt.UPSTREAM_ERROR),
        (200, b"[]", Attempt.UPSTREAM_ERROR),
        (200, b"\xff\xfe", Attempt.UPSTREAM_ERROR),
        (201, OK_BODY, Attempt.UPSTREAM_ERROR),
        (400, b"{}", Attempt.CLIENT_ERROR),
        (422, b"", Attempt.CLIENT_ERROR),
        (429, b"{}", Attempt.BUSY),
        (500, b"{}", Attempt.UPSTREAM_ERROR),
        (503, b"", Attempt.UPSTREAM_ERROR),
    ],
)
def test_classify(status: int, body: bytes, expected: Attempt) -> None:
    assert classify(status, body) is expected


def test_retry_and_error_sets() -> None:
    assert Attempt.CLIENT_ERROR not in RETRYABLE and Attempt.OK not in RETRYABLE
    assert Attempt.BUSY in RETRYABLE and Attempt.BUSY not in POOL_ERRORS


def test_client_error_body_passthrough_and_wrap() -> None:
    shaped = b'{"error": {"code": "bad", "message": "m", "param": "steps"}}'
    assert client_error_body(400, shaped) == shaped
    wrapped = json.loads(client_error_body(400, b"nope"))
    assert wrapped["error"]["code"] == "upstream_client_error"
    assert "nope" in wrapped["error"]["message"]


@pytest.mark.parametrize(
    ("tried", "status", "code", "outcome"),
    [
        ([], 503, "no_endpoints", Outcome.UPSTREAM_ERROR),
        (
            [Tried("a", None, None), Tried("b", None, None)],
            503,
            "no_endpoints",
            Outcome.UPSTREAM_ERROR,
        ),
        (
            [Tried("a", "u1", Attempt.BUSY), Tried("a", "u2", Attempt.BUSY)],
            429,
            "upstream_busy",
            Outcome.REJECTED,
        ),
        ([Tried("a", "u1", Attempt.TIMEOUT)], 504, "upstream_timeout", Outcome.TIMEOUT),
        (
            [Tried("a", "u1", Attempt.TIMEOUT), Tried("b", "u3", Attempt.CONNECT_ERROR)],
            503,
            "upstream_unavailable",
            Outcome.UPSTREAM_ERROR,
        ),
        (
            [Tried("a", "u1", Attempt.UPSTREAM_ERROR), Tried("b", None, None)],
            503,
            "upstream_unavailable",
            Outcome.UPSTREAM_ERROR,
        ),
    ],
)
def test_exhausted(tried: list[Tried], status: int, code: str, outcome: Outcome) -> None:
    f = exhausted(tried, ("a", "b"))
    assert (f.status, f.code, f.outcome) == (status, code, outcome)
    assert "a, b" in f.message  # names the pools tried


@pytest.mark.parametrize(
    ("retry_after", "ms", "expected"),
    [
        (None, None, None),
        ("3", None, 3.0),
        (" 2.5 ", None, 2.5),
        ("3", "1500", 1.5),  # the OpenAI-style hint first, as the SDK reads it
        ("3", "soon", 3.0),
        ("Wed, 21 Oct 2015 07:28:00 GMT", None, None),  # workers send seconds
        ("-1", None, None),
        ("nan", None, None),
        ("99999", None, None),
    ],
)
def test_parse_retry_after(retry_after: str | None, ms: str | None, expected: float | None) -> None:
    assert parse_retry_after(retry_after, ms) == expected


@pytest.mark.parametrize(
    ("hints", "expected"),
    [
        ([None, None], 1.0),  # no hint: the router's own 1 s
        ([3.0, None], 3.0),  # a provider's rate limit must not be retried sooner
        ([0.2, 7.5], 7.5),
        ([0.2, 0.1], 1.0),
    ],
)
def test_busy_keeps_the_longest_retry_after(hints: list[float | None], expected: float) -> None:
    tried = [Tried("a", f"u{i}", Attempt.BUSY, h) for i, h in enumerate(hints)]
    f = exhausted(tried, ("a",))
    assert (f.status, f.retry_after_s) == (429, expected)
