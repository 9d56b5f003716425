"""Each provider failure's client answer (brief contract 3), and which one wins when
several calls of a split request failed."""

from __future__ import annotations

import pytest

from modelfleet_worker.hosted.answers import PRECEDENCE, provider_outcome, reject_for
from modelfleet_worker.hosted.backend import (
    EditsUnsupported,
    ProviderError,
    ProviderFailure,
    ProviderQuotaExhausted,
    ProviderRateLimited,
    ProviderRefused,
)


@pytest.mark.parametrize(
    ("failure", "status", "code", "outcome", "provider", "retry_after"),
    [
        (ProviderRefused("no"), 422, "content_policy_violation", "refused", "refused", None),
        (ProviderRateLimited("slow down", 7.5), 429, "rate_limited", "rate_limited",
         "rate_limited", 7.5),
        (ProviderQuotaExhausted("spent", 1600.0), 429, "quota_exhausted", "quota_exhausted",
         "quota_exhausted", 600.0),
        (ProviderQuotaExhausted("spent", 900.0), 429, "quota_exhausted", "quota_exhausted",
         "quota_exhausted", 1.0),  # reset already due: retry in a second, never 0
        (ProviderError(400, "bad size", "size"), 400, "provider_rejected", "invalid", "error", None),
        (ProviderError(500, "boom"), 502, "provider_error", "provider_error", "error", None),
        (ProviderError(0, "provider did not answer within 5s"), 504, "provider_timeout",
         "provider_error", "timeout", None),
        (EditsUnsupported("no edits"), 400, "edits_unsupported", "invalid", "error", None),
    ],
)  # fmt: skip
def test_answers(
    failure: ProviderFailure,
    status: int,
    code: str,
    outcome: str,
    provider: str,
    retry_after: float | None,
) -> None:
    r = reject_for(failure, now=1000.0)
    assert (r.status, r.code, r.outcome) == (status, code, outcome)
    assert r.retry_after == retry_after
    assert provider_outcome(failure) == provider


def test_refusal_names_the_prompt_and_a_provider_400_its_param() -> None:
    assert reject_for(ProviderRefused("no"), 0.0).param == "prompt"
    assert reject_for(ProviderError(400, "bad", "quality"), 0.0).param == "quality"


def test_precedence_refusal_then_quota_then_rate_limit_then_errors() -> None:
    assert PRECEDENCE[:3] == (ProviderRefused, ProviderQuotaExhausted, ProviderRateLimited)
    assert PRECEDENCE[-1] is ProviderError
