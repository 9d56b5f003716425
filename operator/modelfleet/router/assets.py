"""Sticky asset records: where they are kept, and the router's two calls around a request.

The decisions are modelfleet.routing.sticky's; this module is the I/O. One router replica
without Redis keeps records in memory (MemoryAssetStore, the embedded default); several
replicas share Redis (RedisAssetStore). Whatever the store, it fails open (FailOpenStore):
a store error never fails a request, the lookup proceeds as if there were no record, and
modelfleet_router_asset_store_errors_total{op} counts what was missed.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar
from urllib.parse import urlsplit, urlunsplit

from prometheus_client import CollectorRegistry, Counter, Histogram

from modelfleet.router.redisflags import checked_redis_flag
from modelfleet.routing.sticky import (
    ASSET_MOVED_HEADER,
    ASSET_POOL_HEADER,
    AssetRecord,
    StickyChoice,
    record_from_response,
    sticky_choice,
)

log = logging.getLogger("modelfleet.router.assets")

DEFAULT_TTL_S = 30 * 24 * 3600.0
DEFAULT_MEMORY_ENTRIES = 100_000  # about 60 MB when full (~625 bytes per record)
KEY_PREFIX = "modelfleet:asset:"
T = TypeVar("T")


class AssetStore(Protocol):
    """Records by (namespace, asset id). Implementations may raise on I/O errors; the
    router only ever uses them through FailOpenStore."""

    async def get(self, namespace: str, asset_id: str) -> AssetRecord | None: ...

    async def put(self, namespace: str, asset_id: str, record: AssetRecord) -> None: ...

    async def put_new(
        self, namespace: str, asset_id: str, record: AssetRecord
    ) -> AssetRecord | None:
        """Write only if there is no record yet (a first render). Returns the record that
        was there, unchanged, when another render got in first; None when written."""
        ...

    async def close(self) -> None: ...


class MemoryAssetStore:
    """One replica's records: TTL from the last use, bounded, least recently used evicted
    first. Lost on restart (the asset is then served by the weights and recorded again)."""

    def __init__(
        self,
        ttl_s: float = DEFAULT_TTL_S,
        max_entries: int = DEFAULT_MEMORY_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl_s <= 0 or max_entries <= 0:
            raise ValueError("ttl_s and max_entries must be positive")
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._clock = clock
        self._items: OrderedDict[tuple[str, str], tuple[float, AssetRecord]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    async def get(self, namespace: str, asset_id: str) -> AssetRecord | None:
        key = (namespace, asset_id)
        item = self._items.get(key)
        if item is None:
            return None
        now = self._clock()
        if item[0] <= now:
            del self._items[key]
            return None
        # A read is a use: it slides the expiry (RedisAssetStore renews it too).
        self._items[key] = (now + self.ttl_s, item[1])
        self._items.move_to_end(key)
        return item[1]

    async def put(self, namespace: str, asset_id: str, record: AssetRecord) -> None:
        key = (namespace, asset_id)
        self._items[key] = (self._clock() + self.ttl_s, record)
        self._items.move_to_end(key)
        while len(self._items) > self.max_entries:
            self._items.popitem(last=False)

    async def put_new(
        self, namespace: str, asset_id: str, record: AssetRecord
    ) -> AssetRecord | None:
        existing = await self.get(namespace, asset_id)
        if existing is not None:
            return existing
        await self.put(namespace, asset_id, record)
        return None

    async def close(self) -> None:
        self._items.clear()


class RedisAssetStore:
    """Records shared by every router replica: one JSON string per asset under
    modelfleet:asset:<namespace>/<asset id>, expiring ttl_s after its last use (to within
    refresh_s: lookups are reads, the TTL is renewed once it has run down by that). Short socket
    timeouts and no client-side retries: a slow or dead Redis costs a request at most
    about one timeout, and FailOpenStore stops asking for a moment after an error."""

    def __init__(
        self,
        url: str,
        *,
        password: str | None = None,
        password_file: Path | None = None,
        ttl_s: float = DEFAULT_TTL_S,
        socket_timeout_s: float = 0.25,
        max_connections: int = 256,
    ) -> None:
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        if ttl_s < 1:
            raise ValueError("ttl_s must be at least 1 second (Redis expiry granularity)")
        self.ttl_s = int(ttl_s)
        # Renew a record's TTL when it has run down by this much (a day, or a tenth of it).
        self.refresh_s = max(1, min(86400, self.ttl_s // 10))
        self.url = url
        auth: dict[str, object] = {"password": password}
        if password_file is not None:
            # Read at each new connection: a rotated Secret is used from the next one on.
            parts = urlsplit(url)
            host = parts.netloc.rpartition("@")[2]
            url = urlunsplit(parts._replace(netloc=host))
            auth = {"credential_provider": PasswordFile(password_file, parts.username)}
        self._redis = Redis.from_url(
            url,
            **auth,  # type: ignore[arg-type]
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=socket_timeout_s,
            retry=Retry(NoBackoff(), 0),
            max_connections=max_connections,
            decode_responses=False,
        )

    @staticmethod
    def key(namespace: str, asset_id: str) -> str:
        return f"{KEY_PREFIX}{namespace}/{asset_id}"

    async def _dropping_idle_on_error(self, op: Awaitable[T]) -> T:
        """A dead or restarted Redis leaves every idle pooled connection stale: drop them
        all at the first connection error, so the store works again with the first
        request after Redis is back instead of failing once per stale connection."""
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        try:
            return await op
        except (RedisConnectionError, RedisTimeoutError, OSError):
            await self._redis.connection_pool.disconnect(inuse_connections=False)
            raise

    async def _get_and_ttl(self, key: str) -> tuple[bytes | None, int]:
        async with self._redis.pipeline(transaction=False) as p:
            p.get(key)
            p.ttl(key)
            raw, ttl = await p.execute()
        return raw, int(ttl)

    async def get(self, namespace: str, asset_id: str) -> AssetRecord | None:
        key = self.key(namespace, asset_id)
        raw, ttl = await self._dropping_idle_on_error(self._get_and_ttl(key))
        if raw is None:
            return None
        if ttl == -1 or 0 <= ttl < self.ttl_s - self.refresh_s:  # -1: set without expiry
            # A use slides the expiry, but lookups stay reads: a write per lookup (GETEX)
            # costs an AOF append each, so the TTL is renewed at most once per refresh_s.
            await self._dropping_idle_on_error(self._redis.expire(key, self.ttl_s))
        try:
            return AssetRecord.from_json(raw)
        except ValueError as exc:
            # Not ours (or a future format): treat as absent; the next render rewrites it.
            log.warning("asset record %s/%s unreadable: %s", namespace, asset_id, exc)
            return None

    async def put(self, namespace: str, asset_id: str, record: AssetRecord) -> None:
        await self._dropping_idle_on_error(
            self._redis.set(self.key(namespace, asset_id), record.to_json(), ex=self.ttl_s)
        )

    async def put_new(
        self, namespace: str, asset_id: str, record: AssetRecord
    ) -> AssetRecord | None:
        key = self.key(namespace, asset_id)
        # SET NX, then GET only when it was refused (SET NX GET needs Redis 7).
        done = await self._dropping_idle_on_error(
            self._redis.set(key, record.to_json(), ex=self.ttl_s, nx=True)
        )
        if done:
            return None
        return await self.get(namespace, asset_id)

    async def close(self) -> None:
        await self._redis.aclose()


class PasswordFile:
    """redis-py credential provider: the password from a mounted Secret key, read when a
    connection is made (never cached in the client's kwargs, never logged)."""

    def __init__(self, path: Path, username: str | None = None) -> None:
        self.path = path
        self.username = username

    def get_credentials(self) -> tuple[str] | tuple[str, str]:
        password = self.path.read_text().strip()
        if not password:
            raise ValueError(f"{self.path}: empty password file")
        return (self.username, password) if self.username else (password,)

    async def get_credentials_async(self) -> tuple[str] | tuple[str, str]:
        return self.get_credentials()


class FailOpenStore:
    """A store whose errors never reach the request. After an error the inner store is left
    alone for `pause_s` (each skipped call counts as missed too): a dead Redis must not
    add a connect attempt to every request. get() answers (record, ok); ok False means
    the lookup was missed, so the caller must not overwrite a record it could not read."""

    def __init__(
        self,
        inner: AssetStore,
        registry: CollectorRegistry,
        *,
        op_timeout_s: float = 0.5,
        pause_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.inner = inner
        self.op_timeout_s = op_timeout_s
        self.pause_s = pause_s
        self._clock = clock
        self._paused_until = 0.0
        self._last_log = 0.0
        self.errors = Counter(
            "modelfleet_router_asset_store_errors_total",
            "Asset store operations that failed or were skipped after a failure; each one is "
            "a sticky lookup (get) or record (put) missed, the request went on without it.",
            ["op"],
            registry=registry,
        )
        self.latency = Histogram(
            "modelfleet_router_asset_store_seconds",
            "Asset store operation latency (successful ones).",
            ["op"],
            registry=registry,
            buckets=(0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.25, 1.0),
        )
        for op in ("get", "put"):
            self.errors.labels(op)

    def _missed(self, op: str, exc: BaseException | None) -> None:
        self.errors.labels(op).inc()
        if exc is None:
            return
        now = self._clock()
        self._paused_until = now + self.pause_s
        if now - self._last_log >= 10.0:  # one line per 10 s, not one per request
            self._last_log = now
            log.warning("asset store %s failed (failing open): %r", op, exc)

    async def get(self, namespace: str, asset_id: str) -> tuple[AssetRecord | None, bool]:
        if self._clock() < self._paused_until:
            self._missed("get", None)
            return None, False
        t0 = self._clock()
        try:
            async with asyncio.timeout(self.op_timeout_s):
                rec = await self.inner.get(namespace, asset_id)
        except Exception as exc:  # any store failure: the request goes on without it
            self._missed("get", exc)
            return None, False
        self.latency.labels("get").observe(self._clock() - t0)
        return rec, True

    async def put(self, namespace: str, asset_id: str, record: AssetRecord) -> bool:
        if self._clock() < self._paused_until:
            self._missed("put", None)
            return False
        t0 = self._clock()
        try:
            async with asyncio.timeout(self.op_timeout_s):
                await self.inner.put(namespace, asset_id, record)
        except Exception as exc:
            self._missed("put", exc)
            return False
        self.latency.labels("put").observe(self._clock() - t0)
        return True

    async def put_new(
        self, namespace: str, asset_id: str, record: AssetRecord
    ) -> tuple[AssetRecord | None, bool]:
        """(the record another render wrote first, or None; whether the store answered)."""
        if self._clock() < self._paused_until:
            self._missed("put", None)
            return None, False
        t0 = self._clock()
        try:
            async with asyncio.timeout(self.op_timeout_s):
                existing = await self.inner.put_new(namespace, asset_id, record)
        except Exception as exc:
            self._missed("put", exc)
            return None, False
        self.latency.labels("put").observe(self._clock() - t0)
        return existing, True

    async def close(self) -> None:
        try:
            await self.inner.close()
        except Exception as exc:
            log.warning("asset store close: %r", exc)


@dataclass(frozen=True)
class AssetTicket:
    """One request's sticky state, from lookup() to recorded()."""

    namespace: str
    asset_id: str
    choice: StickyChoice
    lookup_ok: bool

    @property
    def ladder(self) -> tuple[str, ...]:
        return self.choice.ladder


class StickyAssets:
    """The router's call site: lookup() before the ladder walk, recorded() after it."""

    def __init__(
        self,
        store: AssetStore,
        registry: CollectorRegistry,
        *,
        wall_clock: Callable[[], float] = time.time,
        op_timeout_s: float = 0.5,
        pause_s: float = 1.0,
    ) -> None:
        self.store = FailOpenStore(store, registry, op_timeout_s=op_timeout_s, pause_s=pause_s)
        self._wall = wall_clock
        self.moves = Counter(
            "modelfleet_router_asset_moves_total",
            "Assets whose pool was gone, served and recorded by the route's current pool.",
            ["namespace"],
            registry=registry,
        )

    async def lookup(
        self,
        namespace: str,
        asset_id: str,
        ladder: tuple[str, ...],
        live_pools: Collection[str],
        model_pools: Collection[str] | None = None,
    ) -> AssetTicket:
        """model_pools: the pools serving the request's `model` (None: it named none)."""
        record, ok = await self.store.get(namespace, asset_id)
        choice = sticky_choice(record, ladder, live_pools, model_pools)
        return AssetTicket(namespace, asset_id, choice, ok)

    async def recorded(
        self,
        ticket: AssetTicket,
        served_pool: str,
        body: bytes,
        headers: Mapping[str, str],
    ) -> dict[str, str]:
        """After a successful render: write the record when it is a first render or a
        move (and the lookup was not missed: a record we could not read must not be
        overwritten), and the response headers that say where the asset lives."""
        choice = ticket.choice
        pool = choice.asset_pool(served_pool) if ticket.lookup_ok else served_pool
        if ticket.lookup_ok and choice.should_record:
            rec = record_from_response(served_pool, body, headers, self._wall())
            if rec is not None and choice.moved:
                await self.store.put(ticket.namespace, ticket.asset_id, rec)
                self.moves.labels(ticket.namespace).inc()
            elif rec is not None:
                # First renders racing (n variations sent at once): the first one written
                # is the asset's; the others' answers say where it lives.
                first, _ok = await self.store.put_new(ticket.namespace, ticket.asset_id, rec)
                if first is not None:
                    pool = first.pool
        return {
            ASSET_POOL_HEADER: pool,
            ASSET_MOVED_HEADER: "true" if choice.moved and ticket.lookup_ok else "false",
        }

    async def close(self) -> None:
        await self.store.close()


# -- configuration (router/cli.py) ---------------------------------------------------


class AssetConfigError(Exception):
    """A bad --asset-store flag; the message names it."""


def add_asset_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--asset-store",
        default="memory",
        metavar="memory|redis://HOST:PORT/DB|none",
        help="where sticky asset records live: memory (one replica only; the default), "
        "redis://HOST:PORT/DB (shared by every replica; rediss:// for TLS) or none "
        "(asset_id accepted, no stickiness)",
    )
    p.add_argument(
        "--asset-store-password-file",
        metavar="FILE",
        help="Redis password (a mounted Secret key), read again for each new connection, so a "
        "rotated Secret is used without a restart; never pass it in the URL",
    )
    p.add_argument(
        "--asset-ttl",
        type=float,
        default=DEFAULT_TTL_S,
        metavar="SECONDS",
        help=f"an asset record expires this long after its last use (default {DEFAULT_TTL_S:g}"
        ", 30 days)",
    )


def asset_store_from_args(args: argparse.Namespace) -> AssetStore | None:
    """The store the flags name; None for `none`. Raises AssetConfigError."""
    spec: str = args.asset_store
    ttl: float = args.asset_ttl
    if not ttl >= 1:
        raise AssetConfigError(f"--asset-ttl: {ttl:g} is not at least 1 second")
    if spec == "none":
        return None
    if spec == "memory":
        if args.asset_store_password_file:
            raise AssetConfigError("--asset-store-password-file needs a redis:// --asset-store")
        return MemoryAssetStore(ttl_s=ttl)
    try:
        password_file = checked_redis_flag(
            "--asset-store",
            spec,
            "memory, none",
            "--asset-store-password-file",
            args.asset_store_password_file,
        )
    except ValueError as exc:
        raise AssetConfigError(str(exc)) from None
    return RedisAssetStore(spec, password_file=password_file, ttl_s=ttl)


def describe(store: AssetStore | None) -> str:
    """For the start-up log line: never the password."""
    if store is None:
        return "none"
    if isinstance(store, RedisAssetStore):
        return store.url
    return "memory"
