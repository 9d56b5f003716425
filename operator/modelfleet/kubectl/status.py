"""`kubectl modelfleet status CANARY [--watch] [-o json]`: a Canary's progress."""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime
from typing import Any

from modelfleet.api.canary import TERMINAL_PHASES
from modelfleet.canary.manual import ACTION_ANNOTATION
from modelfleet.kubectl.client import Kube, get_canary
from modelfleet.kubectl.cost import cost_checks, cost_line
from modelfleet.kubectl.formatting import (
    CONDITIONS_HEADERS,
    HISTORY_HEADERS,
    METRICS_HEADERS,
    conditions_rows,
    format_table,
    history_rows,
    indent,
    metrics_rows,
    step_label,
    weight_label,
)


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
    unjudged = st.get("unjudgedMetrics") or []
    if unjudged and st.get("phase") not in TERMINAL_PHASES:
        lines.append(
            f"Unjudged:   {', '.join(unjudged)} (no window has judged it yet; the candidate "
            "does not take 100% until one does)"
        )
    if cost_checks(canary):
        lines.append(f"Cost/image: {cost_line(canary)}")
    lines.append("")
    lines.append("Metrics (latest analysis):")
    metrics = st.get("metrics") or []
    if metrics:
        lines.append(indent(format_table(METRICS_HEADERS, metrics_rows(metrics))))
    else:
        lines.append("  (none yet)")
    lines.append("")
    lines.append("History:")
    history = st.get("history") or []
    if history:
        lines.append(indent(format_table(HISTORY_HEADERS, history_rows(history, steps))))
    else:
        lines.append("  (no analyses yet)")
    lines.append("")
    lines.append("Conditions:")
    conditions = st.get("conditions") or []
    if conditions:
        lines.append(indent(format_table(CONDITIONS_HEADERS, conditions_rows(conditions))))
    else:
        lines.append("  (none)")
    return "\n".join(lines)


def status_json(canary: dict[str, Any]) -> dict[str, Any]:
    """The `-o json` view: the object as the API server returns it, minus managedFields."""
    meta = {k: v for k, v in (canary.get("metadata") or {}).items() if k != "managedFields"}
    return {**canary, "metadata": meta}


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
