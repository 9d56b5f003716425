"""The report's side-by-side section: stable and candidate renders of the same prompt
and seed, each with the text the worker's OCR read, its word accuracy and passed.

Pure: the renders come in as data (`RenderPair`), from wherever they were made
(`renders.py`: the pools' workers directly, or the pre-flight replay); this module only
turns them into self-contained HTML (images inline as data: URIs, all text escaped).
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from modelfleet.kubectl.formatting import fmt_number


@dataclass(frozen=True)
class PoolRender:
    """One pool's answer to one (prompt, seed): the image bytes and the worker's
    `modelfleet` verification block (None when the image was not verified)."""

    pool: str
    image: bytes | None = None
    verification: Mapping[str, Any] | None = None
    error: str | None = None
    media_type: str = "image/png"


@dataclass(frozen=True)
class RenderPair:
    prompt: str
    seed: int
    stable: PoolRender
    candidate: PoolRender
    expected: tuple[str, ...] = field(default=())
    line: int | None = None  # a golden prompt's line in its ConfigMap key


@dataclass(frozen=True)
class TextVerdict:
    """What one render's verification block says, in the report's words."""

    status: str  # passed | failed | unreadable | not verified | error
    read: str | None
    word_accuracy: float | None
    passed: bool | None
    detail: str = ""


def text_verdict(render: PoolRender) -> TextVerdict:
    """The block's fields, tolerant of missing ones (an older worker, an error)."""
    if render.error is not None or render.image is None:
        return TextVerdict("error", None, None, None, render.error or "no image")
    block = render.verification
    if not block:
        return TextVerdict(
            "not verified", None, None, None, "no expected text, or verification off"
        )
    acc = block.get("word_accuracy")
    passed = block.get("passed")
    read = block.get("read")
    return TextVerdict(
        status=str(block.get("status") or ("passed" if passed else "failed")),
        read=read if isinstance(read, str) else None,
        word_accuracy=float(acc) if isinstance(acc, int | float) else None,
        passed=passed if isinstance(passed, bool) else None,
        detail=str(block.get("reason") or ""),
    )


def expected_of(pair: RenderPair) -> tuple[str, ...]:
    """The pair's expected text: given, else what either worker says it checked."""
    if pair.expected:
        return pair.expected
    for r in (pair.stable, pair.candidate):
        got = (r.verification or {}).get("expected")
        if isinstance(got, list) and got:
            return tuple(str(x) for x in got)
    return ()


