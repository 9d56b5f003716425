"""Canary: shift a route's traffic from a stable pool to a candidate pool in steps."""

from __future__ import annotations

import typing
from itertools import pairwise
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from modelfleet.api.common import (
    DNS_LABEL_PATTERN,
    DURATION_PATTERN,
    ApiModel,
    Condition,
    ObjectMeta,
    cel,
    parse_duration,
)
from modelfleet.api.replay import ReplaySpec, ReplayStatus

BuiltinMetric = Literal[
    "error-rate",
    "latency-p95",
    "latency-p99",
    "service-time",
    "text-accuracy",
    "text-pass-rate",
    "cost-per-image",
]
# How a check compares candidate with stable (docs/canary.md, "Comparing like with like"):
# auto picks mann-whitney when both pools' measurements carry distributions, proportion
# for rates that carry counts, value otherwise.
CompareMethod = Literal["auto", "mann-whitney", "proportion", "value"]
# Built-ins counted over verified renders (minVerified gates them, not minRequests).
TEXT_METRICS: frozenset[str] = frozenset({"text-accuracy", "text-pass-rate"})
# Built-ins that are proportions (a count of events out of samples).
RATE_METRICS: frozenset[str] = frozenset({"error-rate", "text-pass-rate"})
# End-to-end latency holds queueing: a ratio to stable needs matched load per replica.
LATENCY_METRICS: frozenset[str] = frozenset({"latency-p95", "latency-p99"})
# USD per image the pool's workers reported (lower is better; max / maxRatioToStable).
COST_METRICS: frozenset[str] = frozenset({"cost-per-image"})
# Higher is better (judged with min / minRatioToStable).
HIGHER_IS_BETTER: frozenset[str] = frozenset({"text-accuracy", "text-pass-rate"})
CanaryPhase = Literal["Pending", "Progressing", "Paused", "Succeeded", "RolledBack", "Failed"]
# The one definition of the phase groups; everything else (core, controllers, plugin) reads these.
PHASES: tuple[CanaryPhase, ...] = typing.get_args(CanaryPhase)
ACTIVE_PHASES: frozenset[CanaryPhase] = frozenset({"Pending", "Progressing", "Paused"})
TERMINAL_PHASES: frozenset[CanaryPhase] = frozenset({"Succeeded", "RolledBack", "Failed"})
# Phases `retry` restarts from step 1.
RETRYABLE_PHASES: frozenset[CanaryPhase] = frozenset({"RolledBack", "Failed", "Paused"})
CheckResult = Literal["pass", "fail", "inconclusive"]
# How the pools are sized during a canary (docs/canary.md, "Capacity: shift or surge"):
# surge keeps both pools at their own replicas; shift sizes them from the traffic split.
CapacityMode = Literal["surge", "shift"]

DEFAULT_STEPS = [10, 30, 60, 100]


