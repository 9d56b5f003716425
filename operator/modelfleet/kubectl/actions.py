"""`kubectl modelfleet promote|abort|retry CANARY`: requests through the action annotation.

The operator decides; the plugin only warns when modelfleet.canary.manual's rules say
the request will be ignored in the canary's current phase.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from modelfleet.api.canary import PHASES
from modelfleet.canary.manual import ACTION_ANNOTATION, Request, Verb, action_value, refusal
from modelfleet.kubectl import PROG
from modelfleet.kubectl.client import Kube, get_canary, patch_canary

ANNOTATION_VERBS: dict[str, Verb] = {"promote": "promote", "abort": "abort", "retry": "retry"}


def new_request_id(now: float | None = None) -> str:
    """A fresh action id: Unix time in milliseconds."""
    return str(int((time.time() if now is None else now) * 1000))


def action_hint(verb: Request, canary: dict[str, Any]) -> str | None:
    """Why the operator is likely to ignore this request, or None.

    None too before the operator has seen the canary (no phase yet). Judged by the phase
    alone: the candidate's readiness is not known here, and the plugin's resume clears
    spec.paused in the same patch as its annotation.
    """
    phase = (canary.get("status") or {}).get("phase")
    if phase not in PHASES:
        return None
    why = refusal(verb, phase)
    return None if why is None else f"the canary is {phase}; {why}"


def print_hint(hint: str | None) -> None:
    if hint:
        print(f"note: {hint}; the operator will likely ignore this request")


def cmd_action(kube: Kube, args: argparse.Namespace) -> int:
    verb = ANNOTATION_VERBS[args.command]
    name: str = args.canary
    obj = get_canary(kube, name)
    where = f"canary {kube.namespace}/{name}"
    hint = action_hint(verb, obj)
    value = action_value(verb, new_request_id())
    patch_canary(kube, name, {"metadata": {"annotations": {ACTION_ANNOTATION: value}}})
    print(f"{where}: requested {verb} ({ACTION_ANNOTATION}={value})")
    print(f"follow it with: {PROG} status {name} -n {kube.namespace} --watch")
    print_hint(hint)
    return 0
