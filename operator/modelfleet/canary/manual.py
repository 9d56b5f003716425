"""Manual actions requested through the `modelfleet.io/action` annotation.

Value: ``<verb>[:<id>]`` with verb one of abort, promote, retry, resume, e.g.
``promote:1700000000``. The whole value is the request's identity: once handled it is
stored in status.lastAction and ignored until the annotation changes. To ask for the
same verb again, use a new id (`kubectl modelfleet` uses the Unix time).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

ACTION_ANNOTATION = "modelfleet.io/action"

Verb = Literal["abort", "promote", "retry", "resume"]
VERBS: tuple[Verb, ...] = ("abort", "promote", "retry", "resume")

_VALUE = re.compile(r"^(?P<verb>[a-z]+)(?::(?P<id>[A-Za-z0-9._-]{1,63}))?$")


@dataclass(frozen=True)
class ManualAction:
    """A parsed request; `verb` is None when the value is invalid (see `error`)."""

    raw: str
    verb: Verb | None
    id: str | None = None
    error: str | None = None


def parse_action(value: str) -> ManualAction:
    """Parse an annotation value; never raises (an invalid value becomes a Warning Event)."""
    text = value.strip()
    m = _VALUE.match(text)
    if m is None:
        return ManualAction(
            raw=value,
            verb=None,
            error=f"{ACTION_ANNOTATION}={value!r} is not <verb>[:<id>] with verb one of "
            + ", ".join(VERBS),
        )
    verb = m.group("verb")
    for v in VERBS:
        if v == verb:
            return ManualAction(raw=value, verb=v, id=m.group("id"))
    return ManualAction(
        raw=value,
        verb=None,
        id=m.group("id"),
        error=f"{ACTION_ANNOTATION}: unknown action {verb!r}; use one of " + ", ".join(VERBS),
    )


def action_value(verb: Verb, request_id: str) -> str:
    """The annotation value for a request (used by the CLI)."""
    return f"{verb}:{request_id}"
