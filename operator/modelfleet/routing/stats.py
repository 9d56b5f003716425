"""Per-pool attempt statistics over a sliding window, for canary analysis without Prometheus.

One ring of per-second slots per (namespace, pool), one hour deep. Recording is O(1); a
query sums W slots. Latency is kept as histogram bucket counts (not percentiles) so the
answers of several routers merge exactly by adding them."""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from modelfleet.routing.ladder import POOL_ERRORS, Attempt

# Upper bounds in seconds, shared by the upstream_duration histogram and /v1/stats.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0,
    4.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0,
)  # fmt: skip
HORIZON_S = 3600

# Slot layout: [second, requests, errors, bucket_0 .. bucket_n-1, overflow (+Inf only)]
_REQ, _ERR, _B0 = 1, 2, 3


def _bucket_index(seconds: float, bounds: Sequence[float]) -> int:
    for i, b in enumerate(bounds):
        if seconds <= b:
            return i
    return len(bounds)


@dataclass(frozen=True)
class PoolWindow:
    namespace: str
    pool: str
    requests: int
    errors: int
    # Non-cumulative counts per bucket, last one is +Inf.
    buckets: tuple[int, ...]

    def wire(self, bounds: Sequence[float]) -> dict[str, Any]:
        cumulative: list[list[Any]] = []
        acc = 0
        for b, c in zip((*bounds, "+Inf"), self.buckets, strict=True):
            acc += c
            cumulative.append([b, acc])
        return {
            "namespace": self.namespace,
            "pool": self.pool,
            "requests": self.requests,
            "errors": self.errors,
            "latency_buckets": cumulative,
        }


class _Ring:
    """HORIZON_S slots of `width` counters in one flat array: compact, and invisible to the
    garbage collector (thousands of small lists per pool would lengthen every GC pause)."""

    __slots__ = ("counts", "width")

    def __init__(self, width: int) -> None:
        self.width = width
        self.counts = array("q", [0] * (width * HORIZON_S))
        for i in range(HORIZON_S):
            self.counts[i * width] = -1  # second -1: never written


class AttemptStats:
    """Counts what counts for canary analysis:
    requests = attempts that reached a verdict on the pool's health: ok, upstream_error,
    timeout, connect_error (busy and client_error are neither the pool's success nor its
    failure); errors = upstream_error, timeout, connect_error; latency = ok attempts only."""

    def __init__(self, bounds: Sequence[float] = LATENCY_BUCKETS) -> None:
        self.bounds = tuple(bounds)
        self._width = _B0 + len(self.bounds) + 1
        self._rings: dict[tuple[str, str], _Ring] = {}

    def record(
        self, namespace: str, pool: str, outcome: Attempt, seconds: float, now: float
    ) -> None:
        if outcome in (Attempt.BUSY, Attempt.CLIENT_ERROR):
            return
        ring = self._rings.get((namespace, pool))
        if ring is None:
            ring = self._rings[(namespace, pool)] = _Ring(self._width)
        sec = int(now)
        c, w = ring.counts, self._width
        base = (sec % HORIZON_S) * w
        if c[base] != sec:
            # A slot from an hour (or more) ago: reuse it for this second.
            c[base : base + w] = array("q", [sec] + [0] * (w - 1))
        c[base + _REQ] += 1
        if outcome in POOL_ERRORS:
            c[base + _ERR] += 1
        else:
            c[base + _B0 + _bucket_index(seconds, self.bounds)] += 1

    def window(self, window_s: int, now: float) -> list[PoolWindow]:
        """Totals over the seconds (now - window_s, now], per pool, sorted."""
        window_s = max(1, min(window_s, HORIZON_S))
        end = int(now)
        start = end - window_s + 1
        out: list[PoolWindow] = []
        for (ns, pool), ring in sorted(self._rings.items()):
            totals = self._sum(ring, start, end)
            out.append(PoolWindow(ns, pool, totals[_REQ], totals[_ERR], tuple(totals[_B0:])))
        return out

    def _sum(self, ring: _Ring, start: int, end: int) -> list[int]:
        """Column sums over the slots of seconds start..end. This runs on the event loop, so
        the sums are C-level slice sums and only the per-slot second check is Python:
        a few milliseconds for a full hour."""
        c, w = ring.counts, self._width
        first, n = start % HORIZON_S, end - start + 1
        # Slot ranges covering the window, split where it wraps around the ring.
        spans = [(first, min(first + n, HORIZON_S))]
        if first + n > HORIZON_S:
            spans.append((0, first + n - HORIZON_S))
        seconds = c[0::w]
        for k, (a, b) in enumerate(spans):
            for j in range(a, b):
                expected = start + (j - first if k == 0 else HORIZON_S - first + j)
                if seconds[j] != expected:
                    # Never written or an hour old: claim it, empty, for the second the
                    # window expects there. Later records of that second add to it.
                    c[j * w : (j + 1) * w] = array("q", [expected] + [0] * (w - 1))
        totals = [0] * w
        for i in range(_REQ, w):
            col = c[i::w]
            totals[i] = sum(sum(col[a:b]) for a, b in spans)
        return totals
