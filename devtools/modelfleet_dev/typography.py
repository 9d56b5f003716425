"""The demo's typography story: two pools of the text-drawing backend (stable letters
every banner right, the candidate mangles 60% of them), a canary judged by the text the
workers' OCR read, and the kubectl plugin's report of the same prompts and seeds on both.

The pools run `modelfleet_dev.textrender` behind real ModelPools: the local pod runner
starts it for the dev image `modelfleet.dev/textrender` in place of the worker.
"""

from __future__ import annotations

import json
import random
import secrets
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from modelfleet_dev import story

TEXTRENDER_IMAGE = "modelfleet.dev/textrender"
STABLE, CANDIDATE = "typography", "typography-v2"
CORRUPTION = {STABLE: 0.0, CANDIDATE: 0.6}
SIZE = "384x128"  # a banner: OCR reads it in ~40 ms on one core
# Two-word banners without letters the corruption turns into look-alikes the OCR forgives
# either way (O/0, I/1): a mangled banner scores 0.5.
BANNERS = ("HAPPY MARKET", "FRESH BREAD", "SUMMER SALE", "GRAND PARADE", "CRAFT BEER")
REPORT_PROMPTS = (
    f'a shop banner with the text "{BANNERS[0]}"',
    f'a bakery sign that says "{BANNERS[1]}"',
)
# The pre-flight replay's golden set: a ConfigMap of JSON lines (canary.md, "Pre-flight
# replay"); both seeds are ones the candidate corrupts, so the replay's verdict is stable.
REPLAY = "typo-replay"
GOLDEN = "typography-golden"
GOLDEN_PROMPTS = (
    {"prompt": f'a shop banner with the text "{BANNERS[0]}"', "size": SIZE},
    {"prompt": "a bakery sign", "text": [BANNERS[1]], "size": SIZE},
)
REPLAY_SEEDS = [11, 12]


def pool_manifest(name: str, model_dir: str) -> dict[str, Any]:
    """A ModelPool of the text-drawing backend with this pool's corruption rate."""
    doc = story.pool_manifest(
        name, model_dir, {"MODELFLEET_TEXTRENDER_CORRUPTION_RATE": str(CORRUPTION[name])}
    )
    doc["spec"]["image"] = TEXTRENDER_IMAGE
    doc["spec"]["limits"]["maxResolution"] = 512
    doc["spec"]["tags"] = ["typography"]
    return doc


def banner_prompt(rng: random.Random) -> str:
    return f'a poster with the text "{rng.choice(BANNERS)}"'


class TextLoad(story.Load):
    """Open-loop banner requests through the router for one policy, about `rate` per
    second (a fixed rate keeps the OCR's CPU share predictable on a small machine)."""

    def __init__(self, router_url: str, policy: str, rate: float = 8.0, clients: int = 3) -> None:
        super().__init__(router_url, policy, clients, period=clients / rate)
        self.rngs = [random.Random(n) for n in range(clients)]

    def body(self, client: int) -> bytes:
        rng = self.rngs[client]
        doc = {"prompt": banner_prompt(rng), "size": SIZE, "seed": rng.randrange(1 << 30)}
        return json.dumps(doc).encode()


def canary_manifest(name: str, policy: str) -> dict[str, Any]:
    """typography -> typography-v2, judged by the story's checks plus the text the
    workers read: mean word accuracy against the stable's, and the pass rate."""
    doc = story.canary_manifest(name, policy, STABLE, CANDIDATE, "10s", [25, 50, 100])
    analysis = doc["spec"]["analysis"]
    analysis["minVerified"] = 10
    analysis["metrics"] = [
        *analysis["metrics"],
        {"name": "text-accuracy", "builtin": "text-accuracy", "minRatioToStable": 0.9},
        {"name": "text-pass-rate", "builtin": "text-pass-rate", "min": 0.8},
    ]
    return doc


def operator_token(root: Path) -> Path:
    """The local cluster's operator credential for pool pins, made once (owner-only)."""
    path = root / "operator-token"
    if not path.exists():
        path.touch(mode=0o600)
        path.write_text(secrets.token_hex(24))
    return path


def apply_golden(api: Any, namespace: str) -> None:
    """The golden prompts' ConfigMap, created or replaced."""
    from kubernetes import client as k8s
    from kubernetes.client.rest import ApiException

    core = k8s.CoreV1Api(api)
    data = {"prompts.jsonl": "".join(json.dumps(g) + "\n" for g in GOLDEN_PROMPTS)}
    body = {"metadata": {"name": GOLDEN}, "data": data}
    try:
        core.create_namespaced_config_map(namespace, body)
    except ApiException as exc:
        if exc.status != 409:
            raise
        core.replace_namespaced_config_map(GOLDEN, namespace, body)


def replay_canary_manifest(name: str) -> dict[str, Any]:
    """The typography canary with a pre-flight replay of the golden banners."""
    doc = canary_manifest(name, name)
    doc["spec"]["replay"] = {
        "configMap": GOLDEN,
        "seeds": REPLAY_SEEDS,
        "minRatioToStable": 0.9,
        "timeout": "2m",
    }
    return doc


def text_scores(metrics: Sequence[dict[str, Any]]) -> str:
    """'text-accuracy candidate 0.7 vs stable 1' from a canary's status.metrics."""
    for m in metrics:
        if m.get("name") == "text-accuracy":
            return (
                f"text-accuracy candidate {_num(m.get('value'))} vs stable "
                f"{_num(m.get('stableValue'))} ({m.get('result')}, "
                f"{m.get('samples') or 0} verified candidate renders)"
            )
    return "text-accuracy: not measured"


def _num(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, int | float) else "n/a"


def run_report(
    kubeconfig: Path,
    namespace: str,
    canary: str,
    out: Path,
    say: Callable[[str], None],
    source: Sequence[str] = (),
) -> int:
    """`kubectl modelfleet report CANARY --html OUT ...`, as a user would run it; its
    lines (what each pool's render was read as) are narrated. Without `source` flags:
    the report's prompts on a ready worker of each pool (--from-pools); with them (the
    router and the operator credential), the canary's golden prompts, pinned."""
    script = Path(sys.executable).parent / "kubectl-modelfleet"
    argv = [str(script), "--kubeconfig", str(kubeconfig), "-n", namespace, "report", canary]
    argv += ["--html", str(out)]
    if source:
        argv += list(source)
    else:
        argv += ["--from-pools", "--size", SIZE, "--seed", "11", "--seed", "12"]
        for p in REPORT_PROMPTS:
            argv += ["--prompt", p]
    say("$ kubectl modelfleet " + shlex.join(argv[1:]))
    res = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    for line in (res.stdout + res.stderr).splitlines():
        say("  " + line)
    return res.returncode
