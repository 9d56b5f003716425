"""Shadow verdicts for bench/canary_verdicts.py: the statistics judge the service time the
routers saw in each analysis' window (pooled over batch sizes, by batch size within the
window, by batch size against the stable's reference), beside the operator's verdicts."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from modelfleet.canary.statistics import Comparison, Histogram, Verdict, compare_strata

Strata = dict[str, Histogram]


@dataclass
class Window:
    """One analysis window as the routers saw it: service time by batch size per side."""

    step: int
    weight: int
    result: str
    candidate: Strata
    stable: Strata
    # The stable's samples from `lookback` seconds before the canary began until this
    # window's end: a reference that also has the batch sizes the stable runs rarely now.
    reference: Strata


@dataclass
class Shadow:
    """The statistics' verdicts on a run's windows, and where they would have ended it."""

    verdicts: list[Verdict]
    rolled_back_at: int | None  # window index, None when it never rolled back


def service_strata(doc: dict[str, Any], namespace: str, pool: str) -> Strata:
    for p in doc.get("pools", []):
        if p["namespace"] == namespace and p["pool"] == pool:
            return {
                s["batch_size"]: Histogram.from_cumulative(
                    [(math.inf if b == "+Inf" else float(b), float(c)) for b, c in s["buckets"]]
                )
                for s in p.get("service_time", [])
            }
    return {}


def shadow_judge(
    windows: list[Window], c: Comparison, failure_limit: int, pooled: bool, reference: bool
) -> Shadow:
    """Judge each window against the stable's same window (at 100%, with no stable
    traffic, its previous one) or, with `reference`, against the stable's reference."""
    verdicts: list[Verdict] = []
    streak = 0
    previous: Strata = {}
    for i, w in enumerate(windows):
        stable = w.stable if sum(h.total for h in w.stable.values()) > 0 else previous
        previous = stable
        if reference:
            stable = w.reference
        cand = _pool_strata(w.candidate) if pooled else w.candidate
        ref = _pool_strata(stable) if pooled else stable
        names = sorted(set(cand) | set(ref))
        empty = Histogram.from_cumulative([(math.inf, 0.0)])
        strata = []
        for n in names:
            a, b = cand.get(n), ref.get(n)
            like = a or b
            assert like is not None
            zero = Histogram(like.bounds, (0.0,) * len(like.counts))
            strata.append((n, a or zero, b or zero))
        v = compare_strata(strata or [("", empty, empty)], c)
        verdicts.append(v)
        streak = streak + 1 if v.result == "fail" else (0 if v.result == "pass" else streak)
        if streak >= failure_limit:
            return Shadow(verdicts, i)
    return Shadow(verdicts, None)


def _pool_strata(strata: Strata) -> Strata:
    hs = list(strata.values())
    if not hs:
        return {}
    counts = [math.fsum(col) for col in zip(*(h.counts for h in hs), strict=True)]
    return {"all": Histogram(hs[0].bounds, tuple(counts))}


def report_shadow(runs: list[Any], interval_s: float) -> None:
    """runs: canary_verdicts.Run (kind, name, windows, shadow)."""
    kinds = sorted({k for r in runs for k in r.shadow})
    if not kinds:
        return
    print("\nShadow verdicts on service time per image (p pass, F fail, i inconclusive):\n")
    print("| run | candidate | weights | " + " | ".join(kinds) + " |")
    print("|---|---|---|" + "---|" * len(kinds))
    for r in runs:
        cells = []
        for k in kinds:
            sh = r.shadow.get(k)
            if sh is None:
                cells.append("-")
                continue
            marks = "".join({"pass": "p", "fail": "F"}.get(v.result, "i") for v in sh.verdicts)
            end = f" RB@{sh.rolled_back_at + 1}" if sh.rolled_back_at is not None else ""
            cells.append(marks + end)
        weights = ",".join(str(w.weight) for w in r.windows)
        print(f"| {r.name} | {r.kind} | {weights} | " + " | ".join(cells) + " |")
    for k in kinds:
        same = [r for r in runs if r.kind == "identical" and k in r.shadow]
        slow = [r for r in runs if r.kind == "slower" and k in r.shadow]
        fr = sum(1 for r in same if r.shadow[k].rolled_back_at is not None)
        at = [x + 1 for r in slow if (x := r.shadow[k].rolled_back_at) is not None]
        within = sum(1 for a in at if a <= 2)
        print(
            f"\nshadow {k}: false rollbacks {fr}/{len(same)}; detected {len(at)}/{len(slow)}, "
            f"{within} within two intervals (analyses to verdict: {sorted(at)}; "
            f"about {interval_s:g} s each)"
        )
    examples = [
        (r, v)
        for r in runs
        for k in kinds[:1]
        for v in (r.shadow[k].verdicts if k in r.shadow else [])
    ]
    for kind in ("identical", "slower"):
        for r, v in [e for e in examples if e[0].kind == kind][:3]:
            print(f"  e.g. {r.name}: {v.result}: {v.message}")
