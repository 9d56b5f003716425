"""The routers' live per-pool demand, summed over every router that answers.

GET {router}/v1/demand answers
    {"time": <unix s>, "pools": [{"namespace", "pool", "in_flight", "queued", "held"}]}
(live gauges; a pool with all three at zero may be left out). Each router sees its own
share, so the figures add up. A router that does not answer contributes nothing; when
none answers the reading is None (unknown), never zero: a fleet that went deaf must not
look idle and scale to zero.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from modelfleet.autoscale.core import Demand
from modelfleet.providers.http import OwnedSession

Key = tuple[str, str]
_FIELDS = ("in_flight", "queued", "held")


class DemandFormatError(ValueError):
    """A router answered with JSON that is not a demand document."""


def parse_demand(doc: Any) -> dict[Key, Demand]:
    if not isinstance(doc, dict) or not isinstance(doc.get("pools"), list):
        raise DemandFormatError("not a demand document: no 'pools' list")
    out: dict[Key, Demand] = {}
    for entry in doc["pools"]:
        if not isinstance(entry, dict):
            raise DemandFormatError("pool entry is not an object")
        ns, pool = entry.get("namespace"), entry.get("pool")
        if not isinstance(ns, str) or not isinstance(pool, str):
            raise DemandFormatError("pool entry without namespace/pool strings")
        nums = []
        for name in _FIELDS:
            raw = entry.get(name, 0)
            if isinstance(raw, bool) or not isinstance(raw, int | float) or raw < 0:
                raise DemandFormatError(f"{ns}/{pool}: {name} {raw!r} is not a count")
            nums.append(float(raw))
        prev = out.get((ns, pool), Demand())
        out[(ns, pool)] = Demand(
            prev.in_flight + nums[0], prev.queued + nums[1], prev.held + nums[2]
        )
    return out


def merge(docs: Sequence[dict[Key, Demand]]) -> dict[Key, Demand]:
    out: dict[Key, Demand] = {}
    for doc in docs:
        for key, d in doc.items():
            p = out.get(key, Demand())
            out[key] = Demand(p.in_flight + d.in_flight, p.queued + d.queued, p.held + d.held)
    return out


@dataclass
class Reading:
    pools: dict[Key, Demand]
    answered: int
    errors: list[str] = field(default_factory=list)

    def of(self, namespace: str, pool: str) -> Demand | None:
        """None when no router answered; zero demand when they did and left the pool out."""
        if self.answered == 0:
            return None
        return self.pools.get((namespace, pool), Demand())


class DemandReader(OwnedSession):
    """One /v1/demand round per `cache_seconds`, shared by every pool's tick. `resolve`,
    when given, says which routers to read each round (every replica behind a Service)."""

    def __init__(
        self,
        router_urls: Sequence[str],
        *,
        resolve: Callable[[], Awaitable[Sequence[str]]] | None = None,
        timeout_seconds: float = 1.0,
        cache_seconds: float = 0.5,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        super().__init__(session, timeout_seconds)
        self.router_urls = [u.rstrip("/") for u in router_urls]
        self.resolve = resolve
        self.cache_seconds = cache_seconds
        self._cached: tuple[float, asyncio.Task[Reading]] | None = None

    async def _one(self, url: str) -> dict[Key, Demand]:
        session = await self._get_session()
        async with session.get(f"{url}/v1/demand", timeout=self.timeout) as resp:
            if resp.status != 200:
                raise DemandFormatError(f"HTTP {resp.status}: {(await resp.text())[:200]}")
            return parse_demand(await resp.json(content_type=None))

    async def _fetch(self) -> Reading:
        urls = self.router_urls
        if self.resolve is not None:
            urls = [u.rstrip("/") for u in await self.resolve()]
        if not urls:
            return Reading({}, 0, ["no router URLs configured (--router-url)"])
        answers = await asyncio.gather(*(self._one(u) for u in urls), return_exceptions=True)
        docs, errors = [], []
        for url, answer in zip(urls, answers, strict=True):
            if isinstance(answer, BaseException):
                errors.append(f"{url}: {type(answer).__name__}: {answer}".rstrip(": "))
            else:
                docs.append(answer)
        return Reading(merge(docs), len(docs), errors)

    async def read(self) -> Reading:
        now = time.monotonic()
        if self._cached is not None and now - self._cached[0] <= self.cache_seconds:
            return await self._cached[1]
        task = asyncio.ensure_future(self._fetch())
        self._cached = (now, task)
        return await task
