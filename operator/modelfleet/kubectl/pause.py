"""`kubectl modelfleet pause|resume CANARY`: spec.paused, plus a resume request when
clearing spec.paused alone would not continue the canary."""

from __future__ import annotations

import argparse
from typing import Any

from modelfleet.api.canary import AnalysisSpec
from modelfleet.canary.manual import ACTION_ANNOTATION, action_value, paused_for_lack_of_data
from modelfleet.kubectl.actions import action_hint, new_request_id, print_hint
from modelfleet.kubectl.client import Kube, get_canary, patch_canary


def inconclusive_limit(spec: dict[str, Any]) -> int:
    """The spec's analysis.inconclusiveLimit; the API's default where it is unset (the
    API server fills defaults in, so only a hand-made object lacks it)."""
    value = (spec.get("analysis") or {}).get("inconclusiveLimit")
    if value is None:
        return int(AnalysisSpec.model_fields["inconclusive_limit"].default)
    return int(value)


def resume_needs_action(canary: dict[str, Any]) -> bool:
    """Does a resume need the `resume:<id>` annotation, not only spec.paused=false?

    Yes when the canary is Paused for lack of data: setting spec.paused to false does not
    continue it then (the core's Paused phase); only a resume (or retry) action does.
    """
    spec = canary.get("spec") or {}
    st = canary.get("status") or {}
    if st.get("phase") != "Paused":
        return False
    if not spec.get("paused"):
        return True
    return paused_for_lack_of_data(int(st.get("inconclusiveChecks") or 0), inconclusive_limit(spec))


def cmd_pause(kube: Kube, args: argparse.Namespace) -> int:
    name: str = args.canary
    obj = get_canary(kube, name)
    hint = action_hint("pause", obj)
    patch_canary(kube, name, {"spec": {"paused": True}})
    print(
        f"canary {kube.namespace}/{name}: set spec.paused=true (the operator holds the current weight)"
    )
    print_hint(hint)
    return 0


def cmd_resume(kube: Kube, args: argparse.Namespace) -> int:
    name: str = args.canary
    obj = get_canary(kube, name)
    where = f"canary {kube.namespace}/{name}"
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
    return 0
