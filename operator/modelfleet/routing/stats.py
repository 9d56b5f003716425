"""Per-pool attempt statistics over a sliding window, for canary analysis without Prometheus.

One ring of per-second slots per (namespace, pool), one hour deep. Recording is O(1); a
query sums W slots. Latency is kept as histogram bucket counts (not percentiles) so the
answers of several routers merge exactly by adding them.

The workers' own service time per image is kept beside it, by batch size: batching makes
an image cheaper (x0.78 at batch 4 for the tiny CPU model, x0.4 on GPUs), and a pool's
batch sizes follow its load, so only images of equal batch size compare on equal footing.

Beside them, what the workers said the pool's answers cost (X-ModelFleet-Cost-USD) and
how many images its ok answers held: cost per image for canary analysis.
"""

from __future__ import annotations

import bisect
from array import array
from collections import Counter
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

# The worker's own time per image (X-ModelFleet-Service-Time: batch inference time over
# batch size), in seconds. Finer than LATENCY_BUCKETS and even on a log scale (Renard R20,
# x1.12 a bucket, 1 ms to 100 s): a rank test sees no difference inside one bucket, and
# the medians a ratio limit judges are interpolated inside one. With R10 (x1.26, wider
# than a 1.2 limit) a narrow distribution 5% slower that straddled a bound read as 1.21x.
_R20 = (
    "1", "1.12", "1.25", "1.4", "1.6", "1.8", "2", "2.24", "2.5", "2.8",
    "3.15", "3.55", "4", "4.5", "5", "5.6", "6.3", "7.1", "8", "9",
)  # fmt: skip
SERVICE_TIME_BUCKETS: tuple[float, ...] = (
    *(float(f"{m}e{e}") for e in range(-3, 2) for m in _R20),
    100.0,
)
SERVICE_TIME_HEADER = "X-ModelFleet-Service-Time"
BATCH_SIZE_HEADER = "X-ModelFleet-Batch-Size"
# The worker's verification summary per response (modelfleet_worker.server), counted per
# pool for the text canary metrics; the router never parses a body for them.
TEXT_VERIFIED_HEADER = "X-ModelFleet-Text-Verified"
TEXT_PASSED_HEADER = "X-ModelFleet-Text-Passed"
TEXT_ACCURACY_SUM_HEADER = "X-ModelFleet-Text-Accuracy-Sum"
# Accuracy sums are kept in the integer ring in millionths.
_ACC_SCALE = 1_000_000
# The worker's cost of one response in USD (brief contract 1: the total for the response).
COST_HEADER = "X-ModelFleet-Cost-USD"
# What the text gate's re-renders of a response cost beside it, USD (the router's, to the
# client): the key is charged both.
RERENDER_COST_HEADER = "X-ModelFleet-Rerender-Cost-USD"
# Costs are kept in the integer ring in pico-USD: a tiny CPU pool's image at a GPU-hour
# price costs micro-dollars, and integers add up exactly across routers.
_COST_SCALE = 1_000_000_000_000
# One response's cost beyond this is not believed (a broken header, not a bill).
MAX_RESPONSE_COST_USD = 1_000_000.0
# Batch-size strata: exact up to 4, then powers of two (maxBatchSize is at most 64).
BATCH_STRATA: tuple[tuple[int, str], ...] = (
    (1, "1"), (2, "2"), (3, "3"), (4, "4"), (8, "5-8"), (16, "9-16"), (32, "17-32"),
    (64, "33-64"),
)  # fmt: skip
# Service-time observations kept per pool: a window longer than the newest this many
# holds only them (plenty for a rank test); memory grows with traffic up to 10 B each.
SERVICE_LOG_CAPACITY = 1 << 16

# Slot layout: [second, requests, errors, bucket_0 .. bucket_n-1, overflow (+Inf only),
#               text verified, text passed, text accuracy sum (millionths),
#               cost (pico-USD), images]
_REQ, _ERR, _B0 = 1, 2, 3
# A service-time cell is stratum * _CELL + bucket (an unsigned 16-bit entry).
_CELL = 128


@dataclass(frozen=True)
class TextSummary:
    """One response's verification, as its worker's headers told it."""

    verified: int
    passed: int
    accuracy_sum: float

    @staticmethod
    def parse(verified: str | None, passed: str | None, acc_sum: str | None) -> TextSummary | None:
        """The headers' values when they are sane and consistent; else None (an old
        worker, a proxy in between): the attempt then adds no text sample."""
        if verified is None:
            return None
        try:
            v, p, a = int(verified), int(passed or ""), float(acc_sum or "")
        except ValueError:
            return None
        # 128 images is twice the largest batch; `not` also rejects a NaN sum.
        if not (0 < v <= 128 and 0 <= p <= v and 0.0 <= a <= v):
            return None
        return TextSummary(v, p, a)


def parse_cost(value: str | None) -> float | None:
    """The cost header's USD when it is a sane number; None otherwise (absent, an old
    worker, garbage): the attempt then adds no cost."""
    if value is None:
        return None
    try:
        v = float(value)
    except ValueError:
        return None
    if not 0.0 <= v <= MAX_RESPONSE_COST_USD:  # also rejects nan and inf
        return None
    return v


