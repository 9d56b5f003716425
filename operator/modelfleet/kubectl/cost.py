"""Cost per image of the stable and the candidate, read off a Canary's cost-per-image
check (status.metrics, else the newest history record that judged it), for the plugin's
status and report. Pure: the Canary object as the API server returns it in, text out."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from modelfleet.api.canary import COST_METRICS
from modelfleet.kubectl.formatting import fmt_number, step_label, weight_label

NO_CHECK = "- (no cost-per-image check in spec.analysis.metrics)"
COST_HEADERS = ("step", "weight", "result", "stable $/image", "candidate $/image", "ratio")


@dataclass(frozen=True)
class CostView:
    """One analysis' cost per image (USD) of both pools; None where not measured."""

    check: str
    stable: float | None
    candidate: float | None
    stable_images: int | None
    candidate_images: int | None

    @property
    def ratio(self) -> float | None:
        if self.stable is None or self.candidate is None or self.stable <= 0:
            return None
        return self.candidate / self.stable


def cost_checks(canary: dict[str, Any]) -> list[str]:
    """The names of the Canary's cost-per-image checks, in spec order."""
    analysis = (canary.get("spec") or {}).get("analysis") or {}
    return [
        str(m.get("name", ""))
        for m in analysis.get("metrics") or []
        if isinstance(m, dict) and m.get("builtin") in COST_METRICS
    ]


def _num(v: Any) -> float | None:
    ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    return float(v) if ok else None


def _count(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _view(check: str, m: dict[str, Any]) -> CostView:
    return CostView(
        check,
        _num(m.get("stableValue")),
        _num(m.get("value")),
        _count(m.get("stableSamples")),
        _count(m.get("samples")),
    )


def cost_view(canary: dict[str, Any]) -> CostView | None:
    """Each pool's cost per image from the newest analysis that measured it (at the 100%
    step the stable makes no images, so its value comes from an earlier step); None
    without a cost-per-image check or before either pool was measured."""
    names = cost_checks(canary)
    if not names:
        return None
    check = names[0]
    st = canary.get("status") or {}
    records = [st.get("metrics") or []] + [
        r.get("metrics") or [] for r in reversed(st.get("history") or [])
    ]
    found = [
        _view(check, m)
        for ms in records
        for m in ms
        if isinstance(m, dict) and m.get("name") == check
    ]
    cand = next((v for v in found if v.candidate is not None), None)
    stable = next((v for v in found if v.stable is not None), None)
    if cand is None and stable is None:
        return None
    return CostView(
        check,
        stable.stable if stable is not None else None,
        cand.candidate if cand is not None else None,
        stable.stable_images if stable is not None else None,
        cand.candidate_images if cand is not None else None,
    )


def usd(value: float | None) -> str:
    return "-" if value is None else f"${fmt_number(value)}"


def _side(value: float | None, images: int | None) -> str:
    return usd(value) + (f" ({images} images)" if images is not None else "")


def cost_line(canary: dict[str, Any]) -> str:
    """'stable $0.04 (120 images), candidate $0.03 (40 images), x0.75' for status."""
    if not cost_checks(canary):
        return NO_CHECK
    v = cost_view(canary)
    if v is None:
        return "- (not measured yet)"
    ratio = f", x{fmt_number(v.ratio)}" if v.ratio is not None else ""
    return (
        f"stable {_side(v.stable, v.stable_images)}, "
        f"candidate {_side(v.candidate, v.candidate_images)}{ratio}"
    )


def cost_rows(canary: dict[str, Any]) -> list[list[str]]:
    """Per analysis that judged the cost check: step, weight, result, both pools' cost
    per image and their ratio (the report's table)."""
    names = cost_checks(canary)
    if not names:
        return []
    check = names[0]
    steps: Sequence[int] = (canary.get("spec") or {}).get("steps") or []
    rows: list[list[str]] = []
    for rec in (canary.get("status") or {}).get("history") or []:
        for m in rec.get("metrics") or []:
            if isinstance(m, dict) and m.get("name") == check:
                v = _view(check, m)
                rows.append(
                    [
                        step_label(rec.get("step"), steps),
                        weight_label(rec.get("weight")),
                        str(m.get("result", "")),
                        usd(v.stable),
                        usd(v.candidate),
                        f"x{fmt_number(v.ratio)}" if v.ratio is not None else "-",
                    ]
                )
    return rows
