"""`kubectl modelfleet`: inspect and steer Canaries and ModelPools from the command line.

Installed as the `kubectl-modelfleet` script, so `kubectl modelfleet ...` finds it on PATH
(kubectl's plugin discovery). Only the client side lives here: manual actions are
requested through the `modelfleet.io/action` annotation and `spec.paused`, and the
operator carries them out (see modelfleet.canary.manual and modelfleet.canary.core).

    kubectl modelfleet status CANARY [--watch] [-o json]
    kubectl modelfleet promote|abort|retry|resume|pause CANARY
    kubectl modelfleet pools [-A]
    kubectl modelfleet report CANARY --out FILE.html [--stable-url URL --candidate-url URL]

The report's side-by-side images are rendered by calling two workers directly
(--stable-url and --candidate-url, worker base URLs reachable from where the command runs,
e.g. through `kubectl port-forward`): the router has no way to force a request onto a
given pool, so going through it could not guarantee which pool drew which image.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import math
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from modelfleet import GROUP, VERSION
from modelfleet.canary.manual import ACTION_ANNOTATION, Verb, action_value

PROG = "kubectl modelfleet"
CANARIES = "canaries"
MODELPOOLS = "modelpools"
TERMINAL_PHASES = frozenset({"Succeeded", "RolledBack", "Failed"})
ACTIVE_PHASES = frozenset({"Pending", "Progressing", "Paused"})
SA_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
REQUEST_TIMEOUT = (10, 30)  # connect, read (seconds)

# The report's fixed prompts and seeds: the same four images every time, so two reports
# (or two pools) can be compared by eye.
REPORT_PROMPTS: tuple[tuple[str, int], ...] = (
    ("a red bicycle leaning against a brick wall, photo", 1),
    ("a lighthouse on a cliff at sunset, oil painting", 2),
    ("the word MODELFLEET written in neon letters", 3),
    ("a bowl of ramen seen from above, studio lighting", 4),
)
REPORT_IMAGE_SIZE = "64x64"
REPORT_IMAGE_STEPS = 2


class PluginError(Exception):
    """An error to print as one line and exit 1 with (never a traceback)."""


# --- pure formatting ------------------------------------------------------------------


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


def format_status(canary: dict[str, Any]) -> str:
    """The human view of one Canary: summary, metrics, history, conditions."""
    meta = canary.get("metadata") or {}
    spec = canary.get("spec") or {}
    st = canary.get("status") or {}
    steps = list(spec.get("steps") or [])
    phase = st.get("phase") or "Unknown (not yet seen by the operator)"
    if spec.get("paused"):
        phase += " (spec.paused=true)"
    lines = [
        f"Canary:     {meta.get('namespace', '')}/{meta.get('name', '')}",
        f"Phase:      {phase}",
        f"Step:       {step_label(st.get('currentStep'), steps)}  "
        f"(weights {', '.join(f'{s}%' for s in steps) or '-'})",
        f"Weight:     {weight_label(st.get('canaryWeight'))} to candidate",
        f"Stable:     {spec.get('stablePool', '')}",
        f"Candidate:  {spec.get('candidatePool', '')}",
        f"Route:      {spec.get('routingPolicy', '')}/{spec.get('route', '')}",
    ]
    if st.get("startedAt"):
        lines.append(f"Started:    {st['startedAt']}")
    if st.get("finishedAt"):
        lines.append(f"Finished:   {st['finishedAt']}")
    action = (meta.get("annotations") or {}).get(ACTION_ANNOTATION)
    if action:
        handled = "handled" if st.get("lastAction") == action else "pending"
        lines.append(f"Action:     {action} ({handled})")
    lines.append(f"Message:    {st.get('message') or '-'}")
    lines.append("")
    lines.append("Metrics (latest analysis):")
    metrics = st.get("metrics") or []
    if metrics:
        headers = ["name", "result", "value vs limit", "stable", "samples", "message"]
        lines.append(_indent(format_table(headers, metrics_rows(metrics))))
    else:
        lines.append("  (none yet)")
    lines.append("")
    lines.append("History:")
    history = st.get("history") or []
    if history:
        headers = ["step", "weight", "result", "time", "checks"]
        lines.append(_indent(format_table(headers, history_rows(history, steps))))
    else:
        lines.append("  (no analyses yet)")
    lines.append("")
    lines.append("Conditions:")
    conditions = st.get("conditions") or []
    if conditions:
        headers = ["type", "status", "reason", "last transition", "message"]
        lines.append(_indent(format_table(headers, conditions_rows(conditions))))
    else:
        lines.append("  (none)")
    return "\n".join(lines)


def _indent(text: str, prefix: str = "  ") -> str:
    return "\n".join(prefix + line if line else line for line in text.splitlines())


def status_json(canary: dict[str, Any]) -> dict[str, Any]:
    """The `-o json` view: the object as the API server returns it, minus managedFields."""
    meta = {k: v for k, v in (canary.get("metadata") or {}).items() if k != "managedFields"}
    return {**canary, "metadata": meta}


def gpu_label(gpu: dict[str, Any] | None) -> str:
    gpu = gpu or {}
    count = gpu.get("count", 1)
    if not count:
        return "0"
    return f"{count} x {gpu.get('product') or 'any'}"


def pool_gpus(pool: dict[str, Any]) -> int:
    """GPUs the pool requests: replicas x GPUs per pod."""
    spec = pool.get("spec") or {}
    replicas = int(spec.get("replicas", 1) or 0)
    count = int((spec.get("gpu") or {}).get("count", 1) or 0)
    return replicas * count


def model_label(model: dict[str, Any] | None) -> str:
    model = model or {}
    label = str(model.get("source", ""))
    if model.get("revision"):
        label += f"@{model['revision']}"
    return label


def format_pools(pools: Sequence[dict[str, Any]], all_namespaces: bool) -> str:
    headers = ["name", "ready/replicas", "phase", "gpu", "model"]
    if all_namespaces:
        headers = ["namespace", *headers]
    rows = []
    for p in sorted(
        pools,
        key=lambda p: (p["metadata"].get("namespace", ""), p["metadata"].get("name", "")),
    ):
        spec = p.get("spec") or {}
        st = p.get("status") or {}
        row = [
            p["metadata"].get("name", ""),
            f"{st.get('readyReplicas') or 0}/{spec.get('replicas', 1)}",
            st.get("phase") or "-",
            gpu_label(spec.get("gpu")),
            model_label(spec.get("model")),
        ]
        if all_namespaces:
            row.insert(0, p["metadata"].get("namespace", ""))
        rows.append(row)
    total = sum(pool_gpus(p) for p in pools)
    noun = "pool" if len(pools) == 1 else "pools"
    return f"{format_table(headers, rows)}\n\nTotal GPUs requested: {total} ({len(pools)} {noun})"


def new_request_id(now: float | None = None) -> str:
    """A fresh action id: Unix time in milliseconds."""
    return str(int((time.time() if now is None else now) * 1000))


def resume_needs_action(canary: dict[str, Any]) -> bool:
    """Does a resume need the `resume:<id>` annotation, not only spec.paused=false?

    Yes when the canary is Paused for lack of data: setting spec.paused to false does not
    continue it then (core._paused); only a resume (or retry) action does.
    """
    spec = canary.get("spec") or {}
    st = canary.get("status") or {}
    if st.get("phase") != "Paused":
        return False
    if not spec.get("paused"):
        return True
    limit = int((spec.get("analysis") or {}).get("inconclusiveLimit", 5))
    return int(st.get("inconclusiveChecks") or 0) >= limit


def action_hint(verb: str, canary: dict[str, Any]) -> str | None:
    """Why the operator is likely to ignore this request, or None (mirrors core._manual)."""
    phase = (canary.get("status") or {}).get("phase")
    if phase is None:
        return None
    if verb == "abort" and phase not in ACTIVE_PHASES:
        return f"the canary is {phase}; abort only acts on Pending, Progressing or Paused canaries"
    if verb == "promote" and phase not in ACTIVE_PHASES:
        extra = "" if phase == "Succeeded" else "; use retry first"
        return f"the canary is {phase}; promote only acts on active canaries{extra}"
    if verb == "retry" and phase not in ("RolledBack", "Failed", "Paused"):
        return f"the canary is {phase}; retry only acts on RolledBack, Failed or Paused canaries"
    if verb == "pause" and phase in TERMINAL_PHASES:
        return f"the canary is {phase}; pausing a finished canary has no effect"
    return None


# --- the HTML report ------------------------------------------------------------------


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _step_number(step: Any) -> str:
    return str(step + 1) if isinstance(step, int) else "-"


RESULT_COLORS = {"pass": "#2e7d32", "fail": "#c62828", "inconclusive": "#9e9e9e"}


def _x_positions(
    history: Sequence[dict[str, Any]], started_at: str | None
) -> tuple[list[float], str]:
    """x values for the history points: seconds since the start when every record has a
    parseable time, else the record index."""
    times = [parse_time(r.get("time")) for r in history]
    if history and all(t is not None for t in times):
        origin = parse_time(started_at) or min(t for t in times if t is not None)
        return [(t - origin).total_seconds() for t in times if t is not None], "seconds since start"
    return [float(i) for i in range(len(history))], "analysis #"


def svg_weight_timeline(
    history: Sequence[dict[str, Any]],
    started_at: str | None = None,
    width: int = 720,
    height: int = 240,
) -> str:
    """An inline SVG: candidate weight (step line) per analysis, points colored by result."""
    pad_l, pad_r, pad_t, pad_b = 48, 16, 16, 36
    w, h = width - pad_l - pad_r, height - pad_t - pad_b
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="canary weight timeline">',
        f'<rect x="{pad_l}" y="{pad_t}" width="{w}" height="{h}" fill="#fafafa" stroke="#ccc"/>',
    ]
    for pct in (0, 25, 50, 75, 100):
        y = pad_t + h - h * pct / 100
        out.append(
            f'<line x1="{pad_l}" y1="{y:.1f}" x2="{pad_l + w}" y2="{y:.1f}" stroke="#e0e0e0"/>'
            f'<text x="{pad_l - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end">{pct}%</text>'
        )
    if not history:
        out.append(
            f'<text x="{pad_l + w / 2}" y="{pad_t + h / 2}" font-size="13" '
            'text-anchor="middle">no analyses yet</text></svg>'
        )
        return "".join(out)
    xs, x_label = _x_positions(history, started_at)
    x_min, x_max = min(0.0, *xs), max(xs)
    span = (x_max - x_min) or 1.0

    def px(x: float) -> float:
        return pad_l + w * (x - x_min) / span

    def py(weight: float) -> float:
        return pad_t + h - h * max(0.0, min(100.0, weight)) / 100

    points: list[str] = []
    prev_y: float | None = None
    for x, rec in zip(xs, history, strict=True):
        y = py(float(rec.get("weight") or 0))
        if prev_y is not None:
            points.append(f"{px(x):.1f},{prev_y:.1f}")
        points.append(f"{px(x):.1f},{y:.1f}")
        prev_y = y
    out.append(
        f'<polyline points="{" ".join(points)}" fill="none" stroke="#1565c0" stroke-width="2"/>'
    )
    for x, rec in zip(xs, history, strict=True):
        result = str(rec.get("result", ""))
        color = RESULT_COLORS.get(result, "#000")
        title = html.escape(
            f"step {_step_number(rec.get('step'))} weight {rec.get('weight')}% "
            f"{result} at {rec.get('time', '')}"
        )
        out.append(
            f'<circle cx="{px(x):.1f}" cy="{py(float(rec.get("weight") or 0)):.1f}" r="5" '
            f'fill="{color}"><title>{title}</title></circle>'
        )
    out.append(
        f'<text x="{pad_l + w / 2}" y="{height - 8}" font-size="11" '
        f'text-anchor="middle">{html.escape(x_label)}</text>'
        f'<text x="{pad_l}" y="{height - 8}" font-size="11">{fmt_number(x_min)}</text>'
        f'<text x="{pad_l + w}" y="{height - 8}" font-size="11" '
        f'text-anchor="end">{fmt_number(x_max)}</text>'
    )
    out.append("</svg>")
    return "".join(out)


def metric_series(history: Sequence[dict[str, Any]]) -> dict[str, list[tuple[int, Any, Any]]]:
    """Per metric name: (history index, value, threshold) for each analysis that had it."""
    series: dict[str, list[tuple[int, Any, Any]]] = {}
    for i, rec in enumerate(history):
        for m in rec.get("metrics") or []:
            series.setdefault(str(m.get("name", "?")), []).append(
                (i, m.get("value"), m.get("threshold"))
            )
    return series


def svg_metric(
    name: str,
    points: Sequence[tuple[int, Any, Any]],
    n: int,
    width: int = 720,
    height: int = 160,
) -> str:
    """An inline SVG: one metric's value (dots and line) and limit (dashed) per analysis."""
    pad_l, pad_r, pad_t, pad_b = 64, 16, 22, 24
    w, h = width - pad_l - pad_r, height - pad_t - pad_b
    nums = [
        float(v)
        for _, value, limit in points
        for v in (value, limit)
        if isinstance(v, int | float) and math.isfinite(v)
    ]
    top = max(nums, default=1.0) * 1.1 or 1.0

    def px(i: int) -> float:
        return pad_l + (w * i / (n - 1) if n > 1 else w / 2)

    def py(v: float) -> float:
        return pad_t + h - h * v / top

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="metric {html.escape(name)}">',
        f'<rect x="{pad_l}" y="{pad_t}" width="{w}" height="{h}" fill="#fafafa" stroke="#ccc"/>',
        f'<text x="{pad_l}" y="14" font-size="12" font-weight="bold">{html.escape(name)}</text>',
        f'<text x="{pad_l - 6}" y="{pad_t + 4}" font-size="11" text-anchor="end">'
        f"{fmt_number(top)}</text>",
        f'<text x="{pad_l - 6}" y="{pad_t + h + 4}" font-size="11" text-anchor="end">0</text>',
    ]
    for key, style in (
        (1, 'stroke="#1565c0" stroke-width="2"'),
        (2, 'stroke="#c62828" stroke-dasharray="5,4"'),
    ):
        coords = [
            f"{px(p[0]):.1f},{py(float(p[key])):.1f}"
            for p in points
            if isinstance(p[key], int | float) and math.isfinite(p[key])
        ]
        if len(coords) > 1:
            out.append(f'<polyline points="{" ".join(coords)}" fill="none" {style}/>')
    for i, value, limit in points:
        if isinstance(value, int | float) and math.isfinite(value):
            tip = html.escape(f"analysis {i + 1}: {fmt_number(value)} (limit {fmt_number(limit)})")
            out.append(
                f'<circle cx="{px(i):.1f}" cy="{py(float(value)):.1f}" r="4" fill="#1565c0">'
                f"<title>{tip}</title></circle>"
            )
    out.append(
        f'<text x="{pad_l + w}" y="14" font-size="11" text-anchor="end">'
        "value (blue) vs limit (red, dashed)</text></svg>"
    )
    return "".join(out)