class ProviderSpec(ApiModel):
    """Where analysis metrics come from."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.type != 'prometheus' || has(self.address)",
                    "spec.analysis.provider.address is required when type is prometheus",
                    ".address",
                )
            ]
        }
    )

    type: Literal["router", "prometheus"] = Field(
        default="router",
        description="router: read the routers' metrics directly; prometheus: PromQL over HTTP.",
    )
    address: str | None = Field(
        default=None,
        pattern=r"^https?://.+$",
        max_length=512,
        description="Provider base URL, e.g. http://prometheus.monitoring:9090.",
    )

    @model_validator(mode="after")
    def _address_for_prometheus(self) -> ProviderSpec:
        if self.type == "prometheus" and not self.address:
            raise ValueError("spec.analysis.provider.address is required when type is prometheus")
        return self


class MetricSpec(ApiModel):
    """One check: a built-in metric or a PromQL template, with at least one threshold."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "has(self.builtin) != has(self.query)",
                    "spec.analysis.metrics[]: set exactly one of builtin or query",
                ),
                cel(
                    "has(self.max) || has(self.maxRatioToStable) || has(self.min)"
                    " || has(self.minRatioToStable) || has(self.maxWorseProbability)",
                    "spec.analysis.metrics[]: set a threshold: max or maxRatioToStable "
                    "(lower is better), min or minRatioToStable (higher is better), or "
                    "maxWorseProbability",
                ),
                cel(
                    "!has(self.maxWorseProbability) || !has(self.method) || self.method != 'value'",
                    "spec.analysis.metrics[].maxWorseProbability needs a stable comparison by "
                    "rank or proportion; it cannot be used with method value",
                    ".maxWorseProbability",
                ),
                cel(
                    "!has(self.builtin) || self.builtin != 'service-time'"
                    " || has(self.maxRatioToStable) || has(self.maxWorseProbability)"
                    " || has(self.max)",
                    "spec.analysis.metrics[]: service-time (lower is better) needs "
                    "maxRatioToStable, maxWorseProbability or max",
                ),
                cel(
                    "!has(self.builtin) || self.builtin != 'cost-per-image'"
                    " || ((has(self.max) || has(self.maxRatioToStable)) && !has(self.min)"
                    " && !has(self.minRatioToStable) && !has(self.maxWorseProbability)"
                    " && (!has(self.method) || self.method == 'auto' || self.method == 'value'))",
                    "spec.analysis.metrics[]: cost-per-image (USD per image, lower is better) "
                    "is judged on its value with max and/or maxRatioToStable only",
                ),
                cel(
                    "!has(self.query) || (!has(self.maxWorseProbability) && (!has(self.method)"
                    " || self.method == 'auto' || self.method == 'value'))",
                    "spec.analysis.metrics[]: a query gives one value per pool; "
                    "maxWorseProbability and method mann-whitney or proportion need a builtin",
                ),
                cel(
                    "!has(self.method) || self.method != 'proportion' || (has(self.builtin)"
                    " && (self.builtin == 'error-rate' || self.builtin == 'text-pass-rate'))",
                    "spec.analysis.metrics[].method proportion is only for the error-rate and "
                    "text-pass-rate builtins",
                    ".method",
                ),
            ]
        }
    )

    name: str = Field(pattern=DNS_LABEL_PATTERN, max_length=63, description="Check name.")
    builtin: BuiltinMetric | None = Field(
        default=None,
        description=(
            "error-rate (0-1), latency-p95 or latency-p99 (end-to-end seconds); service-time "
            "(the workers' inference seconds per image, by batch size; lower is better); "
            "text-accuracy (mean word "
            "accuracy of the verified renders, 0-1) or text-pass-rate (share of verified "
            "renders that passed, 0-1), judged with min / minRatioToStable; cost-per-image "
            "(USD per image the pool's workers reported, lower is better), judged with max "
            "/ maxRatioToStable."
        ),
    )
    query: str | None = Field(
        default=None,
        min_length=1,
        max_length=4096,
        description=(
            "PromQL template; {{namespace}}, {{pool}}, {{stablePool}}, {{candidatePool}} and "
            "{{interval}} are filled in, any other key is an error."
        ),
    )
    max: float | None = Field(default=None, ge=0, description="Candidate value must be <= max.")
    max_ratio_to_stable: float | None = Field(
        default=None,
        gt=0,
        description="Candidate value must be <= this times the stable pool's value.",
    )
    min: float | None = Field(
        default=None, ge=0, description="Candidate value must be >= min (higher is better)."
    )
    min_ratio_to_stable: float | None = Field(
        default=None,
        gt=0,
        description=(
            "Candidate value must be >= this times the stable pool's value (higher is "
            "better), e.g. 0.9 for text-accuracy."
        ),
    )

    alpha: float = Field(
        default=0.01,
        gt=0,
        lt=1,
        description=(
            "Rank and proportion tests fail the candidate only when the one-sided p-value is "
            "below alpha (and an effect limit is exceeded); 0 < alpha < 1."
        ),
    )
    min_samples: int | None = Field(
        default=None,
        ge=1,
        le=1000000,
        description=(
            "Least samples on each side (in strata both pools have) for a rank or proportion "
            "test; fewer is inconclusive. Defaults to minRequests (minVerified for text "
            "metrics)."
        ),
    )
    max_worse_probability: float | None = Field(
        default=None,
        gt=0.5,
        lt=1,
        description=(
            "Effect limit: P(a candidate sample is worse than a stable one), ties half; 0.5 "
            "means alike, 0.75 worse in three pairs of four. Needs a stable comparison by "
            "rank or proportion."
        ),
    )
    method: CompareMethod | None = Field(
        default=None,
        description=(
            "How candidate and stable are compared: auto (default): mann-whitney when both "
            "pools' measurements carry distributions (service-time per batch size), "
            "proportion for error-rate / text-pass-rate, value otherwise; mann-whitney: "
            "rank test within strata; proportion: two-proportion test; value: the ratio of "
            "the two values, as before."
        ),
    )

    @property
    def compares_with_stable(self) -> bool:
        """Whether a threshold is relative to the stable pool."""
        return (
            self.max_ratio_to_stable is not None
            or self.min_ratio_to_stable is not None
            or self.max_worse_probability is not None
        )

    @model_validator(mode="after")
    def _one_source_one_threshold(self) -> MetricSpec:
        if (self.builtin is None) == (self.query is None):
            raise ValueError(f"metric {self.name!r}: set exactly one of builtin or query")
        if all(
            t is None
            for t in (
                self.max,
                self.max_ratio_to_stable,
                self.min,
                self.min_ratio_to_stable,
                self.max_worse_probability,
            )
        ):
            raise ValueError(
                f"metric {self.name!r}: set a threshold: max or maxRatioToStable (lower is "
                "better), min or minRatioToStable (higher is better), or maxWorseProbability"
            )
        if self.max_worse_probability is not None and self.method == "value":
            raise ValueError(
                f"metric {self.name!r}: maxWorseProbability needs a stable comparison by rank "
                "or proportion; it cannot be used with method value"
            )
        if self.builtin == "service-time" and all(
            t is None for t in (self.max_ratio_to_stable, self.max_worse_probability, self.max)
        ):
            raise ValueError(
                f"metric {self.name!r}: service-time (lower is better) needs maxRatioToStable, "
                "maxWorseProbability or max"
            )
        if self.builtin in COST_METRICS and (
            (self.max is None and self.max_ratio_to_stable is None)
            or self.min is not None
            or self.min_ratio_to_stable is not None
            or self.max_worse_probability is not None
            or self.method not in (None, "auto", "value")
        ):
            raise ValueError(
                f"metric {self.name!r}: cost-per-image (USD per image, lower is better) is "
                "judged on its value with max and/or maxRatioToStable only"
            )
        if self.query is not None and (
            self.max_worse_probability is not None or self.method in ("mann-whitney", "proportion")
        ):
            raise ValueError(
                f"metric {self.name!r}: a query gives one value per pool; maxWorseProbability "
                "and method mann-whitney or proportion need a builtin"
            )
        if self.method == "proportion" and self.builtin not in RATE_METRICS:
            raise ValueError(
                f"metric {self.name!r}: method proportion is only for the error-rate and "
                "text-pass-rate builtins"
            )
        return self


