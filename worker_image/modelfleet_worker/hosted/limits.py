"""Provider limits, pure: a token bucket for requestsPerMinute, the provider's own
rate-limit headers, and the cool-down after a provider 429 (so the adapter does not
hammer a provider that asked it to wait). Clocks are passed in."""

from __future__ import annotations

import email.utils
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


class TokenBucket:
    """`rate_per_minute` provider calls a minute, bursts up to `burst`.

    take(now, n) -> 0.0 when the n calls may go now, else the seconds until they may.
    A request split into n calls takes all n while one token is there, leaving the
    bucket in debt: the average rate holds, and a split request never starves."""

    def __init__(self, rate_per_minute: float, burst: int | None = None, now: float = 0.0) -> None:
        if rate_per_minute <= 0:
            raise ValueError("rate_per_minute must be > 0")
        self.rate = rate_per_minute / 60.0
        self.capacity = float(
            burst if burst is not None else max(1, math.ceil(rate_per_minute / 60))
        )
        self.tokens = self.capacity
        self.updated = now

    def _refill(self, now: float) -> None:
        if now > self.updated:
            self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
            self.updated = now

    def take(self, now: float, n: int = 1) -> float:
        self._refill(now)
        if self.tokens >= 1.0:
            self.tokens -= n
            return 0.0
        return (1.0 - self.tokens) / self.rate


def parse_duration(value: str) -> float | None:
    """OpenAI's x-ratelimit-reset-* values: '1s', '6m0s', '20ms', '1h2m3.5s'."""
    v = value.strip()
    if not v:
        return None
    try:
        return float(v)
    except ValueError:
        pass
    pos, total = 0, 0.0
    for m in _DURATION_PART.finditer(v):
        if m.start() != pos:
            return None
        num, unit = float(m.group(1)), m.group(2)
        total += num * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[unit]
        pos = m.end()
    return total if pos == len(v) and pos > 0 else None


def retry_after_s(headers: Mapping[str, str], now: float) -> float | None:
    """Seconds the provider asked us to wait: Retry-After (seconds or HTTP date),
    retry-after-ms, else the x-ratelimit-reset-* of an exhausted x-ratelimit-remaining-*."""
    h = {k.lower(): v for k, v in headers.items()}
    ms = h.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    ra = h.get("retry-after")
    if ra is not None:
        try:
            return max(0.0, float(ra))
        except ValueError:
            parsed = email.utils.parsedate_to_datetime(ra) if ra.strip() else None
            if parsed is not None:
                return max(0.0, parsed.timestamp() - now)
    return exhausted_wait(h)


def exhausted_wait(headers: Mapping[str, str]) -> float | None:
    """The longest x-ratelimit-reset-* among exhausted x-ratelimit-remaining-* (OpenAI
    sends them on every answer: a 200 with 0 requests left means wait before the next)."""
    h = {k.lower(): v for k, v in headers.items()}
    waits = []
    for kind in ("requests", "tokens"):
        remaining = h.get(f"x-ratelimit-remaining-{kind}")
        reset = h.get(f"x-ratelimit-reset-{kind}")
        if remaining is not None and reset is not None and remaining.strip() == "0":
            d = parse_duration(reset)
            if d is not None:
                waits.append(d)
    return max(waits) if waits else None


def retry_after_header(seconds: float) -> str:
    """Retry-After takes whole seconds; never 0 (0 invites an immediate retry)."""
    return str(max(1, math.ceil(seconds)))


@dataclass
class Cooldown:
    """After a provider 429 or quota exhaustion: no calls until `until` (monotonic for
    rate limits; the server keeps quota's wall-clock reset apart)."""

    until: float = 0.0

    def hold(self, now: float, seconds: float) -> None:
        self.until = max(self.until, now + seconds)

    def remaining(self, now: float) -> float:
        return max(0.0, self.until - now)