@dataclass(frozen=True)
class ImageResult:
    prompt: str
    seed: int
    png_b64: str | None = None
    error: str | None = None


def _html_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _image_cell(img: ImageResult) -> str:
    if img.png_b64:
        return (
            f'<img alt="{html.escape(img.prompt)}" width="192" height="192" '
            f'src="data:image/png;base64,{html.escape(img.png_b64)}">'
        )
    return f'<span class="err">{html.escape(img.error or "no image")}</span>'


def render_report(
    canary: dict[str, Any],
    images: Sequence[tuple[ImageResult, ImageResult]] | None = None,
    generated_at: str | None = None,
) -> str:
    """A self-contained HTML page: summary, timeline SVG, metric SVGs, tables, images."""
    meta = canary.get("metadata") or {}
    spec = canary.get("spec") or {}
    st = canary.get("status") or {}
    steps = list(spec.get("steps") or [])
    history = list(st.get("history") or [])
    name = f"{meta.get('namespace', '')}/{meta.get('name', '')}"
    phase = st.get("phase") or "Unknown"
    esc = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Canary {esc(name)}: {esc(phase)}</title>",
        "<style>body{font-family:system-ui,sans-serif;margin:2em;color:#222}"
        "table{border-collapse:collapse;margin:.5em 0 1.5em}"
        "td,th{border:1px solid #ddd;padding:4px 8px;text-align:left;font-size:13px}"
        "th{background:#f0f0f0}.phase{font-weight:bold}.err{color:#c62828}"
        ".Succeeded{color:#2e7d32}.RolledBack,.Failed{color:#c62828}"
        "figure{margin:0 0 1em}</style></head><body>",
        f"<h1>Canary {esc(name)}</h1>",
        f'<p>Final phase: <span class="phase {esc(phase)}">{esc(phase)}</span>'
        f" &middot; step {esc(step_label(st.get('currentStep'), steps))}"
        f" &middot; candidate weight {esc(weight_label(st.get('canaryWeight')))}</p>",
        f"<p>Message: {esc(st.get('message') or '-')}</p>",
        _html_table(
            ["field", "value"],
            [
                ["stable pool", spec.get("stablePool", "")],
                ["candidate pool", spec.get("candidatePool", "")],
                ["route", f"{spec.get('routingPolicy', '')}/{spec.get('route', '')}"],
                ["steps", ", ".join(f"{s}%" for s in steps)],
                ["interval", spec.get("interval", "")],
                ["started", st.get("startedAt") or "-"],
                ["finished", st.get("finishedAt") or "-"],
            ],
        ),
        "<h2>Timeline</h2>",
        f"<figure>{svg_weight_timeline(history, st.get('startedAt'))}</figure>",
    ]
    series = metric_series(history)
    if series:
        parts.append("<h2>Metrics per analysis</h2>")
        for metric_name, points in series.items():
            parts.append(f"<figure>{svg_metric(metric_name, points, len(history))}</figure>")
    parts.append("<h2>Latest analysis</h2>")
    metrics = st.get("metrics") or []
    parts.append(
        _html_table(
            ["name", "result", "value vs limit", "stable", "samples", "message"],
            metrics_rows(metrics),
        )
        if metrics
        else "<p>(none)</p>"
    )
    parts.append("<h2>History</h2>")
    parts.append(
        _html_table(["step", "weight", "result", "time", "checks"], history_rows(history, steps))
        if history
        else "<p>(no analyses)</p>"
    )
    conditions = st.get("conditions") or []
    if conditions:
        parts.append("<h2>Conditions</h2>")
        parts.append(
            _html_table(
                ["type", "status", "reason", "last transition", "message"],
                conditions_rows(conditions),
            )
        )
    if images:
        parts.append("<h2>Stable vs candidate</h2>")
        parts.append(
            f"<p>Same prompt and seed, {REPORT_IMAGE_SIZE}, {REPORT_IMAGE_STEPS} steps, "
            "requested from each pool's worker directly.</p>"
        )
        rows = "".join(
            f"<tr><td>{esc(s.prompt)}<br>seed {s.seed}</td>"
            f"<td>{_image_cell(s)}</td><td>{_image_cell(c)}</td></tr>"
            for s, c in images
        )
        parts.append(
            "<table><thead><tr><th>prompt</th>"
            f"<th>stable ({esc(str(spec.get('stablePool', '')))})</th>"
            f"<th>candidate ({esc(str(spec.get('candidatePool', '')))})</th>"
            f"</tr></thead><tbody>{rows}</tbody></table>"
        )
    generated = generated_at or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    parts.append(f"<p><small>Generated by {PROG} at {esc(generated)}.</small></p>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def generate_image(base_url: str, prompt: str, seed: int, timeout: float = 120.0) -> ImageResult:
    """One image from a worker's /v1/images/generations; errors become ImageResult.error."""
    url = base_url.rstrip("/") + "/v1/images/generations"
    body = json.dumps(
        {
            "prompt": prompt,
            "seed": seed,
            "size": REPORT_IMAGE_SIZE,
            "steps": REPORT_IMAGE_STEPS,
            "response_format": "b64_json",
        }
    ).encode()
    req = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            data = json.loads(resp.read())
        png = data["data"][0]["b64_json"]
        base64.b64decode(png, validate=True)
        return ImageResult(prompt, seed, png_b64=str(png))
    except urllib.error.HTTPError as exc:
        detail = exc.read()[:300].decode("utf-8", "replace")
        return ImageResult(prompt, seed, error=f"{url}: HTTP {exc.code}: {detail}")
    except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        return ImageResult(prompt, seed, error=f"{url}: {exc}")


# --- Kubernetes access ----------------------------------------------------------------


@dataclass
class Kube:
    api: Any  # kubernetes.client.ApiClient
    namespace: str
    host: str

    @property
    def custom(self) -> Any:
        from kubernetes import client as k8s

        return k8s.CustomObjectsApi(self.api)


def _context_namespace(kubeconfig: str | None, context: str | None) -> str | None:
    from kubernetes import config as k8s_config

    contexts, active = k8s_config.list_kube_config_contexts(config_file=kubeconfig)
    chosen = active
    if context:
        chosen = next((c for c in contexts or [] if c.get("name") == context), None)
    ns = ((chosen or {}).get("context") or {}).get("namespace")
    return str(ns) if ns else None


def connect(kubeconfig: str | None, context: str | None, namespace: str | None) -> Kube:
    """Client config from --kubeconfig, KUBECONFIG, ~/.kube/config, or in-cluster."""
    from kubernetes import client as k8s
    from kubernetes import config as k8s_config

    cfg = k8s.Configuration()
    kubeconfig = kubeconfig or None
    default_file = Path("~/.kube/config").expanduser()
    use_file = bool(kubeconfig or os.environ.get("KUBECONFIG") or default_file.exists())
    try:
        if use_file:
            k8s_config.load_kube_config(
                config_file=kubeconfig, context=context, client_configuration=cfg
            )
            ns = namespace or _context_namespace(kubeconfig, context) or "default"
        elif os.environ.get("KUBERNETES_SERVICE_HOST"):
            k8s_config.load_incluster_config(client_configuration=cfg)
            ns = namespace or (
                SA_NAMESPACE_FILE.read_text().strip() if SA_NAMESPACE_FILE.exists() else ""
            )
            ns = ns or "default"
        else:
            raise PluginError(
                "no Kubernetes configuration: pass --kubeconfig, set KUBECONFIG, "
                "create ~/.kube/config, or run inside a cluster"
            )
    except k8s_config.ConfigException as exc:
        raise PluginError(f"invalid Kubernetes configuration: {exc}") from exc
    except OSError as exc:
        raise PluginError(f"cannot read Kubernetes configuration: {exc}") from exc
    cfg.retries = 1
    return Kube(api=k8s.ApiClient(cfg), namespace=ns, host=str(cfg.host))


def _crd_installed(kube: Kube, plural: str) -> bool:
    from kubernetes.client.rest import ApiException

    try:
        resources = kube.custom.get_api_resources(GROUP, VERSION, _request_timeout=REQUEST_TIMEOUT)
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return any(r.name == plural for r in resources.resources or [])


def _crd_missing(plural: str) -> PluginError:
    return PluginError(
        f"the {plural}.{GROUP} CRD is not installed in this cluster "
        f"(no {GROUP}/{VERSION} {plural} resource); install the ModelFleet CRDs first"
    )


def _namespaces_with(kube: Kube, plural: str, name: str) -> list[str]:
    """Other namespaces holding an object of this name (empty when we may not list)."""
    from kubernetes.client.rest import ApiException

    try:
        found = kube.custom.list_cluster_custom_object(
            GROUP,
            VERSION,
            plural,
            field_selector=f"metadata.name={name}",
            _request_timeout=REQUEST_TIMEOUT,
        )
    except ApiException:
        return []
    return sorted({i["metadata"]["namespace"] for i in found.get("items", [])})


def get_canary(kube: Kube, name: str) -> dict[str, Any]:
    from kubernetes.client.rest import ApiException

    try:
        obj: dict[str, Any] = kube.custom.get_namespaced_custom_object(
            GROUP, VERSION, kube.namespace, CANARIES, name, _request_timeout=REQUEST_TIMEOUT
        )
        return obj
    except ApiException as exc:
        if exc.status != 404:
            raise
    if not _crd_installed(kube, CANARIES):
        raise _crd_missing(CANARIES)
    msg = f"canary {name!r} not found in namespace {kube.namespace!r}"
    elsewhere = [ns for ns in _namespaces_with(kube, CANARIES, name) if ns != kube.namespace]
    if elsewhere:
        msg += f"; found in namespace(s): {', '.join(elsewhere)} (use -n NAMESPACE)"
    raise PluginError(msg)


def patch_canary(kube: Kube, name: str, body: dict[str, Any]) -> dict[str, Any]:
    obj: dict[str, Any] = kube.custom.patch_namespaced_custom_object(
        GROUP, VERSION, kube.namespace, CANARIES, name, body, _request_timeout=REQUEST_TIMEOUT
    )
    return obj


# --- commands -------------------------------------------------------------------------


def cmd_status(kube: Kube, args: argparse.Namespace) -> int:
    def render(obj: dict[str, Any]) -> str:
        if args.output == "json":
            return json.dumps(status_json(obj), indent=None if args.watch else 2, sort_keys=True)
        return format_status(obj)

    obj = get_canary(kube, args.canary)
    text = render(obj)
    print(text, flush=True)
    if not args.watch:
        return 0
    try:
        while (obj.get("status") or {}).get("phase") not in TERMINAL_PHASES:
            time.sleep(args.interval)
            obj = get_canary(kube, args.canary)
            new = render(obj)
            if new != text:
                text = new
                if args.output != "json":
                    stamp = datetime.now(UTC).strftime("%H:%M:%S")
                    print(f"\n--- {stamp} " + "-" * 60)
                print(text, flush=True)
    except KeyboardInterrupt:
        return 130
    return 0


def cmd_action(kube: Kube, args: argparse.Namespace) -> int:
    verb: str = args.command
    name: str = args.canary
    obj = get_canary(kube, name)
    where = f"canary {kube.namespace}/{name}"
    hint = action_hint(verb, obj)
    if verb == "pause":
        patch_canary(kube, name, {"spec": {"paused": True}})
        print(f"{where}: set spec.paused=true (the operator holds the current weight)")
    elif verb == "resume":
        body: dict[str, Any] = {"spec": {"paused": False}}
        value: str | None = None
        if resume_needs_action(obj):
            value = action_value("resume", new_request_id())
            body["metadata"] = {"annotations": {ACTION_ANNOTATION: value}}
        patch_canary(kube, name, body)
        print(f"{where}: set spec.paused=false")
        if value:
            print(f"{where}: requested resume ({ACTION_ANNOTATION}={value})")
        elif (obj.get("status") or {}).get("phase") != "Paused":
            phase = (obj.get("status") or {}).get("phase") or "not yet reconciled"
            print(f"note: the canary is {phase}, not Paused; nothing else to resume")
    else:
        action_verb: Verb
        if verb == "abort":
            action_verb = "abort"
        elif verb == "promote":
            action_verb = "promote"
        else:
            action_verb = "retry"
        value = action_value(action_verb, new_request_id())
        patch_canary(kube, name, {"metadata": {"annotations": {ACTION_ANNOTATION: value}}})
        print(f"{where}: requested {verb} ({ACTION_ANNOTATION}={value})")
        print(f"follow it with: {PROG} status {name} -n {kube.namespace} --watch")
    if hint:
        print(f"note: {hint}; the operator will likely ignore this request")
    return 0


def cmd_pools(kube: Kube, args: argparse.Namespace) -> int:
    from kubernetes.client.rest import ApiException

    try:
        if args.all_namespaces:
            res = kube.custom.list_cluster_custom_object(
                GROUP, VERSION, MODELPOOLS, _request_timeout=REQUEST_TIMEOUT
            )
        else:
            res = kube.custom.list_namespaced_custom_object(
                GROUP, VERSION, kube.namespace, MODELPOOLS, _request_timeout=REQUEST_TIMEOUT
            )
    except ApiException as exc:
        if exc.status == 404 and not _crd_installed(kube, MODELPOOLS):
            raise _crd_missing(MODELPOOLS) from exc
        raise
    pools = res.get("items", [])
    if not pools:
        where = "any namespace" if args.all_namespaces else f"namespace {kube.namespace!r}"
        print(f"no ModelPools in {where}")
        return 0
    print(format_pools(pools, args.all_namespaces))
    return 0


def cmd_report(kube: Kube, args: argparse.Namespace) -> int:
    if bool(args.stable_url) != bool(args.candidate_url):
        raise PluginError("--stable-url and --candidate-url go together: give both or neither")
    obj = get_canary(kube, args.canary)
    images: list[tuple[ImageResult, ImageResult]] | None = None
    if args.stable_url:
        images = []
        for prompt, seed in REPORT_PROMPTS:
            pair = (
                generate_image(args.stable_url, prompt, seed, args.image_timeout),
                generate_image(args.candidate_url, prompt, seed, args.image_timeout),
            )
            for img in pair:
                if img.error:
                    print(f"warning: {img.error}", file=sys.stderr)
            images.append(pair)
    out = Path(args.out)
    try:
        out.write_text(render_report(obj, images), encoding="utf-8")
    except OSError as exc:
        raise PluginError(f"cannot write {out}: {exc}") from exc
    phase = (obj.get("status") or {}).get("phase") or "Unknown"
    print(f"wrote {out} (canary {kube.namespace}/{args.canary}, phase {phase})")
    return 0


def _connection_flags(default: Any) -> argparse.ArgumentParser:
    flags = argparse.ArgumentParser(add_help=False)
    flags.add_argument(
        "--kubeconfig",
        default=default,
        help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config, else in-cluster)",
    )
    flags.add_argument("--context", default=default, help="kubeconfig context")
    flags.add_argument(
        "-n",
        "--namespace",
        default=default,
        help="namespace (default: the context's namespace, else 'default')",
    )
    return flags


