"""Where client keys' spend and request counts live (router/spend.py uses them; the
decisions are modelfleet.routing.budget's).

One replica keeps them in memory (MemorySpendStore, the embedded default; lost on
restart); several replicas share Redis (RedisSpendStore: the same server as the sticky
asset records, or another one). Redis keys are per key id and period, expiring a week
after the period ends:
  modelfleet:spend:<namespace>/<key id>:<period>   hash: spent (nano-USD), images,
                                                   requests, failed, reserved (the sum of
                                                   the reservations in flight), r:<id>
                                                   (each reservation's amount)
  modelfleet:spend:<namespace>/<key id>:<period>:r zset: reservation id -> expiry (ms)
  modelfleet:rate:<namespace>/<key id>             hash: minute, previous, current
  modelfleet:cost:<namespace>/<pool>               a pool's cost per image (nano-USD), as
                                                   last published: a replica that starts
                                                   knows its estimates (routing.budget)
Reserve, settle and release are Lua scripts: atomic across replicas. A reservation a
router never settled (it was killed) expires after --spend-hold (the request deadline and
a margin) and is dropped by the next reserve.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

from modelfleet.router.assets import PasswordFile
from modelfleet.router.redisflags import checked_redis_flag
from modelfleet.routing.budget import WINDOW_S, Period, RateVerdict, decide, rate_decision

KEY_PREFIX = "modelfleet:spend:"
RATE_PREFIX = "modelfleet:rate:"
COST_PREFIX = "modelfleet:cost:"  # <namespace>/<pool>: its last answer's cost per image
COST_TTL_S = 3600
KEEP_AFTER_PERIOD_S = 7 * 86400  # a period's figures stay readable a week after it ends
DEFAULT_HOLD_S = 300.0


@dataclass(frozen=True)
class Account:
    """A key's figures for one period (nano-USD and counts)."""

    spent: int = 0
    reserved: int = 0
    images: int = 0
    requests: int = 0
    failed: int = 0


class SpendStore(Protocol):
    async def reserve(
        self, scope: str, p: Period, rid: str, estimate: int | None, budget: int, now: float
    ) -> tuple[bool, Account]:
        """Atomically: drop expired reservations, decide (routing.budget.decide), and
        when admitted hold `estimate` (a probe holds 0) until now + hold_s."""
        ...

    async def settle(self, scope: str, p: Period, rid: str, cost: int, images: int) -> None: ...

    async def release(self, scope: str, p: Period, rid: str) -> None: ...

    async def account(self, scope: str, p: Period) -> Account: ...

    async def hit(self, scope: str, rpm: int, now: float) -> RateVerdict:
        """Count one request against rpm unless it is over (routing.budget.rate_decision)."""
        ...

    async def costs(self, namespace: str, pools: Iterable[str]) -> dict[str, int]:
        """The pools' cost per image (nano-USD) other replicas (or this one before a
        restart) last published; pools without one are left out."""
        ...

    async def publish_cost(self, namespace: str, pool: str, per_image: int) -> None: ...

    async def close(self) -> None: ...


@dataclass
class _MemAccount:
    spent: int = 0
    images: int = 0
    requests: int = 0
    failed: int = 0
    held: dict[str, tuple[int, float]] = field(default_factory=dict)  # rid -> (nano, until)

    def view(self) -> Account:
        reserved = sum(a for a, _ in self.held.values())
        return Account(self.spent, reserved, self.images, self.requests, self.failed)


