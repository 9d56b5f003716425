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
    busy_code,
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


@pytest.mark.parametrize(
    ("codes", "expected"),
    [
        (["rate_limited", "rate_limited"], "rate_limited"),
        (["quota_exhausted"], "quota_exhausted"),
        (["rate_limited", "quota_exhausted"], "upstream_busy"),  # no single reason
        (["rate_limited", None], "upstream_busy"),
        ([None], "upstream_busy"),
    ],
)
def test_busy_reason_relayed_when_all_agree(codes: list[str | None], expected: str) -> None:
    tried = [Tried("a", f"u{i}", Attempt.BUSY, None, c) for i, c in enumerate(codes)]
    f = exhausted(tried, ("a",))
    assert (f.status, f.code) == (429, expected)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"error": {"code": "quota_exhausted", "message": "m"}}', "quota_exhausted"),
        (b'{"error": {"code": "rate_limited"}}', "rate_limited"),
        (b'{"error": {"code": "queue_full"}}', None),  # a full worker: the router's own code
        (b'{"error": "x"}', None),
        (b"[1]", None),
        (b"busy", None),
    ],
)
def test_busy_code(body: bytes, expected: str | None) -> None:
    assert busy_code(body) == expected
