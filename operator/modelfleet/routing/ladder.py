"""The retry/fallback ladder's decisions: how an upstream attempt is classified, whether it
may be retried, and what the client gets when nothing could serve. Pure."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from modelfleet_common.errors import error_json


class Attempt(StrEnum):
    """Outcome of one upstream attempt (label `outcome` of upstream_requests_total)."""

    OK = "ok"
    CLIENT_ERROR = "client_error"
    UPSTREAM_ERROR = "upstream_error"
    TIMEOUT = "timeout"
    CONNECT_ERROR = "connect_error"
    BUSY = "busy"


class Outcome(StrEnum):
    """Outcome of a client request (label `outcome` of requests_total)."""

    OK = "ok"
    CLIENT_ERROR = "client_error"
    UPSTREAM_ERROR = "upstream_error"
    TIMEOUT = "timeout"
    REJECTED = "rejected"


# Attempts after which the ladder moves on; anything else is the final answer.
RETRYABLE = frozenset(
    {Attempt.UPSTREAM_ERROR, Attempt.TIMEOUT, Attempt.CONNECT_ERROR, Attempt.BUSY}
)
# What counts as a pool failing (canary analysis): a busy worker is healthy, just full,
# and a client error is the client's fault.
POOL_ERRORS = frozenset({Attempt.UPSTREAM_ERROR, Attempt.TIMEOUT, Attempt.CONNECT_ERROR})


def classify_response(status: int, body: bytes) -> Attempt:
    """Classify a worker's answer. A 200 must look like a worker's JSON object with `data`:
    a worker answering garbage is failing, and the client should get another worker's
    image. The check is structural, not a full parse: bodies carry megabytes of base64
    and parsing them would cost the event loop milliseconds per image."""
    if status == 429:
        return Attempt.BUSY
    if 400 <= status < 500:
        return Attempt.CLIENT_ERROR
    if status != 200:
        return Attempt.UPSTREAM_ERROR
    if body.lstrip()[:1] != b"{" or body.rstrip()[-1:] != b"}" or b'"data"' not in body:
        return Attempt.UPSTREAM_ERROR
    return Attempt.OK


def client_error_body(status: int, body: bytes) -> bytes:
    """A worker's 4xx is passed through; if it is not in the error shape, wrap it."""
    try:
        doc = json.loads(body)
        if isinstance(doc, dict) and isinstance(doc.get("error"), dict):
            return body
    except (ValueError, UnicodeDecodeError):
        pass
    text = body[:500].decode("utf-8", "replace")
    return error_json("upstream_client_error", f"worker answered {status}: {text}")


MAX_RETRY_AFTER_S = 3600.0
DEFAULT_RETRY_AFTER_S = 1.0
# A worker's 429 codes that say why (a hosted provider's limits): relayed to the client
# when every busy attempt agrees, so it can tell "try again soon" from "quota gone".
RELAYED_BUSY_CODES = frozenset({"rate_limited", "quota_exhausted"})


def busy_code(body: bytes) -> str | None:
    """The error code of a worker's 429 body, if it is one of RELAYED_BUSY_CODES."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    err = doc.get("error") if isinstance(doc, dict) else None
    code = err.get("code") if isinstance(err, dict) else None
    return code if code in RELAYED_BUSY_CODES else None


def parse_retry_after(retry_after: str | None, retry_after_ms: str | None = None) -> float | None:
    """A worker's 429 hint in seconds (`retry-after-ms` first, as the OpenAI SDK reads it,
    then `Retry-After` in seconds); None when absent or not a sane number (an HTTP date is
    not taken: workers send seconds)."""
    for raw, scale in ((retry_after_ms, 0.001), (retry_after, 1.0)):
        if raw is None:
            continue
        try:
            v = float(raw.strip()) * scale
        except ValueError:
            continue
        if 0.0 <= v <= MAX_RETRY_AFTER_S:  # also rejects nan
            return v
    return None


@dataclass(frozen=True)
class Tried:
    pool: str
    endpoint: str | None  # None: the pool had no ready endpoint
    outcome: Attempt | None
    retry_after_s: float | None = None  # a busy worker's hint
    code: str | None = None  # a busy worker's reason (RELAYED_BUSY_CODES)


@dataclass(frozen=True)
class Failure:
    status: int
    code: str
    message: str
    outcome: Outcome
    # For a 429: when the client may come back. The longest a busy worker asked for
    # (a provider's rate limit must not be retried sooner), at least 1 s.
    retry_after_s: float = DEFAULT_RETRY_AFTER_S


def exhausted(tried: Sequence[Tried], ladder: Sequence[str]) -> Failure:
    """What the client gets when every rung failed."""
    pools = ", ".join(ladder) or "(none)"
    attempts = [t for t in tried if t.outcome is not None]
    if not attempts:
        return Failure(
            503, "no_endpoints", f"no ready endpoints in pool(s) {pools}", Outcome.UPSTREAM_ERROR
        )
    if all(t.outcome is Attempt.BUSY for t in attempts):
        hints = [t.retry_after_s for t in attempts if t.retry_after_s is not None]
        codes = {t.code for t in attempts}
        code = codes.pop() if len(codes) == 1 else None
        why = f" ({code})" if code else ""
        return Failure(
            429,
            code or "upstream_busy",
            f"every worker tried is busy{why} (pools {pools})",
            Outcome.REJECTED,
            max([DEFAULT_RETRY_AFTER_S, *hints]),
        )
    detail = "; ".join(f"{t.pool} {t.endpoint}: {t.outcome}" for t in attempts)
    if all(t.outcome is Attempt.TIMEOUT for t in attempts):
        return Failure(
            504, "upstream_timeout", f"pool(s) {pools} timed out ({detail})", Outcome.TIMEOUT
        )
    return Failure(
        503,
        "upstream_unavailable",
        f"no pool could serve: tried {pools} ({detail})",
        Outcome.UPSTREAM_ERROR,
    )
