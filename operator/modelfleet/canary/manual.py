"""Manual actions: what a user may ask of a Canary, and in which phase it acts.

Requests travel through the `modelfleet.io/action` annotation, value ``<verb>[:<id>]``
with verb one of abort, promote, retry, resume, e.g. ``promote:1700000000``. The whole
value is the request's identity: once handled it is stored in status.lastAction and
ignored until the annotation changes. To ask for the same verb again, use a new id
(`kubectl modelfleet` uses the Unix time). Pausing is `spec.paused`, not an annotation.

RULES and refusal() are the one statement of which request acts in which phase: the
canary core follows them, and `kubectl modelfleet` reads them to warn before asking.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from modelfleet.api.canary import ACTIVE_PHASES, RETRYABLE_PHASES, CanaryPhase

ACTION_ANNOTATION = "modelfleet.io/action"

Verb = Literal["abort", "promote", "retry", "resume"]
VERBS: tuple[Verb, ...] = ("abort", "promote", "retry", "resume")
# Everything a user can request: the annotation verbs, plus pause (spec.paused=true).
Request = Literal["abort", "promote", "retry", "resume", "pause"]

_VALUE = re.compile(r"^(?P<verb>[a-z]+)(?::(?P<id>[A-Za-z0-9._-]{1,63}))?$")


@dataclass(frozen=True)
class Rule:
    """Where a request acts, why it does nothing elsewhere, and what it does."""

    acts_in: frozenset[CanaryPhase]
    refusal: str  # names the phases of acts_in (tests/unit/test_canary_manual.py checks)
    help: str


RULES: dict[Request, Rule] = {
    "promote": Rule(
        ACTIVE_PHASES,
        "promote only acts on active canaries",
        "skip the remaining steps and send all traffic to the candidate",
    ),
    "abort": Rule(
        ACTIVE_PHASES,
        "abort only acts on Pending, Progressing or Paused canaries",
        "roll back: candidate weight 0",
    ),
    "retry": Rule(
        RETRYABLE_PHASES,
        "retry only acts on RolledBack, Failed or Paused canaries",
        "start a RolledBack, Failed or Paused canary again from step 1",
    ),
    "resume": Rule(
        frozenset({"Paused"}),
        "resume only acts on Paused canaries",
        "set spec.paused=false (and request resume if paused for lack of data)",
    ),
    # The core only runs active phases, so spec.paused means nothing to a finished canary.
    "pause": Rule(
        ACTIVE_PHASES,
        "pausing a finished canary has no effect",
        "set spec.paused=true: hold the current weight",
    ),
}


def refusal(
    verb: Request,
    phase: CanaryPhase,
    *,
    spec_paused: bool = False,
    candidate_unready: str | None = None,
) -> str | None:
    """Why `verb` does nothing to a canary in `phase`, or None when it acts.

    spec_paused: the Canary's spec.paused (a resume annotation waits for it to be false).
    candidate_unready: why the candidate pool cannot take traffic; None when it can or
    the caller does not know (promote needs a ready candidate).
    """
    rule = RULES[verb]
    if phase not in rule.acts_in:
        if verb == "promote" and phase != "Succeeded":
            return f"{rule.refusal}; use retry first"
        return rule.refusal
    if verb == "resume" and spec_paused:
        return "spec.paused is true, set it to false to resume"
    if verb == "promote" and candidate_unready is not None:
        return f"candidate pool not ready: {candidate_unready}"
    return None


def paused_for_lack_of_data(inconclusive_checks: int, inconclusive_limit: int) -> bool:
    """A Paused canary with this many inconclusive analyses in a row stays paused until a
    resume (or retry) action, whatever spec.paused says."""
    return inconclusive_checks >= inconclusive_limit


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
