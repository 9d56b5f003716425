"""What the text-quality e2e scenarios add to world.py / fixtures.py: pools that run the
text-drawing backend (modelfleet_dev.textrender) behind real ModelPools, a load whose
prompts ask for text, requests whose `modelfleet` block is read, and checks of the text
metrics in a canary's status and Events.

The local pod runner runs a pool whose image is `modelfleet.dev/textrender` as
`python -m modelfleet_dev.textrender` (the real worker server, verification and OCR
included, with a model that draws the expected text); the corruption rate comes from
the pool's env (MODELFLEET_TEXTRENDER_CORRUPTION_RATE)."""

from __future__ import annotations

import itertools
import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from fixtures import Given, Scenario, Then, When
from modelfleet_dev.podrunner import DEV_IMAGES
from modelfleet_dev.story import Load, pool_manifest
from polling import wait_for
from world import Fleet

TEXT_IMAGE = "modelfleet.dev/textrender"
assert TEXT_IMAGE in DEV_IMAGES
SIGN = "HAPPY MARKET"  # no letters the corruption swaps for a look-alike the OCR confuses
PROMPT = f'a market banner saying "{SIGN}"'
TEXT_SIZE = "512x256"
TINY_SIZE = "64x64"

# The analysis every text canary uses, with explicit metrics (no defaults relied on).
TEXT_ANALYSIS: dict[str, Any] = {
    "minRequests": 3,
    "minVerified": 5,
    "failureLimit": 1,
    "inconclusiveLimit": 3,
    "metrics": [
        {"name": "errors", "builtin": "error-rate", "max": 0.1},
        {"name": "text-accuracy", "builtin": "text-accuracy", "minRatioToStable": 0.9},
        {"name": "text-pass-rate", "builtin": "text-pass-rate", "min": 0.8},
    ],
}
TEXT_CANARY: dict[str, Any] = {
    "steps": [50, 100],
    "interval": "10s",
    # A promoted canary leaves its stable up: later scenarios use it again.
    "scaleDownDelay": "1h",
    "analysis": TEXT_ANALYSIS,
}
TEXT_METRICS = ("text-accuracy", "text-pass-rate")
# "text-accuracy: 0.55 < 0.9 x stable 1 (limit 0.9)"
_RATIO_FAIL = re.compile(r"text-accuracy: ([0-9.]+) < 0\.9 x stable ([0-9.]+)")


def text_pool(name: str, model_dir: str, corruption_rate: float) -> dict[str, Any]:
    """A ModelPool whose workers draw the expected text, `corruption_rate` of the
    renders with one word mangled."""
    env = {"MODELFLEET_TEXTRENDER_CORRUPTION_RATE": str(corruption_rate)}
    doc = pool_manifest(name, model_dir, env)
    doc["spec"]["image"] = TEXT_IMAGE
    doc["spec"]["limits"]["maxResolution"] = 512
    return doc


def sign_body(seed: int, size: str = TEXT_SIZE) -> bytes:
    doc = {"prompt": PROMPT, "size": size, "steps": 2, "seed": seed}
    return json.dumps(doc).encode()


class TextLoad(Load):
    """Closed-loop clients whose prompts ask for SIGN; seeds count up from `first_seed`,
    so which renders a textrender pool corrupts is the same on every run."""

    def __init__(
        self, router_url: str, policy: str, size: str, first_seed: int, clients: int = 2
    ) -> None:
        super().__init__(router_url, policy, clients)
        self.size = size
        self.seeds = itertools.count(first_seed)

    def body(self, client: int) -> bytes:
        return sign_body(next(self.seeds), self.size)


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    doc: dict[str, Any]

    def block(self, i: int = 0) -> dict[str, Any]:
        block: dict[str, Any] = self.doc["data"][i]["modelfleet"]
        return block


