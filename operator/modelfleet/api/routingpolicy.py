"""RoutingPolicy: which pool serves which request, with fallbacks and admission control."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from modelfleet.api.common import DNS_LABEL_PATTERN, ApiModel, Condition, ObjectMeta, cel

# A tier's name as requests carry it (field `tier`, header X-ModelFleet-Tier).
TierName = Annotated[str, Field(pattern=DNS_LABEL_PATTERN, max_length=63)]
# The tiers a policy has when spec.tiers is empty (ModelFleet before spec.tiers):
# production, the default, ahead of preview. Their priorities are these.
BUILTIN_TIERS: tuple[tuple[str, int], ...] = (("preview", 0), ("production", 100))
BUILTIN_DEFAULT_TIER = "production"
MAX_TIERS = 16
_BUILTIN_CEL = "['preview', 'production']"
_HAS_TIERS = "(has(self.tiers) && size(self.tiers) > 0)"


class RouteMatch(ApiModel):
    """What a request must have for a route to take it. Every listed criterion must hold;
    an empty match takes everything (the catch-all)."""

    tiers: list[TierName] = Field(
        default_factory=list,
        max_length=MAX_TIERS,
        json_schema_extra={"x-kubernetes-list-type": "set"},
        description=(
            "Request tiers (field `tier` or header X-ModelFleet-Tier), each declared in "
            "spec.tiers (preview, production when spec.tiers is empty)."
        ),
    )
    tags: list[str] = Field(
        default_factory=list,
        max_length=32,
        json_schema_extra={"x-kubernetes-list-type": "set"},
        description="All of these must be in the request's `tags`.",
    )
    prompt_patterns: list[str] = Field(
        default_factory=list,
        max_length=32,
        description="Case-insensitive regular expressions; any match on the prompt selects the route.",
    )
    headers: dict[str, str] = Field(
        default_factory=dict, description="Request headers that must be present with these values."
    )

    @field_validator("prompt_patterns")
    @classmethod
    def _patterns_compile(cls, patterns: list[str]) -> list[str]:
        for i, p in enumerate(patterns):
            try:
                re.compile(p)
            except re.error as exc:
                raise ValueError(f"promptPatterns[{i}] {p!r} is not a valid regex: {exc}") from exc
        return patterns

    def is_catch_all(self) -> bool:
        return not (self.tiers or self.tags or self.prompt_patterns or self.headers)


class ShadowSpec(ApiModel):
    """Mirror a share of a route's requests to another pool; responses are discarded."""

    pool: str = Field(pattern=DNS_LABEL_PATTERN, max_length=63, description="Shadow pool.")
    percent: int = Field(default=10, ge=0, le=100, description="Share mirrored (0-100).")


VerifyExhausted = Literal["returnBest", "error"]


class VerifyOnFail(ApiModel):
    """Where and how a render that failed verification is rendered again."""

    pool: str | None = Field(
        default=None,
        pattern=DNS_LABEL_PATTERN,
        max_length=63,
        description=(
            "ModelPool that re-renders; default: the pool whose render failed. A pool that "
            "does not exist makes the policy not Ready (reason MissingPool)."
        ),
    )
    guidance_scale: float | None = Field(
        default=None,
        ge=0,
        le=30,
        description="Guidance scale of re-renders (0-30); never lower than the request's own.",
    )
    steps: int | None = Field(
        default=None,
        ge=1,
        le=500,
        description="Denoising steps of re-renders (1-500); never fewer than the request's own.",
    )


class VerifySpec(ApiModel):
    """The text gate: renders whose requested text the worker's OCR reads back below
    minWordAccuracy are rendered again (docs/verification.md, docs/router.md)."""

    min_word_accuracy: float = Field(
        ge=0,
        le=1,
        description="Share of the expected words a render must show to pass (0-1).",
    )
    max_rerenders: int = Field(
        default=1,
        ge=0,
        le=3,
        description="Most re-renders of one image (0-3); 0 only marks and counts failures.",
    )
    on_fail: VerifyOnFail = Field(
        default_factory=VerifyOnFail,
        description="Pool and stronger settings for re-renders; empty: same pool, new seed.",
    )
    on_exhausted: VerifyExhausted = Field(
        default="returnBest",
        description=(
            "When no render passed: returnBest answers 200 with the best-scoring image "
            "marked passed: false; error answers 422 text_verification_failed."
        ),
    )


