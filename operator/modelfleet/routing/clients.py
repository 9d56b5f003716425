"""Client keys as routing sees them: who a request comes from and what that client may
do and spend. Pure data; the router's access layer (router/access.py) builds these from
labelled Secrets and never keeps the key itself, only its SHA-256 digest."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Literal

BudgetPeriod = Literal["day", "month"]


@dataclass(frozen=True)
class Budget:
    """A spending limit per calendar period (UTC), charged with each response's cost."""

    amount_usd: float
    period: BudgetPeriod = "day"


@dataclass(frozen=True)
class ClientKey:
    """One client key's identity and settings. `id` is the non-secret name shown in
    metrics, /v1/stats and the kubectl plugin; empty sets mean "no restriction"."""

    id: str
    namespace: str
    digest: bytes = field(repr=False)
    tiers: frozenset[str] = frozenset()
    models: frozenset[str] = frozenset()
    routes: frozenset[str] = frozenset()
    requests_per_minute: int | None = None
    budget: Budget | None = None
    priority: int = 0


def key_digest(key: str | bytes) -> bytes:
    """The only form in which a key is held in memory."""
    raw = key.encode() if isinstance(key, str) else key
    return hashlib.sha256(raw).digest()