def post(fleet: Fleet, policy: str, body: bytes) -> Reply:
    """One request through the router, its whole answer read."""
    req = urllib.request.Request(
        fleet.router.url + "/v1/images/generations",
        data=body,
        headers={"Content-Type": "application/json", "X-ModelFleet-Policy": policy},
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return Reply(resp.status, dict(resp.headers), json.loads(resp.read()))
    except urllib.error.HTTPError as err:
        return Reply(err.code, dict(err.headers), json.loads(err.read() or b"{}"))


# ---- the chain, with text steps ------------------------------------------------------


class TextGiven(Given):
    def text_canary(self, name: str, stable: str, candidate: str) -> TextGiven:
        """A policy `name` on `stable` and a canary of `candidate` judged by TEXT_CANARY."""
        self.policy(name, stable).canary(name, stable, candidate, **TEXT_CANARY)
        return self

    def when(self) -> TextWhen:
        return TextWhen(self.s)


class TextWhen(When):
    def text_load_runs(
        self, policy: str, size: str = TEXT_SIZE, first_seed: int = 1000, clients: int = 2
    ) -> TextWhen:
        load = TextLoad(self.fleet.router.url, policy, size, first_seed, clients)
        self.s.loads[policy] = load.__enter__()
        return self


def text_then(when: When) -> TextThen:
    """The chain's Then with the text checks (When.then() is typed as the plain one)."""
    return TextThen(when.s)


class TextThen(Then):
    def text_metric(self, canary: str, name: str, result: str) -> TextThen:
        m = self.metric(canary, name)
        assert m["result"] == result, f"{canary}: check {name}: {m}"
        return self

    def text_metrics_not_applicable(self, canary: str) -> TextThen:
        """Both text checks informational: neither pool had a verified render."""
        for name in TEXT_METRICS:
            m = self.metric(canary, name)
            ok = m["result"] == "inconclusive" and m.get("informational") is True
            assert ok and "not applicable" in m["message"], f"{canary}: check {name}: {m}"
        return self

    def text_metrics_measured(self, canary: str, at_least: int) -> TextThen:
        """Both text checks judged on at least `at_least` verified candidate renders."""
        for name in TEXT_METRICS:
            m = self.metric(canary, name)
            assert (m.get("samples") or 0) >= at_least, f"{canary}: check {name}: {m}"
            assert not m.get("informational"), f"{canary}: check {name}: {m}"
        return self

    def rolled_back_on_text_accuracy(self, canary: str) -> TextThen:
        """The message names text-accuracy with both values, and they are the status's:
        the candidate under 0.9 x the stable's, the stable reading its text correctly."""
        msg = self._status(canary).get("message", "")
        found = _RATIO_FAIL.search(msg)
        assert found, f"{canary}: message {msg!r} does not name text-accuracy and both values"
        value, stable = float(found.group(1)), float(found.group(2))
        m = self.metric(canary, "text-accuracy")
        assert m["result"] == "fail", m
        assert abs(m["value"] - value) < 0.01 and abs(m["stableValue"] - stable) < 0.01, (msg, m)
        assert stable >= 0.95, f"{canary}: the stable pool's text read wrong: {m}"
        assert value < 0.9 * stable, m
        return self

    def rollback_event_names_text_accuracy(self, canary: str, timeout: float = 10) -> TextThen:
        def found() -> str | None:
            for e in self.fleet.events("Canary", canary):
                rolled_back = e.reason == "RolledBack" and e.type == "Warning"
                if rolled_back and _RATIO_FAIL.search(e.message or ""):
                    return str(e.message)
            return None

        wait_for(found, timeout=timeout, what=f"RolledBack event on {canary} naming text-accuracy")
        return self


@contextmanager
def text_scenario(fleet: Fleet) -> Iterator[TextGiven]:
    """fixtures.scenario with the text steps; what it started stops when the test ends."""
    s = Scenario(fleet)
    try:
        yield TextGiven(s)
    finally:
        s.close()