def _default_metrics() -> list[MetricSpec]:
    return [
        MetricSpec(name="error-rate", builtin="error-rate", max=0.05),
        MetricSpec(name="service-time", builtin="service-time", max_ratio_to_stable=1.5),
    ]


# The routers keep samples for this long; a reference window cannot reach further back.
REFERENCE_HORIZON_SECONDS = 3600


class AnalysisSpec(ApiModel):
    """How each step is judged."""

    provider: ProviderSpec = Field(default_factory=ProviderSpec, description="Metric source.")
    min_requests: int = Field(
        default=20,
        ge=0,
        le=1000000,
        description="Fewer candidate requests in a window makes the check inconclusive, not failed.",
    )
    min_verified: int = Field(
        default=10,
        ge=0,
        le=1000000,
        description=(
            "Fewer verified renders (images whose text the OCR read and scored) in a window "
            "makes text-accuracy and text-pass-rate inconclusive, never failed."
        ),
    )
    failure_limit: int = Field(
        default=1, ge=1, le=100, description="Consecutive failed analyses before rollback."
    )
    inconclusive_limit: int = Field(
        default=5,
        ge=1,
        le=1000,
        description="Consecutive inconclusive analyses before the canary pauses itself.",
    )
    reference_lookback: str = Field(
        default="60s",
        pattern=DURATION_PATTERN,
        max_length=32,
        description=(
            "Rank and proportion tests compare the candidate's window with the stable's "
            "reference sample, which starts this long before the canary began and ends now "
            "(at most 3600 s back, the routers' horizon)."
        ),
    )
    load_match_tolerance: float = Field(
        default=0.25,
        ge=0,
        le=10,
        description=(
            "latency-p95/p99 maxRatioToStable is judged only when the pools' requests per "
            "ready replica differ by at most this fraction; otherwise inconclusive."
        ),
    )
    metrics: list[MetricSpec] = Field(
        default_factory=_default_metrics,
        max_length=16,
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["name"],
        },
        description=(
            "Checks; defaults to error-rate <= 5% and service time per image <= 1.5x the "
            "stable's (rank test by batch size)."
        ),
    )


