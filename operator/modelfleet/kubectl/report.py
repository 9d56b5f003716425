"""`kubectl modelfleet report CANARY --out FILE.html`: a self-contained HTML report of a
canary: summary, weight timeline and per-metric SVGs, tables, and optionally the stable
and candidate renders of the same prompts and seeds side by side, each with the text its
worker's OCR read, word accuracy and passed (report_pairs.py).

The renders are requested from one worker of each pool directly (renders.py): worker base
URLs given with --stable-url and --candidate-url (e.g. through `kubectl port-forward`), or
found with --from-pools in the pools' EndpointSlices. The router has no way for a user to
force a request onto a given pool, so going through it could not guarantee which pool drew
which image.
"""

from __future__ import annotations

import argparse
import base64
import html
import math
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from modelfleet.api.common import parse_time
from modelfleet.kubectl import PROG
from modelfleet.kubectl.client import ImageResult, Kube, PluginError, get_canary
from modelfleet.kubectl.cost import COST_HEADERS, cost_checks, cost_line, cost_rows
from modelfleet.kubectl.formatting import (
    CONDITIONS_HEADERS,
    HISTORY_HEADERS,
    METRICS_HEADERS,
    conditions_rows,
    fmt_number,
    history_rows,
    metrics_rows,
    step_label,
    weight_label,
)
from modelfleet.kubectl.renders import (
    ReportPrompt,
    Target,
    pairs_from,
    pool_worker_url,
    replay_prompts,
)
from modelfleet.kubectl.report_pairs import (
    PAIRS_CSS,
    PoolRender,
    RenderPair,
    pairs_html,
    replay_html,
    text_verdict,
)

# The report's fixed prompts and seeds: the same four images every time, so two reports
# (or two pools) can be compared by eye.
REPORT_PROMPTS: tuple[tuple[str, int], ...] = (
    ("a red bicycle leaning against a brick wall, photo", 1),
    ("a lighthouse on a cliff at sunset, oil painting", 2),
    ('the word "MODELFLEET" written in neon letters', 3),
    ("a bowl of ramen seen from above, studio lighting", 4),
)
REPORT_IMAGE_SIZE = "64x64"
REPORT_IMAGE_STEPS = 2


def _parse_time(text: str | None) -> datetime | None:
    """Lenient: None when absent or unparseable (the timeline then plots by index)."""
    if not text:
        return None
    try:
        return parse_time(text)
    except ValueError:
        return None


def _step_number(step: Any) -> str:
    return str(step + 1) if isinstance(step, int) else "-"


RESULT_COLORS = {"pass": "#2e7d32", "fail": "#c62828", "inconclusive": "#9e9e9e"}


def _x_positions(
    history: Sequence[dict[str, Any]], started_at: str | None
) -> tuple[list[float], str]:
    """x values for the history points: seconds since the start when every record has a
    parseable time, else the record index."""
    times = [_parse_time(r.get("time")) for r in history]
    if history and all(t is not None for t in times):
        origin = _parse_time(started_at) or min(t for t in times if t is not None)
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


def _html_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _legacy_pair(pair: tuple[ImageResult, ImageResult], pools: tuple[str, str]) -> RenderPair:
    """(stable, candidate) ImageResults, the report's older input, as a RenderPair."""

    def one(img: ImageResult, pool: str) -> PoolRender:
        if not img.png_b64:
            return PoolRender(pool, error=img.error or "no image")
        return PoolRender(pool, image=base64.b64decode(img.png_b64))

    s, c = pair
    return RenderPair(s.prompt, s.seed, one(s, pools[0]), one(c, pools[1]))


