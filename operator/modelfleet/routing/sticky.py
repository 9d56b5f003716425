"""Sticky assets: later renders of an asset go to the pool that made it. Pure.

A request may carry an `asset_id`. Its first render records the pool, model, revision,
image digest and seed (an AssetRecord); later generations or edits of that asset go to the
recorded pool first, whatever the route's weights say (a canary at 90% does not move an
asset made by the stable), until that pool is gone. Then the route's current pool serves
it and the record moves to that pool; the response says so.

"Gone" means the pool is not known any more (no Service/EndpointSlice, or absent from a
static config), not that it has no ready endpoint at this instant: a pool scaling up from
zero, or restarting, keeps its assets; the ladder's fallbacks serve in the meantime without
moving the record.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

ASSET_FIELD = "asset_id"
ASSET_HEADER = "X-ModelFleet-Asset"
ASSET_POOL_HEADER = "X-ModelFleet-Asset-Pool"
ASSET_MOVED_HEADER = "X-ModelFleet-Asset-Moved"
# Printable, no spaces, bounded: the id is a store key, and is echoed in logs.
ASSET_ID_PATTERN = re.compile(r"^[A-Za-z0-9._:/@+=-]{1,200}$")


@dataclass(frozen=True)
class AssetRecord:
    """What made an asset: kept in the asset store (router.assets) under its id."""

    pool: str
    model: str
    revision: str | None
    digest: str  # sha256 hex of the first image's bytes (decoded, not base64)
    seed: int | None
    created_unix: float

    def to_json(self) -> str:
        return json.dumps(
            {
                "pool": self.pool,
                "model": self.model,
                "revision": self.revision,
                "digest": self.digest,
                "seed": self.seed,
                "created_unix": self.created_unix,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, raw: str | bytes) -> AssetRecord:
        """Raises ValueError on anything that is not a record this module wrote."""
        doc = json.loads(raw)
        if not isinstance(doc, dict):
            raise ValueError("asset record is not an object")
        pool, model, digest = doc.get("pool"), doc.get("model"), doc.get("digest")
        revision, seed, created = doc.get("revision"), doc.get("seed"), doc.get("created_unix")
        if not (isinstance(pool, str) and pool and isinstance(model, str)):
            raise ValueError("asset record needs pool and model strings")
        if not isinstance(digest, str):
            raise ValueError("asset record needs a digest string")
        if revision is not None and not isinstance(revision, str):
            raise ValueError("asset record revision must be a string or null")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise ValueError("asset record seed must be an integer or null")
        if not isinstance(created, int | float) or isinstance(created, bool):
            raise ValueError("asset record needs created_unix")
        return cls(pool, model, revision, digest, seed, float(created))


@dataclass(frozen=True)
class StickyChoice:
    """What the router does with an asset's request.

    pool_first: the pool to try first (None: no preference, the weights choose).
    ladder: the route's ladder with pool_first put in front (unchanged when None).
    moved: the recorded pool is gone; the pool that serves becomes the asset's pool.
    record_pool: the pool the record named (None: no record, i.e. a first render).
    """

    pool_first: str | None
    ladder: tuple[str, ...]
    moved: bool
    record_pool: str | None

    @property
    def should_record(self) -> bool:
        """Write a record after a successful render? A first render and a moved asset, yes;
        an asset whose own pool exists but was skipped or failed this once (no ready
        endpoint, an error, the fallbacks served) keeps its record: the pool is not gone."""
        return self.record_pool is None or self.moved

    def asset_pool(self, served_pool: str) -> str:
        """The asset's pool after this request (the X-ModelFleet-Asset-Pool header)."""
        if self.should_record:
            return served_pool
        return self.record_pool or served_pool


def sticky_choice(
    record: AssetRecord | None,
    ladder: tuple[str, ...],
    live_pools: Collection[str],
    model_pools: Collection[str] | None = None,
) -> StickyChoice:
    """The recorded pool goes first while it is live (known in this namespace), whether or
    not the route weighs it (a canary's old stable at weight 0, or even a pool of another
    route: the asset's pixels came from there). Gone: the ladder as the weights made it,
    and the record moves to whichever pool serves.

    model_pools: the request named a `model`, served by these pools. A recorded pool that
    does not serve it is passed over for this request (the client asked for another
    model), and its record stays: the next request without that model sticks again."""
    if record is None:
        return StickyChoice(None, ladder, False, None)
    if model_pools is not None and record.pool not in model_pools and record.pool in live_pools:
        return StickyChoice(None, ladder, False, record.pool)
    if record.pool in live_pools:
        rest = tuple(p for p in ladder if p != record.pool)
        return StickyChoice(record.pool, (record.pool, *rest), False, record.pool)
    return StickyChoice(None, ladder, True, record.pool)


class _Named(Protocol):  # routing.models.PoolModels (not imported: it imports intent)
    @property
    def names(self) -> tuple[str, ...]: ...


def model_pools(
    model: str | None, namespace: str, names: Mapping[tuple[str, str], _Named]
) -> frozenset[str] | None:
    """The pools of `namespace` serving `model`, for sticky_choice. None when the request
    named no model, or when no pool there declares names (routing.models then routes
    `model` by intent, and the record must not be passed over for it)."""
    if model is None:
        return None
    named = {p: pm.names for (ns, p), pm in names.items() if ns == namespace and pm.names}
    if not named:
        return None
    return frozenset(p for p, ns_names in named.items() if model in ns_names)


def asset_id_of(body: Mapping[str, Any], headers: Mapping[str, str]) -> str | None:
    """The body field wins over the header (as `tier` does). Lower-cased header names.
    Raises ValueError naming the rule when the id is malformed."""
    raw = body.get(ASSET_FIELD)
    if raw is None:
        raw = headers.get(ASSET_HEADER.lower())
    if raw is None:
        return None
    if not isinstance(raw, str) or not ASSET_ID_PATTERN.match(raw):
        raise ValueError("asset_id must be 1-200 characters of letters, digits and ._:/@+=-")
    return raw


def record_from_response(
    pool: str, body: bytes, headers: Mapping[str, str], now_unix: float
) -> AssetRecord | None:
    """The record of a worker's successful answer (contract 1: `modelfleet` block and
    X-ModelFleet-Model/-Revision headers). Parses the body, megabytes of base64: only
    called for first renders and moves. None when the answer has no image to digest."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(doc, dict):
        return None
    data = doc.get("data")
    if not isinstance(data, list) or not data or not isinstance(data[0], dict):
        return None
    b64 = data[0].get("b64_json")
    if not isinstance(b64, str):
        return None
    try:
        image = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        return None
    lower = {k.lower(): v for k, v in headers.items()}
    meta = doc.get("modelfleet")
    meta = meta if isinstance(meta, dict) else {}
    model = meta.get("model")
    if not isinstance(model, str):
        model = lower.get("x-modelfleet-model", "")
    revision = meta.get("revision")
    if not isinstance(revision, str):
        revision = lower.get("x-modelfleet-revision") or None
    seeds = meta.get("seeds")
    seed = seeds[0] if isinstance(seeds, list) and seeds else None
    if not isinstance(seed, int) or isinstance(seed, bool):
        seed = None
    return AssetRecord(
        pool=pool,
        model=model,
        revision=revision,
        digest=hashlib.sha256(image).hexdigest(),
        seed=seed,
        created_unix=now_unix,
    )
