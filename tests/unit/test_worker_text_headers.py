"""The worker's verification summary headers, which the router counts for canaries."""

from __future__ import annotations

import pytest

from modelfleet_common.textscore import score
from modelfleet_worker.response import text_summary_headers
from modelfleet_worker.verify import FAILED, PASSED, UNREADABLE, Verification


def check(read: str | None, expected: str = "SALE NOW") -> Verification:
    if read is None:
        return Verification(UNREADABLE, (expected,), None, "rapidocr", 0.01, "no text found")
    s = score([expected], read, 0.9)
    return Verification(PASSED if s.passed else FAILED, (expected,), s, "rapidocr", 0.01)


@pytest.mark.parametrize(
    ("checks", "want"),
    [
        ([], {}),
        ([None, None], {}),  # nothing asked for: no headers
        ([check(None)], {}),  # unreadable only: nothing verified
        (
            [check("SALE NOW"), check("SLAE NOW"), check(None), None],
            {
                "X-ModelFleet-Text-Verified": "2",
                "X-ModelFleet-Text-Passed": "1",
                "X-ModelFleet-Text-Accuracy-Sum": "1.500000",
            },
        ),
    ],
)
def test_text_summary_headers(checks: list[Verification | None], want: dict[str, str]) -> None:
    assert text_summary_headers(checks) == want