def data_uri(image: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{base64.b64encode(image).decode('ascii')}"


def recorded_for(
    recorded: Sequence[Mapping[str, Any]], pair: RenderPair
) -> Mapping[str, Any] | None:
    """The replay's record (status.replay.renders) of this golden (prompt, seed)."""
    if pair.line is None:
        return None
    for r in recorded:
        if r.get("line") == pair.line and r.get("seed") == pair.seed:
            return r
    return None


def _recorded_line(rec: Mapping[str, Any] | None) -> str:
    """What the operator's replay recorded for one pool's render of this pair."""
    if not rec:
        return ""
    esc = html.escape
    text = f"replay recorded: {rec.get('status', '?')}"
    if rec.get("read"):
        text += f", read “{rec['read']}”"
    if isinstance(rec.get("wordAccuracy"), int | float):
        text += f", word accuracy {fmt_number(rec['wordAccuracy'])}"
    if rec.get("detail"):
        text += f" ({rec['detail']})"
    return f'<div class="muted">{esc(text)}</div>'


def _render_cell(render: PoolRender, recorded: Mapping[str, Any] | None = None) -> str:
    esc = html.escape
    v = text_verdict(render)
    out = []
    if render.image is not None and render.error is None:
        out.append(
            f'<img alt="{esc(render.pool)} render" '
            f'src="{esc(data_uri(render.image, render.media_type))}">'
        )
    if v.status == "error":
        out.append(f'<div class="err">{esc(v.detail)}</div>' + _recorded_line(recorded))
        return "".join(out)
    cls = {"passed": "ok", "failed": "err"}.get(v.status, "muted")
    lines = [f'<div class="{cls}">{esc(v.status)}</div>']
    if v.read is not None:
        lines.append(f'<div>read: <q class="read">{esc(v.read)}</q></div>')
    if v.word_accuracy is not None:
        lines.append(f"<div>word accuracy {esc(fmt_number(v.word_accuracy))}</div>")
    if v.passed is not None:
        lines.append(f"<div>passed: {'yes' if v.passed else 'no'}</div>")
    if v.detail:
        lines.append(f'<div class="muted">{esc(v.detail)}</div>')
    lines.append(_recorded_line(recorded))
    out.append('<div class="verdict">' + "".join(lines) + "</div>")
    return "".join(out)


PAIRS_CSS = (
    ".pairs img{max-width:384px;max-height:384px;display:block;border:1px solid #ccc}"
    ".pairs td{vertical-align:top}.ok{color:#2e7d32;font-weight:bold}"
    ".muted{color:#757575}.read{font-family:ui-monospace,monospace}"
)


def mean_accuracy(renders: Sequence[PoolRender]) -> float | None:
    accs = [a for r in renders if (a := text_verdict(r).word_accuracy) is not None]
    return sum(accs) / len(accs) if accs else None


def pairs_html(
    pairs: Sequence[RenderPair],
    stable_pool: str,
    candidate_pool: str,
    source: str,
    recorded: Sequence[Mapping[str, Any]] = (),
) -> str:
    """The section: one row per (prompt, seed), stable left, candidate right; with the
    replay's records (status.replay.renders), what it recorded under each render."""
    esc = html.escape
    rows = []
    for p in pairs:
        expected = expected_of(p)
        shown = " / ".join(expected) if expected else "(none)"
        rec = recorded_for(recorded, p) or {}
        where = f"<br>golden line {p.line}" if p.line is not None else ""
        rows.append(
            f'<tr><td>{esc(p.prompt)}<br>seed {p.seed}{where}<br>expected: <q class="read">'
            f"{esc(shown)}</q></td>"
            f"<td>{_render_cell(p.stable, rec.get('stable'))}</td>"
            f"<td>{_render_cell(p.candidate, rec.get('candidate'))}</td></tr>"
        )
    s_acc = mean_accuracy([p.stable for p in pairs])
    c_acc = mean_accuracy([p.candidate for p in pairs])
    summary = ""
    if s_acc is not None or c_acc is not None:
        summary = (
            f"<p>Mean word accuracy of the verified renders: stable {esc(fmt_number(s_acc))}, "
            f"candidate {esc(fmt_number(c_acc))}.</p>"
        )
    return (
        "<h2>Stable vs candidate</h2>"
        f"<p>Same prompt and seed on each pool; {esc(source)}. Text read by each "
        "worker's own OCR verifier.</p>"
        + summary
        + '<table class="pairs"><thead><tr><th>prompt</th>'
        f"<th>stable ({esc(stable_pool)})</th><th>candidate ({esc(candidate_pool)})</th>"
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def replay_html(replay: Mapping[str, Any] | None) -> str:
    """The pre-flight replay's outcome (status.replay): result, message, both scores."""
    if not replay:
        return ""
    esc = html.escape
    rows = []
    for side in ("stable", "candidate"):
        sc = replay.get(side) or {}
        if not sc:
            continue
        rows.append(
            "<tr>"
            + "".join(
                f"<td>{esc(str(c))}</td>"
                for c in (
                    f"{side} ({sc.get('pool', '')})",
                    sc.get("renders", "-"),
                    sc.get("verified", "-"),
                    fmt_number(sc.get("meanWordAccuracy")),
                    fmt_number(sc.get("passRate")),
                    sc.get("unreadable", "-"),
                    sc.get("failures", "-"),
                )
            )
            + "</tr>"
        )
    table = (
        "<table><thead><tr><th>pool</th><th>renders</th><th>verified</th>"
        "<th>mean word accuracy</th><th>pass rate</th><th>unreadable</th><th>failures</th>"
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table>"
        if rows
        else ""
    )
    return (
        "<h2>Pre-flight replay</h2>"
        f"<p>Result: <b>{esc(str(replay.get('result') or 'running'))}</b>; "
        f"{esc(str(replay.get('message') or '-'))}</p>" + table
    )
