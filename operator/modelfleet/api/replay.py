"""Canary pre-flight replay: golden prompts rendered by both pools before traffic moves.

`spec.replay` names a ConfigMap of golden prompts (JSON lines) and the seeds to render
each with; before step 1 the operator renders every (prompt, seed) on the stable and on
the candidate pool through the router (pool pinned), scores both with the workers' own
OCR verifier, and records the outcome in `status.replay`. A candidate that fails never
receives traffic (docs/canary.md, "Pre-flight replay").
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from modelfleet.api.common import DURATION_PATTERN, ApiModel, cel, parse_duration

ReplayResult = Literal["pass", "fail", "inconclusive"]
# One render's outcome: the worker's verification status, or why there is none.
RenderStatus = Literal["passed", "failed", "unreadable", "unverified", "error", "unavailable"]

CONFIGMAP_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
CONFIGMAP_KEY_PATTERN = r"^[-._a-zA-Z0-9]+$"
MAX_SEEDS = 16
MAX_SEED = 2**32 - 1
# status.replay.renders keeps at most this many (prompt, seed) pairs: the worst ones.
MAX_STATUS_RENDERS = 20
MAX_STATUS_TEXT = 200  # characters of a prompt or of what the OCR read, in status


class ReplaySpec(ApiModel):
    """Golden prompts and seeds rendered on the stable and the candidate before step 1."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "has(self.minWordAccuracy) || has(self.minRatioToStable)"
                    " || has(self.minPassRate)",
                    "spec.replay: set a threshold: minWordAccuracy, minRatioToStable or "
                    "minPassRate",
                )
            ]
        }
    )

    config_map: str = Field(
        pattern=CONFIGMAP_NAME_PATTERN,
        max_length=253,
        description="ConfigMap (in the Canary's namespace) holding the golden prompts.",
    )
    key: str = Field(
        default="prompts.jsonl",
        pattern=CONFIGMAP_KEY_PATTERN,
        max_length=253,
        description=(
            "Key of the ConfigMap: JSON lines, one golden prompt each: "
            '{"prompt": "...", "text": ["SALE NOW"], "size": "512x512"}; text (the '
            "expected lettering) defaults to the prompt's quoted spans, size to the pool's."
        ),
    )
    seeds: list[Annotated[int, Field(ge=0, le=MAX_SEED)]] = Field(
        default_factory=lambda: [1],
        min_length=1,
        max_length=MAX_SEEDS,
        json_schema_extra={"x-kubernetes-list-type": "set"},
        description="Seeds each prompt is rendered with, on both pools (unique).",
    )
    min_word_accuracy: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="The candidate's mean word accuracy over all renders must be >= this.",
    )
    min_ratio_to_stable: float | None = Field(
        default=None,
        gt=0,
        le=10,
        description=(
            "The candidate's mean word accuracy must be >= this times the stable's, "
            "e.g. 0.9 (like the text-accuracy metric)."
        ),
    )
    min_pass_rate: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Share of the candidate's renders the worker's verifier passed must be >= this.",
    )
    timeout: str = Field(
        default="5m",
        pattern=DURATION_PATTERN,
        max_length=32,
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("duration(self) >= duration('1s')", "spec.replay.timeout must be at least 1s")
            ]
        },
        description=(
            "The whole replay (both pools) must finish within this; otherwise it is "
            "inconclusive and retried, within spec.progressDeadline."
        ),
    )
    concurrency: int = Field(
        default=4, ge=1, le=64, description="Renders in flight at once, per pool."
    )

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, seeds: list[int]) -> list[int]:
        seen: set[int] = set()
        for i, s in enumerate(seeds):
            if s in seen:
                raise ValueError(f"spec.replay.seeds[{i}] = {s} is a duplicate")
            seen.add(s)
        return seeds

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, v: str) -> str:
        if parse_duration(v).total_seconds() < 1:
            raise ValueError("spec.replay.timeout must be at least 1s")
        return v

    @model_validator(mode="after")
    def _a_threshold(self) -> ReplaySpec:
        if (
            self.min_word_accuracy is None
            and self.min_ratio_to_stable is None
            and (self.min_pass_rate is None)
        ):
            raise ValueError(
                "spec.replay: set a threshold: minWordAccuracy, minRatioToStable or minPassRate"
            )
        return self


class ReplayPoolScore(ApiModel):
    """One pool's renders of the golden prompts, scored by its workers' verifier."""

    pool: str = Field(description="ModelPool name.")
    renders: int = Field(description="(prompt, seed) pairs sent.")
    verified: int = Field(default=0, description="Renders the OCR read and scored.")
    unreadable: int = Field(
        default=0, description="Renders in which the OCR found no text (word accuracy 0)."
    )
    failures: int = Field(
        default=0, description="Renders without a usable answer (errors, timeouts, unverified)."
    )
    mean_word_accuracy: float | None = Field(
        default=None,
        description="Mean word accuracy over answered renders (unreadable ones count 0).",
    )
    pass_rate: float | None = Field(
        default=None, description="Share of answered renders the verifier passed."
    )


class ReplayRenderResult(ApiModel):
    """One pool's render of one (prompt, seed)."""

    status: RenderStatus = Field(
        description="passed, failed or unreadable (the verifier's); unverified, error or "
        "unavailable (no score)."
    )
    word_accuracy: float | None = Field(default=None, description="Share of expected words read.")
    read: str = Field(default="", description="What the OCR read (truncated).")
    detail: str = Field(default="", description="Why there is no score.")


class ReplayRender(ApiModel):
    """A golden (prompt, seed) as both pools rendered it; re-render it through the router
    with the pool pinned to see the same images again."""

    line: int = Field(description="1-based line of the golden prompt in the ConfigMap key.")
    prompt: str = Field(description="The prompt (truncated).")
    seed: int = Field(description="Seed it was rendered with.")
    expected: list[str] = Field(default_factory=list, description="Expected text lines.")
    stable: ReplayRenderResult = Field(description="The stable pool's render.")
    candidate: ReplayRenderResult = Field(description="The candidate pool's render.")


class ReplayGolden(ApiModel):
    """Which golden prompts were replayed."""

    config_map: str = Field(description="ConfigMap name.")
    key: str = Field(description="ConfigMap key.")
    digest: str = Field(description="sha256 of the key's content, to tell a changed set apart.")
    prompts: int = Field(description="Golden prompts in it.")


class ReplayStatus(ApiModel):
    """What the pre-flight replay found."""

    result: ReplayResult | None = Field(
        default=None, description="pass, fail or inconclusive; absent while it runs."
    )
    message: str = Field(default="", description="Both scores, in words.")
    started_at: str | None = Field(default=None, description="When this replay started.")
    finished_at: str | None = Field(default=None, description="When it was judged.")
    attempts: int = Field(default=0, description="Replays run for this canary run so far.")
    golden: ReplayGolden | None = Field(default=None, description="The golden set replayed.")
    stable: ReplayPoolScore | None = Field(default=None, description="The stable pool's score.")
    candidate: ReplayPoolScore | None = Field(
        default=None, description="The candidate pool's score."
    )
    renders: list[ReplayRender] = Field(
        default_factory=list,
        max_length=MAX_STATUS_RENDERS,
        description=f"At most {MAX_STATUS_RENDERS} (prompt, seed) pairs, those where the "
        "candidate did worst against the stable, in ConfigMap order.",
    )
