"""Pure text formatting shared by the plugin's views: numbers, kubectl-style tables,
and the rows of a Canary's metrics, history and conditions."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def fmt_number(value: Any) -> str:
    """A metric value for people: '-' when absent, 4 significant digits otherwise."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:.4g}"
    return str(value)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A kubectl-style table: upper-case headers, columns padded with 3 spaces."""
    cells = [[str(h).upper() for h in headers]] + [
        ["" if c is None else str(c) for c in row] for row in rows
    ]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        padded = [c.ljust(w) for c, w in zip(row, widths, strict=True)]
        lines.append("   ".join(padded).rstrip())
    return "\n".join(lines)


def indent(text: str, prefix: str = "  ") -> str:
    return "\n".join(prefix + line if line else line for line in text.splitlines())


def step_label(current_step: int | None, steps: Sequence[int]) -> str:
    """'2/4' for index 1 of four steps; '-/4' before the first step."""
    n = len(steps)
    if current_step is None:
        return f"-/{n}"
    return f"{current_step + 1}/{n}"


def weight_label(weight: Any) -> str:
    return "-" if weight is None else f"{weight}%"


def metric_comparison(metric: dict[str, Any]) -> str:
    """'0.031 <= 0.05' style text: the candidate value against its effective limit."""
    value, threshold = metric.get("value"), metric.get("threshold")
    if value is None and threshold is None:
        return "-"
    if threshold is None:
        return fmt_number(value)
    if value is None:
        return f"- (limit {fmt_number(threshold)})"
    # Lower-is-better limits fail above, higher-is-better ones (min) below.
    above = (
        isinstance(value, int | float) and isinstance(threshold, int | float) and value > threshold
    )
    failed = metric.get("result") == "fail"
    op = {(True, True): ">", (True, False): "<", (False, True): ">=", (False, False): "<="}[
        (failed, above)
    ]
    return f"{fmt_number(value)} {op} {fmt_number(threshold)}"


def metric_samples(metric: dict[str, Any]) -> str:
    """'30/160': candidate / stable samples behind the result ('30' without a stable)."""
    cand, stable = metric.get("samples"), metric.get("stableSamples")
    if stable is None:
        return fmt_number(cand)
    return f"{fmt_number(cand)}/{fmt_number(stable)}"


def metric_p_value(metric: dict[str, Any]) -> str:
    p = metric.get("pValue")
    return f"{p:.2g}" if isinstance(p, int | float) and not isinstance(p, bool) else "-"


def metric_effect(metric: dict[str, Any]) -> str:
    """'P(worse) 0.89, x1.56': the effect size of a rank or proportion test and the ratio
    to stable (medians or rates); just the ratio for value checks."""
    parts = []
    worse = metric.get("worseProbability")
    if isinstance(worse, int | float) and not isinstance(worse, bool):
        parts.append(f"P(worse) {worse:.2f}")
    ratio = metric.get("ratio")
    if isinstance(ratio, int | float) and not isinstance(ratio, bool):
        parts.append(f"x{fmt_number(float(ratio))}" if math.isfinite(ratio) else "x inf")
    return ", ".join(parts) or "-"


METRICS_HEADERS = (
    "name",
    "result",
    "value vs limit",
    "stable",
    "method",
    "n cand/stable",
    "p",
    "effect",
    "message",
)
HISTORY_HEADERS = ("step", "weight", "result", "time", "checks")
CONDITIONS_HEADERS = ("type", "status", "reason", "last transition", "message")


def metrics_rows(metrics: Sequence[dict[str, Any]]) -> list[list[str]]:
    return [
        [
            str(m.get("name", "")),
            str(m.get("result", "")),
            metric_comparison(m),
            fmt_number(m.get("stableValue")),
            str(m.get("method") or "-"),
            metric_samples(m),
            metric_p_value(m),
            metric_effect(m),
            str(m.get("message", "")),
        ]
        for m in metrics
    ]


def _history_check(m: dict[str, Any]) -> str:
    """'errors=pass', or 'service-time=fail(p 2e-11)' for rank and proportion tests."""
    text = f"{m.get('name', '?')}={m.get('result', '?')}"
    p = metric_p_value(m)
    return text if p == "-" else f"{text}(p {p})"


def history_rows(history: Sequence[dict[str, Any]], steps: Sequence[int]) -> list[list[str]]:
    rows = []
    for rec in history:
        checks = " ".join(_history_check(m) for m in rec.get("metrics") or [])
        rows.append(
            [
                step_label(rec.get("step"), steps),
                weight_label(rec.get("weight")),
                str(rec.get("result", "")),
                str(rec.get("time", "")),
                checks,
            ]
        )
    return rows


def conditions_rows(conditions: Sequence[dict[str, Any]]) -> list[list[str]]:
    return [
        [
            str(c.get("type", "")),
            str(c.get("status", "")),
            str(c.get("reason", "")),
            str(c.get("lastTransitionTime", "")),
            str(c.get("message", "")),
        ]
        for c in conditions
    ]
