"""Pure: what the client is answered for each provider failure (brief contract 3)."""

from __future__ import annotations

from .backend import (
    EditsUnsupported,
    ProviderError,
    ProviderFailure,
    ProviderQuotaExhausted,
    ProviderRateLimited,
    ProviderRefused,
)


class Reject(Exception):
    """A client answer decided before or after the provider calls."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        param: str | None = None,
        outcome: str = "invalid",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.param = status, code, message, param
        self.outcome = outcome
        self.retry_after = retry_after


# The failure a client can act on first when several calls of one request failed.
PRECEDENCE = (
    ProviderRefused,
    ProviderQuotaExhausted,
    ProviderRateLimited,
    EditsUnsupported,
    ProviderError,
)


def provider_outcome(exc: ProviderFailure) -> str:
    if isinstance(exc, ProviderRefused):
        return "refused"
    if isinstance(exc, ProviderRateLimited):
        return "rate_limited"
    if isinstance(exc, ProviderQuotaExhausted):
        return "quota_exhausted"
    if isinstance(exc, ProviderError) and exc.status == 0 and "within" in exc.message:
        return "timeout"
    return "error"


def reject_for(f: ProviderFailure, now: float) -> Reject:
    if isinstance(f, ProviderRefused):
        return Reject(422, "content_policy_violation", f.message, "prompt", outcome="refused")
    if isinstance(f, ProviderQuotaExhausted):
        return Reject(
            429,
            "quota_exhausted",
            f.message,
            outcome="quota_exhausted",
            retry_after=max(1.0, f.until - now),
        )
    if isinstance(f, ProviderRateLimited):
        return Reject(
            429, "rate_limited", f.message, outcome="rate_limited", retry_after=f.retry_after_s
        )
    if isinstance(f, EditsUnsupported):
        return Reject(400, "edits_unsupported", f.message, "image")
    assert isinstance(f, ProviderError)
    if f.status == 400:
        return Reject(400, "provider_rejected", f.message, f.param)
    if f.status == 0 and "within" in f.message:
        return Reject(504, "provider_timeout", f.message, outcome="provider_error")
    return Reject(502, "provider_error", f.message, outcome="provider_error")