class Route(ApiModel):
    """One route: a match, a pool that serves it and pools to fall back on."""

    name: str = Field(
        pattern=DNS_LABEL_PATTERN, max_length=63, description="Route name, unique in the policy."
    )
    match: RouteMatch = Field(default_factory=RouteMatch, description="Empty means catch-all.")
    pool: str = Field(
        pattern=DNS_LABEL_PATTERN, max_length=63, description="ModelPool serving this route."
    )
    fallbacks: list[str] = Field(
        default_factory=list,
        max_length=8,
        description="ModelPools tried in order when the pool fails or has no ready workers.",
    )
    shadow: ShadowSpec | None = Field(default=None, description="Optional shadow traffic.")
    verify: VerifySpec | None = Field(
        default=None,
        description="Optional text gate: re-render images whose requested text reads wrong.",
    )


class AdmissionSpec(ApiModel):
    """Load shedding: beyond these limits requests get 429 at once."""

    max_in_flight: int = Field(
        default=64, ge=1, le=100000, description="Requests forwarded at once (1-100000)."
    )
    max_queue: int = Field(
        default=256, ge=0, le=100000, description="Requests waiting for a slot (0-100000)."
    )
    queue_timeout_ms: int = Field(
        default=30000, ge=0, le=600000, description="Longest wait for a slot (0-600000 ms)."
    )


class TierDegrade(ApiModel):
    """Where a tier's requests go instead of being refused: routed again as that tier
    (its routes and pools; the request keeps its own tier's queue priority and budget)."""

    slow: str | None = Field(
        default=None,
        pattern=DNS_LABEL_PATTERN,
        max_length=63,
        description=(
            "Tier to route as when the expected wait exceeds latencyBudgetMs; unset: "
            "refuse with 429 latency_budget_exceeded."
        ),
    )
    budget: str | None = Field(
        default=None,
        pattern=DNS_LABEL_PATTERN,
        max_length=63,
        description=(
            "Tier to route as when the client key's spend budget is used up; unset: "
            "refuse with 429 budget_exceeded."
        ),
    )


class TierSpec(ApiModel):
    """One request tier: its queue priority and latency budget."""

    name: str = Field(
        pattern=DNS_LABEL_PATTERN,
        max_length=63,
        description="Tier name as requests carry it (field `tier`, header X-ModelFleet-Tier).",
    )
    priority: int = Field(
        default=0,
        ge=0,
        le=1000,
        description=(
            "Admission order (0-1000): higher tiers are served first and shed last; a full "
            "queue drops the newest waiter of the lowest priority for a higher one."
        ),
    )
    latency_budget_ms: int | None = Field(
        default=None,
        ge=1,
        le=600000,
        description=(
            "Longest expected time to answer (1-600000 ms): wait for a slot plus the "
            "route's recent time per request. Beyond it the request is refused at once "
            "(429 latency_budget_exceeded) or degraded (degradeTo.slow). Unset: no budget."
        ),
    )
    degrade_to: TierDegrade | None = Field(
        default=None, description="Tiers to route as instead of refusing: on slow, on budget."
    )


_ROUTE_TIERS = (
    "spec.routes[].match.tiers must name tiers declared in spec.tiers "
    "(preview or production when spec.tiers is empty)"
)
_DEFAULT_TIER = (
    "spec.defaultTier must name a tier declared in spec.tiers "
    "(preview or production when spec.tiers is empty)"
)
_DEGRADE_DECLARED = "spec.tiers[].degradeTo.slow and .budget must name tiers declared in spec.tiers"
_DEGRADE_LOWER = (
    "spec.tiers[].degradeTo.slow and .budget must name a tier of lower priority "
    "(degrading only goes down, so it never loops)"
)


def _declared(ref: str) -> str:
    return f"({_HAS_TIERS} ? self.tiers.exists(d, d.name == {ref}) : {ref} in {_BUILTIN_CEL})"


def _degrade_rule(kind: str) -> str:
    return f"!has(t.degradeTo.{kind}) || self.tiers.exists(d, d.name == t.degradeTo.{kind})"


def _lower_rule(kind: str) -> str:
    return (
        f"!has(t.degradeTo.{kind}) || "
        f"self.tiers.all(d, d.name != t.degradeTo.{kind} || d.priority < t.priority)"
    )


_CEL_RULES: list[Any] = [
    cel(
        "self.routes.all(r, !has(r.match) || !has(r.match.tiers) || "
        f"r.match.tiers.all(t, {_declared('t')}))",
        _ROUTE_TIERS,
        ".routes",
    ),
    cel(
        f"!has(self.defaultTier) || {_declared('self.defaultTier')}", _DEFAULT_TIER, ".defaultTier"
    ),
    cel(
        "!has(self.tiers) || self.tiers.all(t, !has(t.degradeTo) || "
        f"(({_degrade_rule('slow')}) && ({_degrade_rule('budget')})))",
        _DEGRADE_DECLARED,
        ".tiers",
    ),
    cel(
        "!has(self.tiers) || self.tiers.all(t, !has(t.degradeTo) || "
        f"(({_lower_rule('slow')}) && ({_lower_rule('budget')})))",
        _DEGRADE_LOWER,
        ".tiers",
    ),
]