class CanarySpec(ApiModel):
    """Desired rollout."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.stablePool != self.candidatePool",
                    "spec.candidatePool must differ from spec.stablePool",
                    ".candidatePool",
                )
            ]
        }
    )

    routing_policy: str = Field(
        pattern=DNS_LABEL_PATTERN, max_length=63, description="RoutingPolicy holding the route."
    )
    route: str = Field(pattern=DNS_LABEL_PATTERN, max_length=63, description="Route to shift.")
    stable_pool: str = Field(
        pattern=DNS_LABEL_PATTERN, max_length=63, description="Pool serving the route today."
    )
    candidate_pool: str = Field(
        pattern=DNS_LABEL_PATTERN, max_length=63, description="Pool taking over the route."
    )
    steps: list[Annotated[int, Field(ge=1, le=100)]] = Field(
        default_factory=lambda: list(DEFAULT_STEPS),
        min_length=1,
        max_length=20,
        json_schema_extra={
            "x-kubernetes-list-type": "set",
            "x-kubernetes-validations": [
                cel("self.isSorted()", "spec.steps must be strictly increasing"),
                cel(
                    "size(self) > 0 && self[size(self) - 1] == 100",
                    "spec.steps must end with exactly 100",
                ),
            ],
        },
        description="Candidate weights in percent, strictly increasing within 1-100, ending at 100.",
    )
    interval: str = Field(
        default="60s",
        pattern=DURATION_PATTERN,
        max_length=32,
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("duration(self) >= duration('1s')", "spec.interval must be at least 1s")
            ]
        },
        description="Time at each step before it is analysed, e.g. 30s, 5m.",
    )
    progress_deadline: str = Field(
        default="10m",
        pattern=DURATION_PATTERN,
        max_length=32,
        description="How long to wait for pools to be ready before the canary fails.",
    )
    scale_down_delay: str = Field(
        default="0s",
        pattern=DURATION_PATTERN,
        max_length=32,
        description="After success, wait this long before scaling the old stable pool to 0.",
    )
    analysis: AnalysisSpec = Field(default_factory=AnalysisSpec, description="Step analysis.")
    paused: bool = Field(default=False, description="Hold at the current step while true.")
    replay: ReplaySpec | None = Field(
        default=None,
        description="Pre-flight replay of golden prompts on both pools before any traffic moves.",
    )
    capacity: CapacityMode = Field(
        default="surge",
        description=(
            "surge: both pools keep their own replicas (twice the GPUs at 100%); shift: the "
            "candidate's replicas follow its weight (ceil(weight x the stable's replicas), at "
            "least 1) and the stable shrinks as weight moves, so the canary needs the "
            "stable's GPUs plus one pod. Pools with spec.autoscaling are left to their "
            "autoscaler."
        ),
    )

    @field_validator("steps")
    @classmethod
    def _steps(cls, steps: list[int]) -> list[int]:
        for i, s in enumerate(steps):
            if not 1 <= s <= 100:
                raise ValueError(f"spec.steps[{i}] = {s} must be within 1..100")
        if any(b <= a for a, b in pairwise(steps)):
            raise ValueError("spec.steps must be strictly increasing")
        if steps[-1] != 100:
            raise ValueError("spec.steps must end with exactly 100")
        return steps

    @field_validator("interval")
    @classmethod
    def _interval(cls, v: str) -> str:
        if parse_duration(v).total_seconds() < 1:
            raise ValueError("spec.interval must be at least 1s")
        return v

    @model_validator(mode="after")
    def _pools_differ(self) -> CanarySpec:
        if self.stable_pool == self.candidate_pool:
            raise ValueError("spec.candidatePool must differ from spec.stablePool")
        return self


class MetricResult(ApiModel):
    """The latest judgement of one check."""

    name: str = Field(description="Check name.")
    result: CheckResult = Field(description="pass, fail or inconclusive.")
    value: float | None = Field(default=None, description="Candidate value.")
    stable_value: float | None = Field(default=None, description="Stable pool's value.")
    threshold: float | None = Field(default=None, description="Effective limit applied.")
    samples: int | None = Field(
        default=None,
        description=(
            "Candidate samples behind the result: requests (verified renders for text "
            "metrics, images for cost-per-image) in the window; for rank tests those in "
            "strata both pools have."
        ),
    )
    stable_samples: int | None = Field(
        default=None,
        description=(
            "Stable samples compared: in the stable's reference window for rank and "
            "proportion tests, in the candidate's window otherwise."
        ),
    )
    method: str | None = Field(
        default=None,
        description="How it was judged: mann-whitney, proportion or value.",
    )
    p_value: float | None = Field(
        default=None,
        description="One-sided p-value of the rank or proportion test (candidate worse).",
    )
    worse_probability: float | None = Field(
        default=None,
        description=(
            "Effect size: P(a candidate sample is worse than a stable one), ties half; "
            "0.5 means alike."
        ),
    )
    ratio: float | None = Field(
        default=None,
        description="Candidate / stable (medians for rank tests, rates for proportions).",
    )
    message: str = Field(
        default="",
        description="Why, in words (for rank and proportion tests the verdict in full).",
    )
    informational: bool | None = Field(
        default=None,
        description="True when the check could not apply (a text metric in a window where "
        "neither pool produced a verified render, e.g. pools that draw no text): reported, "
        "but it does not hold the analysis.",
    )
    unjudged: bool | None = Field(
        default=None,
        description="True when this window could not judge a ratio-only check (unequal load "
        "per replica, or a stable serving next to nothing); see status.unjudgedMetrics.",
    )


class StepRecord(ApiModel):
    """One finished analysis, for the history."""

    step: int = Field(description="Index into spec.steps.")
    weight: int = Field(description="Candidate weight during the window.")
    result: CheckResult = Field(description="Overall result of the analysis.")
    time: str = Field(description="When it was judged (RFC 3339).")
    metrics: list[MetricResult] = Field(default_factory=list, description="Per-check results.")


class CapacityStatus(ApiModel):
    """What spec.capacity shift asked of the pools (absent under surge)."""

    full_replicas: int | None = Field(
        default=None, description="The stable's replicas when the canary began (shift's 100%)."
    )
    routed_weight: int | None = Field(
        default=None,
        description=(
            "Candidate percent the route has now: trails canaryWeight on the way back "
            "(rollback) until the stable is ready at the size that weight needs."
        ),
    )
    stable_replicas: int | None = Field(
        default=None, description="Stable replicas written (absent: left to its autoscaler)."
    )
    candidate_replicas: int | None = Field(
        default=None, description="Candidate replicas written (absent: left to its autoscaler)."
    )
    message: str = Field(default="", description="What shift is doing, in words.")


class CanaryStatus(ApiModel):
    """Observed state of a Canary; all the state machine needs survives restarts here."""

    phase: CanaryPhase | None = Field(default=None, description="Lifecycle phase.")
    current_step: int | None = Field(default=None, description="Index into spec.steps.")
    canary_weight: int | None = Field(default=None, description="Candidate traffic percent.")
    step_started_at: str | None = Field(default=None, description="When the step began.")
    started_at: str | None = Field(default=None, description="When the canary began.")
    finished_at: str | None = Field(default=None, description="When it finished.")
    failed_checks: int = Field(default=0, description="Consecutive failed analyses.")
    inconclusive_checks: int = Field(default=0, description="Consecutive inconclusive analyses.")
    unjudged_metrics: list[str] = Field(
        default_factory=list,
        description="Ratio-only checks no window of this run has judged yet; the canary "
        "holds before its 100% step while any remain.",
    )
    last_action: str | None = Field(default=None, description="Last manual action id handled.")
    metrics: list[MetricResult] = Field(
        default_factory=list, description="Latest per-check results."
    )
    history: list[StepRecord] = Field(default_factory=list, description="Analyses so far.")
    replay: ReplayStatus | None = Field(default=None, description="Pre-flight replay result.")
    capacity: CapacityStatus | None = Field(
        default=None, description="Pool sizes under spec.capacity shift."
    )
    message: str = Field(default="", description="What is happening, for people.")
    observed_generation: int | None = Field(default=None, description="Generation acted on.")
    conditions: list[Condition] = Field(default_factory=list, description="Ready, Progressing.")


class Canary(ApiModel):
    """A stepped, analysed, automatically rolled back swap of a route's pool."""

    api_version: str = Field(default="modelfleet.io/v1alpha1", alias="apiVersion")
    kind: Literal["Canary"] = "Canary"
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: CanarySpec
    status: CanaryStatus | None = None
