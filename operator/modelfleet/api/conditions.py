"""Kubernetes-style condition bookkeeping shared by every controller."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from modelfleet.api.common import Condition

ConditionStatus = Literal["True", "False", "Unknown"]


def rfc3339(now: datetime) -> str:
    """Second-precision UTC timestamp, the form metav1.Time uses on the wire."""
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def get_condition(conditions: list[Condition], type_: str) -> Condition | None:
    """The condition of this type, if present."""
    return next((c for c in conditions if c.type == type_), None)


def set_condition(
    conditions: list[Condition],
    type: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    now: datetime,
    generation: int | None,
) -> list[Condition]:
    """Return a new list with the condition of `type` set; the input is not modified.

    lastTransitionTime is kept while status and reason are unchanged (only the message
    or observedGeneration moved), so a steady state never rewrites the timestamp.
    """
    old = get_condition(conditions, type)
    if old is not None and old.status == status and old.reason == reason:
        transition = old.last_transition_time or rfc3339(now)
    else:
        transition = rfc3339(now)
    new = Condition(
        type=type,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=transition,
        observed_generation=generation,
    )
    out = [new if c.type == type else c.model_copy() for c in conditions]
    if old is None:
        out.append(new)
    return out