# Every image in an answer is one `"b64_json"` key; base64 has no quote character and a
# quote inside a JSON string is escaped, so the key cannot appear anywhere else.
_IMAGE_KEY = b'"b64_json"'


def response_images(body: bytes) -> int:
    """Images in a worker's OpenAI-shaped answer, counted without parsing it. Bodies are
    megabytes of base64, which holds no quote: hopping from quote to quote (memchr) skips
    each image in one step, 20x faster than bytes.count of the key (profiled)."""
    n = 0
    i = body.find(b'"')
    while i != -1:
        if body.startswith(_IMAGE_KEY, i):
            n += 1
        i = body.find(b'"', i + 1)
    return n


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
    # Service time per image by batch-size stratum name, non-cumulative like `buckets`;
    # only strata with observations.
    service: tuple[tuple[str, tuple[int, ...]], ...] = ()
    # Verified renders (OCR read and scored), how many passed, and their word accuracies'
    # sum: the text canary metrics (mean accuracy = sum / verified).
    text_verified: int = 0
    text_passed: int = 0
    text_accuracy_sum: float = 0.0
    # USD the workers reported for the pool's answers, and the images its ok answers held.
    cost_usd: float = 0.0
    images: int = 0

    def wire(
        self, bounds: Sequence[float], service_bounds: Sequence[float] = SERVICE_TIME_BUCKETS
    ) -> dict[str, Any]:
        out: dict[str, Any] = {
            "namespace": self.namespace,
            "pool": self.pool,
            "requests": self.requests,
            "errors": self.errors,
            "latency_buckets": _cumulative(bounds, self.buckets),
        }
        if self.text_verified:
            out["text"] = {
                "verified": self.text_verified,
                "passed": self.text_passed,
                "accuracy_sum": round(self.text_accuracy_sum, 6),
            }
        if self.images or self.cost_usd:
            out["cost"] = {"usd": round(self.cost_usd, 12), "images": self.images}
        if self.service:
            out["service_time"] = [
                {"batch_size": name, "buckets": _cumulative(service_bounds, counts)}
                for name, counts in self.service
            ]
        return out


def _cumulative(bounds: Sequence[float], counts: Sequence[int]) -> list[list[Any]]:
    """[[upper_bound, cumulative_count], ..., ["+Inf", total]], as Prometheus has them."""
    out: list[list[Any]] = []
    acc = 0
    for b, c in zip((*bounds, "+Inf"), counts, strict=True):
        acc += c
        out.append([b, acc])
    return out


def batch_stratum(batch_size: int) -> int:
    """Index into BATCH_STRATA; sizes beyond the last go into it."""
    for i, (upper, _) in enumerate(BATCH_STRATA):
        if batch_size <= upper:
            return i
    return len(BATCH_STRATA) - 1


class _Ring:
    """HORIZON_S slots of `width` counters in one flat array: compact, and invisible to the
    garbage collector (thousands of small lists per pool would lengthen every GC pause)."""

    __slots__ = ("counts", "width")

    def __init__(self, width: int) -> None:
        self.width = width
        self.counts = array("q", [0] * (width * HORIZON_S))
        for i in range(HORIZON_S):
            self.counts[i * width] = -1  # second -1: never written


class _ServiceLog:
    """Service-time observations in arrival order, in two flat arrays (second; stratum and
    bucket in one cell), a ring once full. An idle pool costs nothing; counting a window
    is a binary search plus a C-level Counter over the cells."""

    __slots__ = ("capacity", "cells", "head", "seconds")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.seconds = array("q")
        self.cells = array("H")
        self.head = 0  # oldest entry once full

    def add(self, sec: int, cell: int) -> None:
        n = len(self.seconds)
        if n and sec < self.seconds[self.head - 1]:
            sec = self.seconds[self.head - 1]  # keep the order bisect relies on
        if n < self.capacity:
            self.seconds.append(sec)
            self.cells.append(cell)
            self.head = (n + 1) % self.capacity
        else:
            self.seconds[self.head] = sec
            self.cells[self.head] = cell
            self.head = (self.head + 1) % self.capacity

    def count(self, start: int, end: int) -> Counter[int]:
        """Cells of the observations in seconds start..end."""
        n = len(self.seconds)
        if n == 0:
            return Counter()
        h = self.head if n == self.capacity else 0
        secs = self.seconds

        def at(i: int) -> int:  # logical index, oldest first
            return secs[(h + i) % n]

        lo = bisect.bisect_left(range(n), start, key=at)
        hi = bisect.bisect_right(range(n), end, key=at)
        out: Counter[int] = Counter()
        if lo >= hi:
            return out
        a, b = (h + lo) % n, (h + hi) % n
        if a < b:
            out.update(self.cells[a:b])
        else:  # wraps around the end of the arrays (or is all of them)
            out.update(self.cells[a:])
            out.update(self.cells[:b])
        return out


