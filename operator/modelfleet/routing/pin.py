"""Pool pinning: a request that names the pool it must be rendered on, for the operator.

The pre-flight replay renders the same (prompt, seed) on the stable and on the candidate
pool, before the route sends the candidate any traffic, so it must choose the pool
itself. Only the operator's credential (a Kubernetes Secret that the router and the
operator mount) may do that: a client that could pin would bypass the route's weights,
fallbacks and verify gate. Pure: the router passes the headers and the credential in.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass

POOL_HEADER = "X-ModelFleet-Pool"  # on a request: the pin; on an answer: who served it
TOKEN_HEADER = "X-ModelFleet-Operator-Token"
PINNED_HEADER = "X-ModelFleet-Pinned"
_POOL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


@dataclass(frozen=True)
class PinRefused:
    """Answered in the OpenAI error shape; the message names the header, never a value."""

    status: int
    code: str
    message: str
    param: str = POOL_HEADER


def check_pin(headers: Mapping[str, str], credential: bytes | None) -> str | PinRefused | None:
    """None: no pin asked for. A pool name: the pin, allowed. PinRefused: why not.

    `headers` has lower-cased names. The credential is compared in constant time.
    """
    pool = headers.get(POOL_HEADER.lower())
    if pool is None:
        return None
    given = headers.get(TOKEN_HEADER.lower())
    if not credential:
        return PinRefused(
            403,
            "pin_forbidden",
            f"header {POOL_HEADER} is refused: this router has no operator credential "
            "configured (--operator-token-file)",
        )
    if given is None:
        return PinRefused(
            403,
            "pin_forbidden",
            f"header {POOL_HEADER} needs the operator credential in header {TOKEN_HEADER}",
        )
    if not hmac.compare_digest(given.strip().encode(), credential):
        return PinRefused(
            403,
            "pin_forbidden",
            f"header {POOL_HEADER} is refused: the credential in header {TOKEN_HEADER} "
            "is not the operator's",
        )
    pool = pool.strip()
    if not _POOL.match(pool):
        return PinRefused(
            400, "invalid_request", f"header {POOL_HEADER} must name a ModelPool (a DNS label)"
        )
    return pool


def read_credential(text: str) -> bytes | None:
    """A credential file's content: surrounding whitespace dropped, empty is none."""
    value = text.strip()
    return value.encode() if value else None