class MemorySpendStore:
    """One replica's spend; periods ended more than KEEP_AFTER_PERIOD_S ago are dropped."""

    def __init__(self, hold_s: float = DEFAULT_HOLD_S) -> None:
        self.hold_s = hold_s
        self._acc: dict[tuple[str, str], tuple[float, _MemAccount]] = {}
        self._rate: dict[str, tuple[int, int, int]] = {}  # scope -> (minute, prev, cur)

    def _get(self, scope: str, p: Period) -> _MemAccount:
        k = (scope, p.label)
        got = self._acc.get(k)
        if got is None:
            got = self._acc[k] = (p.end, _MemAccount())
        return got[1]

    async def reserve(
        self, scope: str, p: Period, rid: str, estimate: int | None, budget: int, now: float
    ) -> tuple[bool, Account]:
        self._expire(now)
        a = self._get(scope, p)
        a.held = {r: v for r, v in a.held.items() if v[1] > now}
        before = a.view()
        ok = decide(before.spent, before.reserved, estimate, budget)
        if ok:
            a.held[rid] = (estimate or 0, now + self.hold_s)
        return ok, before

    async def settle(self, scope: str, p: Period, rid: str, cost: int, images: int) -> None:
        a = self._get(scope, p)
        a.held.pop(rid, None)
        a.spent += cost
        a.images += images
        a.requests += 1

    async def release(self, scope: str, p: Period, rid: str) -> None:
        a = self._get(scope, p)
        a.held.pop(rid, None)
        a.failed += 1

    async def account(self, scope: str, p: Period) -> Account:
        got = self._acc.get((scope, p.label))
        return Account() if got is None else got[1].view()

    async def hit(self, scope: str, rpm: int, now: float) -> RateVerdict:
        minute = int(now // WINDOW_S)
        m, prev, cur = self._rate.get(scope, (minute, 0, 0))
        if m != minute:
            prev, cur = (cur if m == minute - 1 else 0), 0
        verdict = rate_decision(prev, cur, now - minute * WINDOW_S, rpm)
        self._rate[scope] = (minute, prev, cur + 1 if verdict.admitted else cur)
        return verdict

    def _expire(self, now: float) -> None:
        if len(self._acc) < 1024:
            return
        cutoff = now - KEEP_AFTER_PERIOD_S
        self._acc = {k: v for k, v in self._acc.items() if v[0] > cutoff}

    async def costs(self, namespace: str, pools: Iterable[str]) -> dict[str, int]:
        return {}  # one replica: router.spend's own CostMemory knows all there is

    async def publish_cost(self, namespace: str, pool: str, per_image: int) -> None:
        return None

    async def close(self) -> None:
        return None


# The Lua twins of routing.budget.decide and rate_decision (keep them alike). Amounts go
# to HINCRBY as the strings they came as: a Lua number may print as 1e+15 (and
# Redis refuses -0).
_RESERVE = """
local acct, zres = KEYS[1], KEYS[2]
local now, until_ms, ttl = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local rid, est, budget = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
for _, id in ipairs(redis.call('ZRANGEBYSCORE', zres, '-inf', now)) do
  local amt = redis.call('HGET', acct, 'r:' .. id) or '0'
  if amt ~= '0' then redis.call('HINCRBY', acct, 'reserved', '-' .. amt) end
  redis.call('HDEL', acct, 'r:' .. id)
  redis.call('ZREM', zres, id)
end
local f = redis.call('HMGET', acct, 'spent', 'reserved', 'images', 'requests', 'failed')
local spent, reserved = tonumber(f[1] or '0'), tonumber(f[2] or '0')
local ok, held = false, ARGV[5]
if est < 0 then
  ok = spent + reserved < budget
  held = '0'
else
  ok = spent + reserved + est <= budget
end
if ok then
  redis.call('HINCRBY', acct, 'reserved', held)
  redis.call('HSET', acct, 'r:' .. rid, held)
  redis.call('ZADD', zres, until_ms, rid)
  redis.call('EXPIRE', acct, ttl)
  redis.call('EXPIRE', zres, ttl)
end
return {ok and 1 or 0, f[1] or '0', f[2] or '0', f[3] or '0', f[4] or '0', f[5] or '0'}
"""

_FINISH = """
local acct, zres = KEYS[1], KEYS[2]
local rid, cost, images, ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local amt = redis.call('HGET', acct, 'r:' .. rid)
if amt then
  if amt ~= '0' then redis.call('HINCRBY', acct, 'reserved', '-' .. amt) end
  redis.call('HDEL', acct, 'r:' .. rid)
  redis.call('ZREM', zres, rid)
end
if ARGV[5] == 'settle' then
  redis.call('HINCRBY', acct, 'spent', cost)
  redis.call('HINCRBY', acct, 'images', images)
  redis.call('HINCRBY', acct, 'requests', 1)
else
  redis.call('HINCRBY', acct, 'failed', 1)
end
redis.call('EXPIRE', acct, ttl)
return 1
"""

_HIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rpm = tonumber(ARGV[1])
local minute = math.floor(now / 60)
local f = redis.call('HMGET', KEYS[1], 'minute', 'previous', 'current')
local m, prev, cur = tonumber(f[1] or '-1'), tonumber(f[2] or '0'), tonumber(f[3] or '0')
if m ~= minute then
  if m == minute - 1 then prev = cur else prev = 0 end
  cur = 0
end
local elapsed = now - minute * 60
local ok = prev * (1 - elapsed / 60) + cur < rpm
if ok then cur = cur + 1 end
redis.call('HSET', KEYS[1], 'minute', minute, 'previous', prev, 'current', cur)
redis.call('EXPIRE', KEYS[1], 130)
return {ok and 1 or 0, prev, cur, tostring(elapsed)}
"""


class RedisSpendStore:
    """Spend shared by every replica (module docstring). No client-side retries, as
    RedisAssetStore; a longer socket timeout than its (2 s): a budgeted request fails
    closed when the store does not answer, so a burst must not trip it."""

    def __init__(
        self,
        url: str,
        *,
        password_file: Path | None = None,
        hold_s: float = DEFAULT_HOLD_S,
        socket_timeout_s: float = 2.0,
        max_connections: int = 256,
    ) -> None:
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self.url = url
        self.hold_s = hold_s
        kwargs: dict[str, object] = {}
        if password_file is not None:
            parts = urlsplit(url)
            url = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
            kwargs["credential_provider"] = PasswordFile(password_file, parts.username)
        self._redis = Redis.from_url(
            url,
            **kwargs,  # type: ignore[arg-type]
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=socket_timeout_s,
            retry=Retry(NoBackoff(), 0),
            max_connections=max_connections,
            decode_responses=False,
        )
        self._reserve = self._redis.register_script(_RESERVE)
        self._finish = self._redis.register_script(_FINISH)
        self._hit = self._redis.register_script(_HIT)

    @staticmethod
    def keys(scope: str, p: Period) -> list[str]:
        k = f"{KEY_PREFIX}{scope}:{p.label}"
        return [k, k + ":r"]

    @staticmethod
    def _ttl(p: Period, now: float) -> int:
        return max(1, int(p.end - now) + KEEP_AFTER_PERIOD_S)

    async def reserve(
        self, scope: str, p: Period, rid: str, estimate: int | None, budget: int, now: float
    ) -> tuple[bool, Account]:
        args: list[str | int] = [
            int(now * 1000),
            int((now + self.hold_s) * 1000),
            self._ttl(p, now),
            rid,
            -1 if estimate is None else estimate,
            budget,
        ]
        got = await self._reserve(keys=self.keys(scope, p), args=args)
        ok, spent, reserved, images, requests, failed = (int(x) for x in got)
        return bool(ok), Account(spent, reserved, images, requests, failed)

    async def _end(self, scope: str, p: Period, rid: str, cost: int, images: int, op: str) -> None:
        args: list[str | int] = [rid, cost, images, self._ttl(p, time.time()), op]
        await self._finish(keys=self.keys(scope, p), args=args)

    async def settle(self, scope: str, p: Period, rid: str, cost: int, images: int) -> None:
        await self._end(scope, p, rid, cost, images, "settle")

    async def release(self, scope: str, p: Period, rid: str) -> None:
        await self._end(scope, p, rid, 0, 0, "release")

    async def account(self, scope: str, p: Period) -> Account:
        f = await self._redis.hmget(
            self.keys(scope, p)[0], ["spent", "reserved", "images", "requests", "failed"]
        )
        return Account(*(int(x or 0) for x in f))

    async def hit(self, scope: str, rpm: int, now: float) -> RateVerdict:
        got = await self._hit(keys=[RATE_PREFIX + scope], args=[rpm])
        if int(got[0]):
            return RateVerdict(True)
        return rate_decision(int(got[1]), int(got[2]), float(got[3]), rpm)

    async def costs(self, namespace: str, pools: Iterable[str]) -> dict[str, int]:
        names = list(pools)
        if not names:
            return {}
        got = await self._redis.mget([f"{COST_PREFIX}{namespace}/{p}" for p in names])
        return {p: int(v) for p, v in zip(names, got, strict=True) if v is not None}

    async def publish_cost(self, namespace: str, pool: str, per_image: int) -> None:
        await self._redis.set(f"{COST_PREFIX}{namespace}/{pool}", per_image, ex=COST_TTL_S)

    async def close(self) -> None:
        await self._redis.aclose()


# -- configuration (router/cli.py) ---------------------------------------------------


class SpendConfigError(Exception):
    """A bad --spend-store flag; the message names it."""


def add_spend_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--spend-store",
        default="memory",
        metavar="memory|redis://HOST:PORT/DB|asset-store",
        help="where client keys' spend and request counts live: memory (one replica; lost "
        "on restart; the default), redis://HOST:PORT/DB (shared by every replica, kept "
        "across restarts) or asset-store (the --asset-store's Redis and password file)",
    )
    p.add_argument(
        "--spend-store-password-file",
        metavar="FILE",
        help="Redis password for --spend-store (a mounted Secret key), read per connection",
    )
    p.add_argument(
        "--spend-hold",
        type=float,
        metavar="SECONDS",
        help="how long a budget reservation a router never settled (it died) holds its "
        "estimate (default: the request timeout plus 60 s)",
    )


def spend_store_from_args(args: argparse.Namespace, request_timeout_s: float) -> SpendStore:
    """Raises SpendConfigError naming the flag."""
    hold = args.spend_hold if args.spend_hold is not None else request_timeout_s + 60.0
    if not hold >= 1:
        raise SpendConfigError(f"--spend-hold: {hold:g} is not at least 1 second")
    spec: str = args.spend_store
    pwfile: str | None = args.spend_store_password_file
    if spec == "asset-store":
        spec = args.asset_store
        if not spec.startswith(("redis://", "rediss://")):
            raise SpendConfigError("--spend-store asset-store needs a redis:// --asset-store")
        pwfile = pwfile or args.asset_store_password_file
    if spec == "memory":
        if pwfile:
            raise SpendConfigError("--spend-store-password-file needs a redis:// --spend-store")
        return MemorySpendStore(hold_s=hold)
    try:
        password_file = checked_redis_flag(
            "--spend-store", spec, "memory, asset-store", "--spend-store-password-file", pwfile
        )
    except ValueError as exc:
        raise SpendConfigError(str(exc)) from None
    return RedisSpendStore(spec, password_file=password_file, hold_s=hold)


def describe(store: SpendStore) -> str:
    return store.url if isinstance(store, RedisSpendStore) else "memory"