class AttemptStats:
    """Counts what counts for canary analysis:
    requests = attempts that reached a verdict on the pool's health: ok, upstream_error,
    timeout, connect_error (busy and client_error are neither the pool's success nor its
    failure); errors = upstream_error, timeout, connect_error; latency = ok attempts only;
    service time = ok attempts whose worker reported it; cost = what the workers reported
    for those attempts (a failed one may be billed too); images = those of ok answers."""

    def __init__(
        self,
        bounds: Sequence[float] = LATENCY_BUCKETS,
        service_bounds: Sequence[float] = SERVICE_TIME_BUCKETS,
        service_capacity: int = SERVICE_LOG_CAPACITY,
    ) -> None:
        self.bounds = tuple(bounds)
        self.service_bounds = tuple(service_bounds)
        self.service_capacity = service_capacity
        if len(self.service_bounds) >= _CELL:
            raise ValueError(f"at most {_CELL - 1} service-time buckets")
        self._text0 = _B0 + len(self.bounds) + 1
        self._cost0 = self._text0 + 3
        self._width = self._cost0 + 2
        self._rings: dict[tuple[str, str], _Ring] = {}
        self._service: dict[tuple[str, str], _ServiceLog] = {}

    def record(
        self,
        namespace: str,
        pool: str,
        outcome: Attempt,
        seconds: float,
        now: float,
        service_s: float | None = None,
        batch_size: int = 1,
        text: TextSummary | None = None,
    ) -> None:
        if outcome in (Attempt.BUSY, Attempt.CLIENT_ERROR):
            return
        c, base = self._slot(namespace, pool, now)
        c[base + _REQ] += 1
        if outcome in POOL_ERRORS:
            c[base + _ERR] += 1
        else:
            c[base + _B0 + _bucket_index(seconds, self.bounds)] += 1
            if text is not None and text.verified > 0:
                t = base + self._text0
                c[t] += text.verified
                c[t + 1] += text.passed
                c[t + 2] += round(text.accuracy_sum * _ACC_SCALE)
            if service_s is not None:
                log = self._service.get((namespace, pool))
                if log is None:
                    log = self._service[(namespace, pool)] = _ServiceLog(self.service_capacity)
                bucket = _bucket_index(service_s, self.service_bounds)
                log.add(int(now), batch_stratum(batch_size) * _CELL + bucket)

    def record_cost(
        self,
        namespace: str,
        pool: str,
        outcome: Attempt,
        now: float,
        usd: float | None,
        images: int,
    ) -> None:
        """The attempt's reported cost and, for an ok one, its images; the attempts that
        record() leaves out (busy, client_error) count here neither."""
        if outcome in (Attempt.BUSY, Attempt.CLIENT_ERROR):
            return
        if outcome is not Attempt.OK:
            images = 0
        pico = round(usd * _COST_SCALE) if usd is not None and usd > 0 else 0
        if pico <= 0 and images <= 0:
            return
        c, base = self._slot(namespace, pool, now)
        c[base + self._cost0] += pico
        c[base + self._cost0 + 1] += max(0, images)

    def _slot(self, namespace: str, pool: str, now: float) -> tuple[array[int], int]:
        """The pool's ring and the offset of the slot for second `now`, claimed for it."""
        ring = self._rings.get((namespace, pool))
        if ring is None:
            ring = self._rings[(namespace, pool)] = _Ring(self._width)
        sec = int(now)
        c, w = ring.counts, self._width
        base = (sec % HORIZON_S) * w
        if c[base] != sec:
            # A slot from an hour (or more) ago: reuse it for this second.
            c[base : base + w] = array("q", [sec] + [0] * (w - 1))
        return c, base

    def window(self, window_s: int, now: float) -> list[PoolWindow]:
        """Totals over the seconds (now - window_s, now], per pool, sorted."""
        window_s = max(1, min(window_s, HORIZON_S))
        end = int(now)
        start = end - window_s + 1
        out: list[PoolWindow] = []
        for (ns, pool), ring in sorted(self._rings.items()):
            totals = self._sum(ring, start, end)
            log = self._service.get((ns, pool))
            service = self._service_window(log, start, end) if log is not None else ()
            t, k = self._text0, self._cost0
            out.append(
                PoolWindow(
                    ns,
                    pool,
                    totals[_REQ],
                    totals[_ERR],
                    tuple(totals[_B0:t]),
                    service,
                    totals[t],
                    totals[t + 1],
                    totals[t + 2] / _ACC_SCALE,
                    totals[k] / _COST_SCALE,
                    totals[k + 1],
                )
            )
        return out

    def _service_window(
        self, log: _ServiceLog, start: int, end: int
    ) -> tuple[tuple[str, tuple[int, ...]], ...]:
        cells = log.count(start, end)
        width = len(self.service_bounds) + 1
        strata: dict[int, list[int]] = {}
        for cell, n in cells.items():
            stratum, bucket = divmod(cell, _CELL)
            strata.setdefault(stratum, [0] * width)[bucket] += n
        return tuple((BATCH_STRATA[k][1], tuple(v)) for k, v in sorted(strata.items()))

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
