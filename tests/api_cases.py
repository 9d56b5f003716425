"""Valid examples and invalid manifests shared by the pydantic unit tests and
the admission integration tests: both layers must reject the same things."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def example(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((EXAMPLES / name).read_text())
    return data


def example_files() -> list[Path]:
    return sorted(EXAMPLES.glob("*.yaml"))


def example_docs(path: Path) -> list[dict[str, Any]]:
    """Every document of an example file (a Canary's golden ConfigMap may sit beside it)."""
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@dataclass(frozen=True)
class Invalid:
    id: str
    base: str  # example file the case mutates
    path: tuple[str | int, ...]  # where to set the value (None deletes)
    value: Any
    field: str  # the API server's message must name this field

    def manifest(self) -> dict[str, Any]:
        doc = copy.deepcopy(example(self.base))
        target: Any = doc
        for key in self.path[:-1]:
            target = target[key]
        last = self.path[-1]
        if self.value is DELETE:
            del target[last]
        else:
            target[last] = self.value
        return doc


DELETE = object()
POOL, POLICY, CANARY = "modelpool-production.yaml", "routingpolicy.yaml", "canary.yaml"
HOSTED, OPENAI = "modelpool-ideogram.yaml", "modelpool-openai.yaml"
AUTO = "modelpool-autoscaled.yaml"
TIERS = "routingpolicy-tiers.yaml"
_AS = ("spec", "autoscaling")


def _auto(id: str, key: str, value: Any, field: str | None = None) -> Invalid:
    return Invalid(id, AUTO, (*_AS, key), value, field or f"spec.autoscaling.{key}")


INVALID: list[Invalid] = [
    # ModelPool
    Invalid("pool-family-enum", POOL, ("spec", "model", "family"), "dalle", "spec.model.family"),
    Invalid("pool-source-required", POOL, ("spec", "model", "source"), DELETE, "spec.model.source"),
    Invalid(
        "pool-source-scheme", POOL, ("spec", "model", "source"), "ftp://x/y", "spec.model.source"
    ),
    Invalid("pool-dtype-enum", POOL, ("spec", "model", "dtype"), "int4", "spec.model.dtype"),
    Invalid("pool-replicas-max", POOL, ("spec", "replicas"), 1001, "spec.replicas"),
    Invalid("pool-replicas-negative", POOL, ("spec", "replicas"), -1, "spec.replicas"),
    Invalid(
        "pool-batch-max",
        POOL,
        ("spec", "batching", "maxBatchSize"),
        65,
        "spec.batching.maxBatchSize",
    ),
    Invalid(
        "pool-batch-zero",
        POOL,
        ("spec", "batching", "maxBatchSize"),
        0,
        "spec.batching.maxBatchSize",
    ),
    Invalid(
        "pool-latency-max",
        POOL,
        ("spec", "batching", "maxLatencyMs"),
        10001,
        "spec.batching.maxLatencyMs",
    ),
    Invalid("pool-gpu-count", POOL, ("spec", "gpu", "count"), 17, "spec.gpu.count"),
    Invalid(
        "pool-vae-family", POOL, ("spec", "model", "vae", "family"), "sd3", "spec.model.vae.family"
    ),
    Invalid("pool-unknown-field", POOL, ("spec", "replica"), 3, "replica"),
    Invalid("pool-type", POOL, ("spec", "replicas"), "three", "spec.replicas"),
    Invalid(
        "pool-model-name-pattern",
        POOL,
        ("spec", "modelNames"),
        ["sd3.5-medium", "SD_3"],
        "spec.modelNames[1]",
    ),
    Invalid(
        "pool-model-name-duplicate",
        POOL,
        ("spec", "modelNames"),
        ["sd3.5", "sd3.5"],
        "spec.modelNames[1]",
    ),
    Invalid(
        "pool-model-names-max",
        POOL,
        ("spec", "modelNames"),
        [f"m{i}" for i in range(17)],
        "spec.modelNames",
    ),
    # ModelPool: spec.autoscaling
    _auto("pool-autoscaling-min-over-max", "minReplicas", 5),
    _auto("pool-autoscaling-min-negative", "minReplicas", -1),
    _auto("pool-autoscaling-max-zero", "maxReplicas", 0),
    _auto("pool-autoscaling-max-required", "maxReplicas", DELETE, "maxReplicas"),
    _auto("pool-autoscaling-target-zero", "target", 0),
    _auto("pool-autoscaling-metric-enum", "metric", "cpu"),
    _auto("pool-autoscaling-window-format", "stableWindow", "a minute"),
    _auto("pool-autoscaling-panic-window-long", "panicWindow", "2m"),
    _auto("pool-autoscaling-panic-threshold", "panicThreshold", 0.5),
    _auto("pool-autoscaling-zero-delay-max", "scaleToZeroDelay", "25h"),
    _auto("pool-autoscaling-step-zero", "maxScaleDownStep", 0),
    _auto("pool-autoscaling-unknown-field", "minimum", 1, "minimum"),
    Invalid("pool-autoscaling-replicas-over-max", AUTO, ("spec", "replicas"), 9, "spec.replicas"),
    # ModelPool: diffusers vs hosted fields, credentials only by Secret reference
    Invalid("pool-backend-enum", HOSTED, ("spec", "backend"), "midjourney", "spec.backend"),
    Invalid("pool-diffusers-needs-model", POOL, ("spec", "model"), DELETE, "spec.model"),
    Invalid(
        "pool-diffusers-no-provider",
        POOL,
        ("spec", "provider"),
        {"model": "gpt-image-1"},
        "spec.provider",
    ),
    Invalid("pool-hosted-needs-provider", HOSTED, ("spec", "provider"), DELETE, "spec.provider"),
    Invalid(
        "pool-hosted-no-model",
        HOSTED,
        ("spec", "model"),
        {"source": "file:///m"},
        "spec.model",
    ),
    Invalid("pool-hosted-no-gpu", HOSTED, ("spec", "gpu"), {"count": 1}, "spec.gpu"),
    Invalid(
        "pool-hosted-no-batching",
        OPENAI,
        ("spec", "batching"),
        {"maxBatchSize": 2},
        "spec.batching",
    ),
    Invalid("pool-hosted-no-cost", OPENAI, ("spec", "cost"), {"gpuHourPrice": 2.5}, "spec.cost"),
    Invalid(
        "pool-hosted-needs-credentials",
        OPENAI,
        ("spec", "provider", "credentials"),
        DELETE,
        "spec.provider.credentials",
    ),
    Invalid(
        "pool-compatible-needs-endpoint",
        OPENAI,
        ("spec",),
        {"backend": "openai-compatible", "provider": {"model": "flux-schnell"}},
        "spec.provider.endpoint",
    ),
    Invalid(
        "pool-ideogram-model",
        HOSTED,
        ("spec", "provider", "model"),
        "V_4",
        "spec.provider.model",
    ),
    Invalid(
        "pool-endpoint-no-userinfo",
        OPENAI,
        ("spec", "provider", "endpoint"),
        "https://user:sk-abc@api.openai.com/v1",
        "spec.provider.endpoint",
    ),
    Invalid(
        "pool-endpoint-no-query-key",
        OPENAI,
        ("spec", "provider", "endpoint"),
        "https://generativelanguage.googleapis.com/v1beta?key=AIzaSyD",
        "spec.provider.endpoint",
    ),
    Invalid(
        "pool-literal-key-field",
        OPENAI,
        ("spec", "provider", "apiKey"),
        "sk-proj-abcdefghijklmnopqrstuvwx",
        "apiKey",
    ),
    Invalid(
        "pool-credentials-literal",
        OPENAI,
        ("spec", "provider", "credentials"),
        "sk-proj-abcdefghijklmnopqrstuvwx",
        "spec.provider.credentials",
    ),
    Invalid(
        "pool-env-key-name",
        OPENAI,
        ("spec", "worker"),
        {"env": [{"name": "OPENAI_API_KEY", "value": "x"}]},
        "spec.worker.env[0].name",
    ),
    Invalid(
        "pool-env-key-value",
        POOL,
        ("spec", "worker", "env", 0, "value"),
        "AIzaSyA1234567890abcdefghijklmnopqrstuv",
        "spec.worker.env[0].value",
    ),
    Invalid(
        "pool-args-key",
        OPENAI,
        ("spec", "worker"),
        {"args": ["--verbose", "sk-proj-abcdefghijklmnopqrstuvwx"]},
        "spec.worker.args",
    ),
    Invalid(
        "pool-args-key-flag",
        OPENAI,
        ("spec", "worker"),
        {"args": ["--api-key=abc"]},
        "spec.worker.args",
    ),
    Invalid(
        "pool-concurrency-max",
        OPENAI,
        ("spec", "provider", "maxConcurrency"),
        257,
        "spec.provider.maxConcurrency",
    ),
    Invalid(
        "pool-rpm-min",
        OPENAI,
        ("spec", "provider", "requestsPerMinute"),
        0,
        "spec.provider.requestsPerMinute",
    ),
    Invalid(
        "pool-size-policy-enum",
        OPENAI,
        ("spec", "provider", "sizePolicy"),
        "crop",
        "spec.provider.sizePolicy",
    ),
    Invalid(
        "pool-quality-enum",
        OPENAI,
        ("spec", "provider", "defaults", "quality"),
        "ultra",
        "spec.provider.defaults.quality",
    ),
    Invalid(
        "pool-price-negative",
        OPENAI,
        ("spec", "provider", "price", "overrides", 0, "usdPerImage"),
        -0.1,
        "spec.provider.price.overrides[0].usdPerImage",
    ),
    Invalid("pool-gpu-price-negative", POOL, ("spec", "cost"), {"gpuHourPrice": -1}, "spec.cost"),
    # RoutingPolicy
    Invalid("policy-no-routes", POLICY, ("spec", "routes"), [], "spec.routes"),
    Invalid(
        "policy-duplicate-route",
        POLICY,
        ("spec", "routes"),
        [{"name": "a", "pool": "x"}, {"name": "a", "pool": "y"}],
        "spec.routes[1]",
    ),
    Invalid(
        "policy-route-name",
        POLICY,
        ("spec", "routes", 0, "name"),
        "Bad_Name",
        "spec.routes[0].name",
    ),
    Invalid(
        "policy-tier-undeclared",
        POLICY,
        ("spec", "routes", 1, "match", "tiers"),
        ["draft"],
        "spec.routes[].match.tiers",
    ),
    Invalid(
        "policy-tier-name",
        POLICY,
        ("spec", "routes", 1, "match", "tiers"),
        ["Draft_1"],
        "spec.routes[1].match.tiers[0]",
    ),
    # RoutingPolicy: declared tiers (spec.tiers)
    Invalid(
        "policy-tiers-duplicate",
        TIERS,
        ("spec", "tiers"),
        [{"name": "production"}, {"name": "preview"}, {"name": "preview"}],
        "spec.tiers[2]",
    ),
    Invalid(
        "policy-tiers-name", TIERS, ("spec", "tiers", 1, "name"), "Pre_view", "spec.tiers[1].name"
    ),
    Invalid(
        "policy-tiers-route-undeclared",
        TIERS,
        ("spec", "tiers"),
        [{"name": "production", "priority": 100}],
        "spec.routes[].match.tiers",
    ),
    Invalid("policy-default-tier", TIERS, ("spec", "defaultTier"), "gold", "spec.defaultTier"),
    Invalid(
        "policy-default-tier-builtin", POLICY, ("spec", "defaultTier"), "gold", "spec.defaultTier"
    ),
    Invalid(
        "policy-tiers-priority-max",
        TIERS,
        ("spec", "tiers", 0, "priority"),
        1001,
        "spec.tiers[0].priority",
    ),
    Invalid(
        "policy-tiers-budget-min",
        TIERS,
        ("spec", "tiers", 1, "latencyBudgetMs"),
        0,
        "spec.tiers[1].latencyBudgetMs",
    ),
    Invalid(
        "policy-degrade-undeclared",
        TIERS,
        ("spec", "tiers", 0, "degradeTo"),
        {"slow": "draft"},
        "spec.tiers[].degradeTo",
    ),
    Invalid(
        "policy-degrade-self",
        TIERS,
        ("spec", "tiers", 0, "degradeTo"),
        {"budget": "production"},
        "spec.tiers[].degradeTo",
    ),
    Invalid(
        "policy-degrade-up",  # a tier of higher priority: two such would loop
        TIERS,
        ("spec", "tiers", 1, "degradeTo"),
        {"slow": "production"},
        "spec.tiers[].degradeTo",
    ),
    Invalid(
        "policy-degrade-unknown-field",
        TIERS,
        ("spec", "tiers", 0, "degradeTo"),
        {"onSlow": "preview"},
        "onSlow",
    ),
    Invalid(
        "policy-inflight-min",
        POLICY,
        ("spec", "admission", "maxInFlight"),
        0,
        "spec.admission.maxInFlight",
    ),
    Invalid("policy-unknown-field", POLICY, ("spec", "routes", 0, "weight"), 5, "weight"),
    *(
        Invalid(f"policy-verify-{id_}", POLICY, ("spec", "routes", 0, "verify"), v, where)
        for id_, v, where in [
            ("accuracy-required", {}, "spec.routes[0].verify.minWordAccuracy"),
            ("accuracy-above", {"minWordAccuracy": 1.5}, "spec.routes[0].verify.minWordAccuracy"),
            (
                "accuracy-negative",
                {"minWordAccuracy": -0.1},
                "spec.routes[0].verify.minWordAccuracy",
            ),
            ("accuracy-type", {"minWordAccuracy": "high"}, "spec.routes[0].verify.minWordAccuracy"),
            (
                "rerenders-max",
                {"minWordAccuracy": 0.9, "maxRerenders": 4},
                "spec.routes[0].verify.maxRerenders",
            ),
            (
                "rerenders-negative",
                {"minWordAccuracy": 0.9, "maxRerenders": -1},
                "spec.routes[0].verify.maxRerenders",
            ),
            (
                "exhausted-enum",
                {"minWordAccuracy": 0.9, "onExhausted": "retry"},
                "spec.routes[0].verify.onExhausted",
            ),
            (
                "onfail-pool",
                {"minWordAccuracy": 0.9, "onFail": {"pool": "Typo_Pool"}},
                "spec.routes[0].verify.onFail.pool",
            ),
            (
                "onfail-guidance",
                {"minWordAccuracy": 0.9, "onFail": {"guidanceScale": 31}},
                "spec.routes[0].verify.onFail.guidanceScale",
            ),
            (
                "onfail-steps",
                {"minWordAccuracy": 0.9, "onFail": {"steps": 0}},
                "spec.routes[0].verify.onFail.steps",
            ),
            ("unknown-field", {"minWordAccuracy": 0.9, "threshold": 1}, "threshold"),
        ]
    ),
    # Canary
    Invalid(
        "canary-same-pools", CANARY, ("spec", "candidatePool"), "production", "spec.candidatePool"
    ),
    Invalid("canary-steps-order", CANARY, ("spec", "steps"), [10, 60, 30, 100], "spec.steps"),
    Invalid("canary-steps-duplicate", CANARY, ("spec", "steps"), [10, 10, 100], "spec.steps"),
    Invalid("canary-steps-last", CANARY, ("spec", "steps"), [10, 30, 60], "spec.steps"),
    Invalid("canary-steps-range", CANARY, ("spec", "steps"), [0, 50, 100], "spec.steps[0]"),
    Invalid("canary-steps-above", CANARY, ("spec", "steps"), [50, 100, 101], "spec.steps[2]"),
    Invalid("canary-interval-format", CANARY, ("spec", "interval"), "5 minutes", "spec.interval"),
    Invalid("canary-interval-min", CANARY, ("spec", "interval"), "500ms", "spec.interval"),
    Invalid(
        "canary-provider-enum",
        CANARY,
        ("spec", "analysis", "provider", "type"),
        "datadog",
        "spec.analysis.provider.type",
    ),
    Invalid(
        "canary-prometheus-address",
        CANARY,
        ("spec", "analysis", "provider"),
        {"type": "prometheus"},
        "spec.analysis.provider.address",
    ),
    Invalid(
        "canary-metric-source",
        CANARY,
        ("spec", "analysis", "metrics"),
        [{"name": "m", "max": 1}],
        "spec.analysis.metrics[0]",
    ),
    Invalid(
        "canary-metric-threshold",
        CANARY,
        ("spec", "analysis", "metrics"),
        [{"name": "m", "builtin": "error-rate"}],
        "spec.analysis.metrics[0]",
    ),
    Invalid("canary-route-required", CANARY, ("spec", "route"), DELETE, "spec.route"),
    Invalid(
        "canary-text-metric-threshold",
        CANARY,
        ("spec", "analysis", "metrics"),
        [{"name": "t", "builtin": "text-accuracy"}],
        "spec.analysis.metrics[0]",
    ),
    Invalid(
        "canary-metric-min-negative",
        CANARY,
        ("spec", "analysis", "metrics"),
        [{"name": "t", "builtin": "text-pass-rate", "min": -0.5}],
        "spec.analysis.metrics[0].min",
    ),
    Invalid(
        "canary-metric-min-ratio-zero",
        CANARY,
        ("spec", "analysis", "metrics"),
        [{"name": "t", "builtin": "text-accuracy", "minRatioToStable": 0}],
        "spec.analysis.metrics[0].minRatioToStable",
    ),
    Invalid(
        "canary-builtin-enum",
        CANARY,
        ("spec", "analysis", "metrics"),
        [{"name": "t", "builtin": "text-vibes", "min": 0.5}],
        "spec.analysis.metrics[0].builtin",
    ),
    Invalid(
        "canary-min-verified-negative",
        CANARY,
        ("spec", "analysis", "minVerified"),
        -1,
        "spec.analysis.minVerified",
    ),
    # Canary: rank and proportion tests
    Invalid(
        "canary-alpha-range",
        CANARY,
        ("spec", "analysis", "metrics"),
        [{"name": "s", "builtin": "service-time", "maxRatioToStable": 1.2, "alpha": 1}],
        "spec.analysis.metrics[0].alpha",
    ),
    Invalid(
        "canary-worse-probability-range",
        CANARY,
        ("spec", "analysis", "metrics"),
        [{"name": "s", "builtin": "service-time", "maxWorseProbability": 0.5}],
        "spec.analysis.metrics[0].maxWorseProbability",
    ),
    Invalid(
        "canary-worse-probability-value-method",
        CANARY,
        ("spec", "analysis", "metrics"),
        [{"name": "s", "builtin": "service-time", "maxWorseProbability": 0.7, "method": "value"}],
        "spec.analysis.metrics[0].maxWorseProbability",
    ),
    Invalid(
        "canary-worse-probability-query",
        CANARY,
        ("spec", "analysis", "metrics"),
        [{"name": "q", "query": "x", "maxWorseProbability": 0.7}],
        "spec.analysis.metrics[0]",
    ),
    Invalid(
        "canary-service-time-threshold",
        CANARY,
        ("spec", "analysis", "metrics"),
        [{"name": "s", "builtin": "service-time", "min": 0.01}],
        "spec.analysis.metrics[0]",
    ),
    Invalid(
        "canary-method-enum",
        CANARY,
        ("spec", "analysis", "metrics"),
        [{"name": "s", "builtin": "service-time", "maxRatioToStable": 1.2, "method": "t-test"}],
        "spec.analysis.metrics[0].method",
    ),
    Invalid(
        "canary-proportion-method-latency",
        CANARY,
        ("spec", "analysis", "metrics"),
        [{"name": "p", "builtin": "latency-p95", "maxRatioToStable": 1.2, "method": "proportion"}],
        "spec.analysis.metrics[0].method",
    ),
    Invalid(
        "canary-min-samples-zero",
        CANARY,
        ("spec", "analysis", "metrics"),
        [{"name": "s", "builtin": "service-time", "maxRatioToStable": 1.2, "minSamples": 0}],
        "spec.analysis.metrics[0].minSamples",
    ),
    Invalid(
        "canary-reference-lookback-format",
        CANARY,
        ("spec", "analysis", "referenceLookback"),
        "a minute",
        "spec.analysis.referenceLookback",
    ),
    Invalid(
        "canary-load-tolerance-negative",
        CANARY,
        ("spec", "analysis", "loadMatchTolerance"),
        -0.1,
        "spec.analysis.loadMatchTolerance",
    ),
]