class AccessSpec(ApiModel):
    """Who may send requests through this policy (docs/clients.md#keys)."""

    anonymous: bool = Field(
        default=False,
        description=(
            "Serve requests without a client key (Authorization: Bearer KEY). Default false: "
            "a router run with --client-auth keys answers them 401 invalid_api_key."
        ),
    )


class RoutingPolicySpec(ApiModel):
    """Desired routing."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": _CEL_RULES})

    routes: list[Route] = Field(
        min_length=1,
        max_length=64,
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["name"],
        },
        description="Routes in order; the first match wins, the catch-all belongs last.",
    )
    admission: AdmissionSpec = Field(default_factory=AdmissionSpec, description="Admission.")
    access: AccessSpec = Field(
        default_factory=AccessSpec,
        description="Client keys: whether anonymous requests are served.",
    )
    tiers: list[TierSpec] = Field(
        default_factory=list,
        max_length=MAX_TIERS,
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["name"],
        },
        description=(
            "Request tiers with their priority and latency budget (docs/clients.md). "
            "Empty: preview (priority 0) and production (priority 100)."
        ),
    )
    default_tier: str | None = Field(
        default=None,
        pattern=DNS_LABEL_PATTERN,
        max_length=63,
        description=(
            "Tier of requests that name none; default: the first of spec.tiers "
            "(production when spec.tiers is empty)."
        ),
    )

    @model_validator(mode="after")
    def _unique_names(self) -> RoutingPolicySpec:
        seen: set[str] = set()
        for i, route in enumerate(self.routes):
            if route.name in seen:
                raise ValueError(f"spec.routes[{i}].name {route.name!r} is not unique")
            seen.add(route.name)
        return self

    @model_validator(mode="after")
    def _tiers_declared(self) -> RoutingPolicySpec:
        names = self.tier_names()
        listed = ", ".join(names)
        by_name: dict[str, TierSpec] = {}
        for i, tier in enumerate(self.tiers):
            if tier.name in by_name:
                raise ValueError(f"spec.tiers[{i}].name {tier.name!r} is not unique")
            by_name[tier.name] = tier
        for i, route in enumerate(self.routes):
            for j, t in enumerate(route.match.tiers):
                if t not in names:
                    raise ValueError(
                        f"spec.routes[{i}].match.tiers[{j}] {t!r} is not a declared tier "
                        f"({listed}); {_ROUTE_TIERS}"
                    )
        if self.default_tier is not None and self.default_tier not in names:
            raise ValueError(
                f"spec.defaultTier {self.default_tier!r} is not a declared tier ({listed})"
            )
        for kind in ("slow", "budget"):
            for i, tier in enumerate(self.tiers):
                target = getattr(tier.degrade_to, kind) if tier.degrade_to else None
                if target is not None and target not in by_name:
                    raise ValueError(
                        f"spec.tiers[{i}].degradeTo.{kind} {target!r} is not a declared tier "
                        f"({listed})"
                    )
                if target is not None and by_name[target].priority >= tier.priority:
                    raise ValueError(
                        f"spec.tiers[{i}].degradeTo.{kind} {target!r} has priority "
                        f"{by_name[target].priority}, not below {tier.priority} of "
                        f"{tier.name!r}; {_DEGRADE_LOWER}"
                    )
        return self

    def tier_names(self) -> tuple[str, ...]:
        """The tiers requests may name, in the order declared."""
        if self.tiers:
            return tuple(t.name for t in self.tiers)
        return tuple(name for name, _ in BUILTIN_TIERS)


class PoolWeight(ApiModel):
    """A pool and its share of a route's traffic."""

    pool: str = Field(description="ModelPool name.")
    weight: int = Field(ge=0, le=100, description="Percent of the route's traffic.")


class CompiledRoute(ApiModel):
    """A route as the router applies it, with canary weights folded in."""

    name: str = Field(description="Route name.")
    pools: list[PoolWeight] = Field(default_factory=list, description="Weighted pools.")
    fallbacks: list[str] = Field(default_factory=list, description="Fallback pools in order.")


class RoutingPolicyStatus(ApiModel):
    """Observed state of a RoutingPolicy."""

    observed_generation: int | None = Field(default=None, description="Generation compiled.")
    conditions: list[Condition] = Field(default_factory=list, description="Ready, Degraded.")
    routes: list[CompiledRoute] = Field(
        default_factory=list, description="The compiled route table with current weights."
    )


class RoutingPolicy(ApiModel):
    """Routes image requests to model pools by intent."""

    api_version: str = Field(default="modelfleet.io/v1alpha1", alias="apiVersion")
    kind: Literal["RoutingPolicy"] = "RoutingPolicy"
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: RoutingPolicySpec
    status: RoutingPolicyStatus | None = None