def render_report(
    canary: dict[str, Any],
    images: Sequence[tuple[ImageResult, ImageResult]] | None = None,
    generated_at: str | None = None,
    pairs: Sequence[RenderPair] | None = None,
    pairs_source: str = "requested from each pool's worker directly",
) -> str:
    """A self-contained HTML page: summary, timeline SVG, metric SVGs, tables, and the
    side-by-side renders (`pairs`; `images` is the older form without verification)."""
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
        "figure{margin:0 0 1em}" + PAIRS_CSS + "</style></head><body>",
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
                *([["cost per image", cost_line(canary)]] if cost_checks(canary) else []),
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
            METRICS_HEADERS,
            metrics_rows(metrics),
        )
        if metrics
        else "<p>(none)</p>"
    )
    cost = cost_rows(canary)
    if cost:
        parts.append("<h2>Cost per image (USD)</h2>")
        parts.append(_html_table(COST_HEADERS, cost))
    parts.append("<h2>History</h2>")
    parts.append(
        _html_table(HISTORY_HEADERS, history_rows(history, steps))
        if history
        else "<p>(no analyses)</p>"
    )
    conditions = st.get("conditions") or []
    if conditions:
        parts.append("<h2>Conditions</h2>")
        parts.append(
            _html_table(
                CONDITIONS_HEADERS,
                conditions_rows(conditions),
            )
        )
    stable_pool = str(spec.get("stablePool", ""))
    candidate_pool = str(spec.get("candidatePool", ""))
    if images and not pairs:
        pairs = [_legacy_pair(pair, (stable_pool, candidate_pool)) for pair in images]
    replay = st.get("replay") or {}
    parts.append(replay_html(replay))
    if pairs:
        recorded = replay.get("renders") or []
        parts.append(pairs_html(pairs, stable_pool, candidate_pool, pairs_source, recorded))
    generated = generated_at or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    parts.append(f"<p><small>Generated by {PROG} at {esc(generated)}.</small></p>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def report_prompts(prompts: Sequence[str], seeds: Sequence[int]) -> list[ReportPrompt]:
    """The side-by-side prompts: the fixed four, or the given ones; with seeds given,
    every prompt with every seed, else prompt N with seed N (from 1)."""
    chosen = list(prompts) or [prompt for prompt, _ in REPORT_PROMPTS]
    if seeds:
        return [ReportPrompt(prompt, seed) for prompt in chosen for seed in seeds]
    if not prompts:
        return [ReportPrompt(prompt, seed) for prompt, seed in REPORT_PROMPTS]
    return [ReportPrompt(prompt, n) for n, prompt in enumerate(chosen, start=1)]


def _verdict_text(r: PoolRender) -> str:
    v = text_verdict(r)
    if v.status == "error":
        return "error"
    if v.status == "not verified" or v.word_accuracy is None:
        return v.status
    return f"read {v.read!r} word accuracy {fmt_number(v.word_accuracy)} {v.status}"


def pair_line(pair: RenderPair) -> str:
    """One line per pair for the terminal: what each pool's render was read as."""
    return (
        f"  {pair.prompt!r} seed {pair.seed}: stable {_verdict_text(pair.stable)} | "
        f"candidate {_verdict_text(pair.candidate)}"
    )


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Register `report` (main.py calls this, so the flags live with the command)."""
    p = sub.add_parser(
        "report",
        parents=[common],
        help="write a self-contained HTML report of a canary",
        description="Write a self-contained HTML report: timeline, metrics, final phase, "
        "the pre-flight replay's scores. With a render source, also prompts with fixed seeds "
        "rendered by each pool side by side, with the text each worker's OCR read, word "
        "accuracy and passed: the canary's golden prompts when it has spec.replay (those "
        "the replay recorded), else --prompt or four fixed ones. Sources: --router-url with "
        "--operator-token-file (the operator's pool pin, as the replay renders), "
        "--stable-url and --candidate-url (worker base URLs, e.g. from kubectl "
        "port-forward), or --from-pools (a ready worker of each pool, from its "
        "EndpointSlices, where pod IPs are reachable).",
    )
    p.add_argument("canary")
    p.add_argument("--out", "--html", dest="out", required=True, help="HTML file to write")
    p.add_argument("--router-url", help="a router's base URL, for pool-pinned renders")
    p.add_argument(
        "--operator-token-file",
        metavar="FILE",
        help="the operator's credential (the Secret key the router reads), for --router-url",
    )
    p.add_argument("--stable-url", help="a stable pool worker's base URL")
    p.add_argument("--candidate-url", help="a candidate pool worker's base URL")
    p.add_argument(
        "--from-pools",
        action="store_true",
        help="call a ready worker of each pool, found in the pools' EndpointSlices",
    )
    p.add_argument(
        "--prompt",
        action="append",
        default=[],
        help="a prompt for the side-by-side renders (repeat); quoted spans are the expected "
        "text, e.g. 'a sign that says \"OPEN\"'",
    )
    p.add_argument(
        "--seed", action="append", type=int, default=[], help="render every prompt with it (repeat)"
    )
    p.add_argument(
        "--size",
        help=f"WIDTHxHEIGHT of the renders (default {REPORT_IMAGE_SIZE}; golden prompts: "
        "their own, else the pool's)",
    )
    p.add_argument(
        "--steps",
        type=int,
        help=f"denoising steps (default {REPORT_IMAGE_STEPS}; golden prompts: the pool's)",
    )
    p.add_argument("--image-timeout", type=float, default=120.0, help=argparse.SUPPRESS)
    p.set_defaults(handler=cmd_report)


def _sources_given(args: argparse.Namespace) -> list[str]:
    given = []
    if args.router_url or args.operator_token_file:
        given.append("--router-url")
    if args.stable_url or args.candidate_url:
        given.append("--stable-url")
    if args.from_pools:
        given.append("--from-pools")
    return given


def check_sources(args: argparse.Namespace) -> None:
    """At most one render source, complete."""
    if bool(args.stable_url) != bool(args.candidate_url):
        raise PluginError("--stable-url and --candidate-url go together: give both or neither")
    if bool(args.router_url) != bool(args.operator_token_file):
        raise PluginError(
            "--router-url and --operator-token-file go together: only the operator's "
            "credential may pin a pool"
        )
    given = _sources_given(args)
    if len(given) > 1:
        raise PluginError(f"choose one render source: {' or '.join(given)}")


def _targets(
    kube: Kube, args: argparse.Namespace, spec: dict[str, Any]
) -> tuple[Target, Target, str] | None:
    stable, candidate = str(spec.get("stablePool", "")), str(spec.get("candidatePool", ""))
    if args.router_url:
        try:
            token = Path(args.operator_token_file).read_text().strip()
        except OSError as exc:
            raise PluginError(f"--operator-token-file: cannot read it: {exc.strerror}") from exc
        if not token:
            raise PluginError("--operator-token-file: the file is empty")
        policy = f"{kube.namespace}/{spec.get('routingPolicy', '')}"
        return (
            Target.pinned(stable, args.router_url, policy, token),
            Target.pinned(candidate, args.router_url, policy, token),
            f"rendered through the router at {args.router_url} with the pool pinned",
        )
    if args.from_pools:
        urls = (pool_worker_url(kube, stable), pool_worker_url(kube, candidate))
        where = "requested from a ready worker of each pool directly"
    elif args.stable_url:
        urls = (args.stable_url, args.candidate_url)
        where = "requested from each pool's worker directly"
    else:
        return None
    return Target(stable, urls[0]), Target(candidate, urls[1]), where


def cmd_report(kube: Kube, args: argparse.Namespace) -> int:
    check_sources(args)
    obj = get_canary(kube, args.canary)
    spec = obj.get("spec") or {}
    pairs: list[RenderPair] | None = None
    source = ""
    targets = _targets(kube, args, spec)
    if targets is not None:
        stable, candidate, where = targets
        golden = None if args.prompt else replay_prompts(kube, obj)
        if golden is not None:
            size, steps = args.size, args.steps
            prompts = [
                ReportPrompt(p.prompt, s, p.text, p.size, p.line)
                for p in golden
                for s in (args.seed or [p.seed])
            ]
            what = "the golden prompts of spec.replay"
        else:
            size, steps = args.size or REPORT_IMAGE_SIZE, args.steps or REPORT_IMAGE_STEPS
            prompts = report_prompts(args.prompt, args.seed)
            what = "the given prompts" if args.prompt else "the report's fixed prompts"
        pairs = pairs_from(
            stable, candidate, prompts, size=size, steps=steps, timeout=args.image_timeout
        )
        for pair in pairs:
            for r in (pair.stable, pair.candidate):
                if r.error:
                    print(f"warning: {r.error}", file=sys.stderr)
        shown = ", ".join(x for x in (size or "", f"{steps} steps" if steps else "") if x)
        source = f"{what}{f' ({shown})' if shown else ''}, {where}"
    out = Path(args.out)
    try:
        out.write_text(render_report(obj, pairs=pairs, pairs_source=source), encoding="utf-8")
    except OSError as exc:
        raise PluginError(f"cannot write {out}: {exc}") from exc
    phase = (obj.get("status") or {}).get("phase") or "Unknown"
    print(f"wrote {out} (canary {kube.namespace}/{args.canary}, phase {phase})")
    for pair in pairs or []:
        print(pair_line(pair))
    return 0
