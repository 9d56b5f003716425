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
    op = "<=" if metric.get("result") != "fail" else ">"
    if value is None:
        return f"- (limit {fmt_number(threshold)})"
    return f"{fmt_number(value)} {op} {fmt_number(threshold)}"


METRICS_HEADERS = ("name", "result", "value vs limit", "stable", "samples", "message")
HISTORY_HEADERS = ("step", "weight", "result", "time", "checks")
CONDITIONS_HEADERS = ("type", "status", "reason", "last transition", "message")


def metrics_rows(metrics: Sequence[dict[str, Any]]) -> list[list[str]]:
    return [
        [
            str(m.get("name", "")),
            str(m.get("result", "")),
            metric_comparison(m),
            fmt_number(m.get("stableValue")),
            fmt_number(m.get("samples")),
            str(m.get("message", "")),
        ]
        for m in metrics
    ]


def history_rows(history: Sequence[dict[str, Any]], steps: Sequence[int]) -> list[list[str]]:
    rows = []
    for rec in history:
        checks = " ".join(
            f"{m.get('name', '?')}={m.get('result', '?')}" for m in rec.get("metrics") or []
        )
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