def build_parser() -> argparse.ArgumentParser:
    # The flags work before and after the subcommand; the subcommand's copy must not
    # overwrite a value given before it with its default, hence SUPPRESS there.
    common = _connection_flags(argparse.SUPPRESS)
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Inspect and steer ModelFleet Canaries and ModelPools.",
        parents=[_connection_flags(None)],
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("status", parents=[common], help="show a canary's progress")
    p.add_argument("canary")
    p.add_argument("-w", "--watch", action="store_true", help="re-print on change until done")
    p.add_argument("-o", "--output", choices=["text", "json"], default="text")
    p.add_argument("--interval", type=float, default=1.0, help=argparse.SUPPRESS)
    p.set_defaults(handler=cmd_status)

    helps = {
        "promote": "skip the remaining steps and send all traffic to the candidate",
        "abort": "roll back: candidate weight 0",
        "retry": "start a RolledBack, Failed or Paused canary again from step 1",
        "resume": "set spec.paused=false (and request resume if paused for lack of data)",
        "pause": "set spec.paused=true: hold the current weight",
    }
    for verb, text in helps.items():
        p = sub.add_parser(verb, parents=[common], help=text, description=text)
        p.add_argument("canary")
        p.set_defaults(handler=cmd_action)

    p = sub.add_parser("pools", parents=[common], help="list ModelPools and GPUs requested")
    p.add_argument("-A", "--all-namespaces", action="store_true")
    p.set_defaults(handler=cmd_pools)

    p = sub.add_parser(
        "report",
        parents=[common],
        help="write a self-contained HTML report of a canary",
        description="Write a self-contained HTML report: timeline, metrics, final phase. "
        "With --stable-url and --candidate-url (worker base URLs, e.g. from kubectl "
        "port-forward), also four fixed prompts with fixed seeds rendered by each pool "
        "side by side; the router cannot pin a request to a pool, so workers are called "
        "directly.",
    )
    p.add_argument("canary")
    p.add_argument("--out", required=True, help="HTML file to write")
    p.add_argument("--stable-url", help="a stable pool worker's base URL")
    p.add_argument("--candidate-url", help="a candidate pool worker's base URL")
    p.add_argument("--image-timeout", type=float, default=120.0, help=argparse.SUPPRESS)
    p.set_defaults(handler=cmd_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[Kube, argparse.Namespace], int] = args.handler
    try:
        return _run(handler, args)
    except PluginError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _run(handler: Callable[[Kube, argparse.Namespace], int], args: argparse.Namespace) -> int:
    import urllib3
    from kubernetes.client.rest import ApiException

    kube: Kube | None = None
    try:
        kube = connect(args.kubeconfig, args.context, args.namespace)
        return handler(kube, args)
    except ApiException as exc:
        from modelfleet.controllers.kube import api_message

        if exc.status in (401, 403):
            raise PluginError(f"not allowed: {api_message(exc)}") from exc
        raise PluginError(f"Kubernetes API error (HTTP {exc.status}): {api_message(exc)}") from exc
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        host = kube.host if kube else "(unknown)"
        raise PluginError(f"cannot reach the Kubernetes API server at {host}: {reason}") from exc
    except PluginError:
        raise
    except Exception as exc:
        if os.environ.get("MODELFLEET_DEBUG"):
            raise
        raise PluginError(
            f"unexpected {type(exc).__name__}: {exc} (set MODELFLEET_DEBUG=1 for the traceback)"
        ) from exc
    finally:
        if kube is not None:
            kube.api.close()


if __name__ == "__main__":
    sys.exit(main())
