"""Client keys as routing sees them: who a request comes from and what that client may
do and spend. Pure data; the router's access layer (router/access.py) builds these from
labelled Secrets and never keeps the key itself, only its SHA-256 digest."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field, field_validator

from modelfleet.api.common import ApiModel

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


# -- client keys from labelled Secrets (pure: Secrets arrive as the API server's JSON) --

CLIENT_KEY_LABEL = "modelfleet.io/client-key"
KEY_FIELD = "key"  # the Secret's data field holding the key (base64, as Secrets are)
ANNOTATION = "modelfleet.io/"
KEY_ID = ANNOTATION + "key-id"
TIERS = ANNOTATION + "tiers"
MODELS = ANNOTATION + "models"
ROUTES = ANNOTATION + "routes"
REQUESTS_PER_MINUTE = ANNOTATION + "requests-per-minute"
BUDGET = ANNOTATION + "budget"
PRIORITY = ANNOTATION + "priority"
MIN_KEY_CHARS = 16
ANONYMOUS = "anonymous"  # the key id metrics show for requests served without a key
KEY_ID_PATTERN = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")
_BUDGET = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*USD\s*/\s*(day|month)\s*$", re.IGNORECASE)
PRIORITY_RANGE = (-1000, 1000)


@dataclass(frozen=True)
class KeyRefused:
    """A labelled Secret that is not a usable key: which Secret, which field, which rule.
    Never carries the key or any part of it."""

    namespace: str
    secret: str
    field: str
    rule: str

    def message(self) -> str:
        return (
            f"client key Secret {self.namespace}/{self.secret} refused: {self.field}: {self.rule}"
        )


@dataclass(frozen=True)
class KeyRing:
    """The keys a router accepts, by SHA-256 digest, and the Secrets it refused."""

    keys: Mapping[bytes, ClientKey] = field(default_factory=dict)
    refused: tuple[KeyRefused, ...] = ()

    def find(self, presented: str) -> ClientKey | None:
        """The key whose digest is the presented key's digest. The lookup compares digests,
        never keys: what a timing difference could reveal is a prefix of SHA-256(guess),
        which does not help build a key (docs/clients.md#keys)."""
        return self.keys.get(key_digest(presented.strip()))


def parse_list(text: str) -> frozenset[str]:
    """A comma list; blanks around names and empty entries are dropped."""
    return frozenset(p.strip() for p in text.split(",") if p.strip())


def parse_budget(text: str) -> Budget:
    """ "25 USD/day" or "500 USD/month"."""
    m = _BUDGET.match(text)
    if m is None:
        raise ValueError(
            f"{text!r} is not an amount per period like '25 USD/day' or '500 USD/month'"
        )
    amount = float(m.group(1))
    if amount <= 0:
        raise ValueError(f"{text!r}: the amount must be above 0")
    period: BudgetPeriod = "day" if m.group(2).lower() == "day" else "month"
    return Budget(amount, period)


def _int(text: str, low: int, high: int | None) -> int:
    try:
        v = int(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not an integer") from None
    if v < low or (high is not None and v > high):
        raise ValueError(f"{v} is not in {low}..{high if high is not None else ''}")
    return v


def key_from_secret(obj: Mapping[str, Any]) -> ClientKey | KeyRefused:
    """One labelled Secret -> a ClientKey (only the key's digest), or why it is refused."""
    meta = obj.get("metadata") or {}
    ns, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
    ann: Mapping[str, str] = meta.get("annotations") or {}

    def refused(fld: str, rule: str) -> KeyRefused:
        return KeyRefused(ns, name, fld, rule)

    encoded = (obj.get("data") or {}).get(KEY_FIELD)
    if not encoded:
        return refused(f"data.{KEY_FIELD}", "is required (the client key)")
    try:
        key = base64.b64decode(encoded, validate=True).decode().strip()
    except (ValueError, UnicodeDecodeError):
        return refused(f"data.{KEY_FIELD}", "must be UTF-8 text")
    if len(key) < MIN_KEY_CHARS or any(c.isspace() for c in key):
        return refused(
            f"data.{KEY_FIELD}", f"must be at least {MIN_KEY_CHARS} characters without spaces"
        )
    key_id = ann.get(KEY_ID, name).strip()
    if not KEY_ID_PATTERN.match(key_id):
        return refused(
            f"annotations[{KEY_ID}]",
            "must be 1-63 lowercase letters, digits, '.', '_' or '-', starting and ending "
            "with a letter or digit",
        )
    try:
        rpm = ann.get(REQUESTS_PER_MINUTE)
        budget = ann.get(BUDGET)
        priority = ann.get(PRIORITY)
        where = REQUESTS_PER_MINUTE
        rpm_v = None if rpm is None else _int(rpm, 1, None)
        where = BUDGET
        budget_v = None if budget is None else parse_budget(budget)
        where = PRIORITY
        priority_v = 0 if priority is None else _int(priority, *PRIORITY_RANGE)
    except ValueError as exc:
        return refused(f"annotations[{where}]", str(exc))
    return ClientKey(
        id=key_id,
        namespace=ns,
        digest=key_digest(key),
        tiers=parse_list(ann.get(TIERS, "")),
        models=parse_list(ann.get(MODELS, "")),
        routes=parse_list(ann.get(ROUTES, "")),
        requests_per_minute=rpm_v,
        budget=budget_v,
        priority=priority_v,
    )


def ring_from_secrets(secrets: Iterable[Mapping[str, Any]]) -> KeyRing:
    """Every labelled Secret, by name order: a key id or a key already taken by an earlier
    Secret is refused (two clients must never share an identity or a key)."""
    keys: dict[bytes, ClientKey] = {}
    ids: dict[str, str] = {}
    refused: list[KeyRefused] = []
    for obj in sorted(secrets, key=lambda o: str((o.get("metadata") or {}).get("name") or "")):
        got = key_from_secret(obj)
        if isinstance(got, KeyRefused):
            refused.append(got)
            continue
        name = str((obj.get("metadata") or {}).get("name") or "")
        if got.id in ids:
            refused.append(
                KeyRefused(got.namespace, name, f"annotations[{KEY_ID}]",
                           f"key id {got.id!r} is already Secret {ids[got.id]}'s")
            )  # fmt: skip
        elif got.digest in keys:
            refused.append(
                KeyRefused(got.namespace, name, f"data.{KEY_FIELD}",
                           f"the same key as key id {keys[got.digest].id!r}; give each client its own")
            )  # fmt: skip
        else:
            keys[got.digest] = got
            ids[got.id] = name
    return KeyRing(keys, tuple(refused))


# -- authorization and the failure limiter (pure) ---------------------------------------


@dataclass(frozen=True)
class Denied:
    """What a key may not use: the field (tier, model, route) and the value asked for."""

    field: str
    value: str
    allowed: frozenset[str]

    def message(self, key_id: str) -> str:
        return (
            f"client key {key_id!r} may not use {self.field} {self.value!r} "
            f"(allowed: {', '.join(sorted(self.allowed))})"
        )


def authorize(key: ClientKey, tier: str, model: str | None, route: str) -> Denied | None:
    """None when the key may send this request; empty allow lists restrict nothing. The
    model is checked only when the request names one."""
    if key.tiers and tier not in key.tiers:
        return Denied("tier", tier, key.tiers)
    if key.models and model is not None and model not in key.models:
        return Denied("model", model, key.models)
    if key.routes and route not in key.routes:
        return Denied("route", route, key.routes)
    return None


def bearer(header: str | None) -> str | None:
    """The key in `Authorization: Bearer KEY` (the scheme case-insensitive, RFC 6750);
    None when absent, empty or another scheme."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


@dataclass
class _Bucket:
    tokens: float
    at: float


class FailureLimiter:
    """Failed authentications per peer address, as a token bucket: `burst` failures at
    once, then `per_minute` a minute. An address with no token left is refused (429)
    before its key is even looked at, good key or not, until a token is back. Pure: the
    caller passes the time. At most `max_addresses` are remembered; when full, buckets that
    refilled are dropped first, then the oldest."""

    def __init__(self, per_minute: float, burst: int, max_addresses: int = 10000) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self.max_addresses = max_addresses
        self._buckets: dict[str, _Bucket] = {}

    def _level(self, b: _Bucket, now: float) -> float:
        return min(self.burst, b.tokens + (now - b.at) * self.rate)

    def retry_after(self, address: str, now: float) -> float | None:
        """Seconds until this address may try again; None: it may try now."""
        b = self._buckets.get(address)
        if b is None:
            return None
        level = self._level(b, now)
        if level >= 1.0:
            return None
        return (1.0 - level) / self.rate if self.rate > 0 else float("inf")

    def failed(self, address: str, now: float) -> None:
        b = self._buckets.get(address)
        if b is None:
            if len(self._buckets) >= self.max_addresses:
                self._evict(now)
            b = self._buckets[address] = _Bucket(self.burst, now)
        b.tokens = max(0.0, self._level(b, now) - 1.0)
        b.at = now

    def _evict(self, now: float) -> None:
        full = [a for a, b in self._buckets.items() if self._level(b, now) >= self.burst]
        for a in full:
            del self._buckets[a]
        if len(self._buckets) >= self.max_addresses:
            oldest = min(self._buckets, key=lambda a: self._buckets[a].at)
            del self._buckets[oldest]

    def __len__(self) -> int:
        return len(self._buckets)


# -- client keys in a static config (`--config FILE`, clientKeys) ------------------------


class StaticClientKey(ApiModel):
    """A client key in a static router config: its SHA-256 digest (hex), never the key
    (`printf %s "$KEY" | sha256sum`)."""

    id: str = Field(pattern=KEY_ID_PATTERN.pattern, description="Non-secret key id.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the key, hex.")
    tiers: list[str] = Field(default_factory=list)
    models: list[str] = Field(default_factory=list)
    routes: list[str] = Field(default_factory=list)
    requests_per_minute: int | None = Field(default=None, ge=1)
    budget: str | None = Field(default=None, description="'25 USD/day' or '500 USD/month'.")
    priority: int = Field(default=0, ge=PRIORITY_RANGE[0], le=PRIORITY_RANGE[1])

    @field_validator("budget")
    @classmethod
    def _budget(cls, v: str | None) -> str | None:
        if v is not None:
            parse_budget(v)
        return v

    def client_key(self, namespace: str) -> ClientKey:
        return ClientKey(
            id=self.id,
            namespace=namespace,
            digest=bytes.fromhex(self.sha256),
            tiers=frozenset(self.tiers),
            models=frozenset(self.models),
            routes=frozenset(self.routes),
            requests_per_minute=self.requests_per_minute,
            budget=None if self.budget is None else parse_budget(self.budget),
            priority=self.priority,
        )


def ring_from_static(entries: Iterable[StaticClientKey], namespace: str = "default") -> KeyRing:
    """ValueError naming clientKeys[i] when an id or a digest repeats."""
    keys: dict[bytes, ClientKey] = {}
    ids: set[str] = set()
    for i, e in enumerate(entries):
        k = e.client_key(namespace)
        if k.id in ids:
            raise ValueError(f"clientKeys[{i}].id: {k.id!r} is not unique")
        if k.digest in keys:
            raise ValueError(f"clientKeys[{i}].sha256: the same key as {keys[k.digest].id!r}")
        ids.add(k.id)
        keys[k.digest] = k
    return KeyRing(keys)
