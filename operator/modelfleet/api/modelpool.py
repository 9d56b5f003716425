"""ModelPool: a pool of GPU workers serving one diffusion model, or of CPU-only
adapters in front of a hosted image API (spec.backend)."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from modelfleet.api.autoscaling import AutoscalingSpec
from modelfleet.api.common import ApiModel, Condition, ObjectMeta, cel
from modelfleet.api.hosted import (
    HOSTED_BACKENDS,
    IDEOGRAM_MODELS,
    KEY_NAME_RE,
    KEY_VALUE_RE,
    KEYED_BACKENDS,
    SECRET_KEY_PATTERN,
    SECRET_NAME_PATTERN,
    Backend,
    CostSpec,
    ProviderSpec,
    looks_like_key_name,
    looks_like_key_value,
)

ModelFamily = Literal["sd15", "sdxl", "sd3", "flux", "custom"]
SOURCE_PATTERN = r"^(file|pvc|hf|s3)://.+$"
# Names clients pass as `model` (sd3.5-medium, gpt-image-1): DNS labels plus dots.
MODEL_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
ModelName = Annotated[str, Field(pattern=MODEL_NAME_PATTERN, max_length=63)]

# Latent channels per family: a VAE from another latent space fails only at
# decode time, so the operator refuses the pairing up front.
LATENT_CHANNELS: dict[str, int] = {"sd15": 4, "sdxl": 4, "sd3": 16, "flux": 16}
# Same channel count, different scaling factor: still a mismatch.
VAE_COMPATIBLE: dict[str, frozenset[str]] = {
    "sd15": frozenset({"sd15"}),
    "sdxl": frozenset({"sdxl"}),
    "sd3": frozenset({"sd3"}),
    "flux": frozenset({"flux"}),
}


class VaeSpec(ApiModel):
    """A VAE to pair with the denoiser instead of the one shipped with the model."""

    source: str = Field(
        pattern=SOURCE_PATTERN,
        description="Where the VAE weights live: file://, pvc://, hf:// or s3:// URI.",
    )
    family: ModelFamily = Field(
        description="The latent space the VAE was trained for; must match spec.model.family.",
    )


def _secret_key(default: str, what: str) -> Any:
    return Field(
        default=default,
        pattern=SECRET_KEY_PATTERN,
        max_length=253,
        description=f"The key in the Secret holding {what} (default {default}).",
    )


class ModelCredentials(ApiModel):
    """A Secret in the pool's namespace with what the model store asks for: a Hub
    token (hf://), or an access key, its secret and an endpoint (s3://: AWS, MinIO,
    R2). Its values reach the fetch step and the worker as secretKeyRef env only."""

    name: str = Field(pattern=SECRET_NAME_PATTERN, max_length=253, description="The Secret's name.")
    token_key: str = _secret_key("HF_TOKEN", "the Hugging Face Hub token (hf://)")
    access_key_id_key: str = _secret_key("AWS_ACCESS_KEY_ID", "the access key id (s3://)")
    secret_access_key_key: str = _secret_key(
        "AWS_SECRET_ACCESS_KEY", "the secret access key (s3://)"
    )
    endpoint_key: str = _secret_key(
        "AWS_ENDPOINT_URL", "the S3 endpoint URL, for MinIO or R2 (s3://; optional in the Secret)"
    )
    region_key: str = _secret_key(
        "AWS_REGION", "the S3 signing region, e.g. auto for R2 (s3://; optional in the Secret)"
    )


class ModelSpec(ApiModel):
    """Which model the workers load and how."""

    family: ModelFamily = Field(
        default="custom",
        description="Model family: sd15, sdxl, sd3, flux or custom. Drives VAE checks.",
    )
    source: str = Field(
        pattern=SOURCE_PATTERN,
        json_schema_extra={"minLength": 1},
        description=(
            "Where the pipeline lives: file:///path, pvc://claim/path, hf://org/repo or "
            "s3://bucket/prefix."
        ),
    )
    revision: str | None = Field(
        default=None, max_length=128, description="Revision (hub commit, tag or object version)."
    )
    dtype: Literal["float32", "float16", "bfloat16"] = Field(
        default="float16", description="Weights and compute precision: float32, float16, bfloat16."
    )
    vae: VaeSpec | None = Field(default=None, description="Optional replacement VAE.")
    credentials: ModelCredentials | None = Field(
        default=None,
        description="Secret with the Hub token (hf://) or S3 keys and endpoint (s3://); "
        "needed for gated or private models.",
    )


class GpuSpec(ApiModel):
    """GPUs per worker pod and which kind."""

    count: int = Field(default=1, ge=0, le=16, description="nvidia.com/gpu per pod (0-16).")
    product: str | None = Field(
        default=None,
        max_length=128,
        description="Required GPU product label (nvidia.com/gpu.product), e.g. NVIDIA-H100-80GB-HBM3.",
    )


class BatchingSpec(ApiModel):
    """Adaptive micro-batching settings passed to each worker."""

    max_batch_size: int = Field(default=4, ge=1, le=64, description="Largest batch (1-64).")
    max_latency_ms: int = Field(
        default=80, ge=0, le=10000, description="Longest a request waits for a batch (0-10000 ms)."
    )
    memory_aware: bool = Field(
        default=True, description="Cap the batch by free GPU memory measured at run time."
    )


class LimitsSpec(ApiModel):
    """Request limits enforced by the workers."""

    max_resolution: int = Field(
        default=1024, ge=64, le=8192, description="Largest width or height in pixels (64-8192)."
    )
    max_steps: int = Field(default=50, ge=1, le=500, description="Most denoising steps (1-500).")


_NO_SECRET = "keys reach the worker only from a Secret (spec.provider.credentials)"


class KeyRef(ApiModel):
    """One key of a Secret or ConfigMap in the pool's namespace."""

    name: str = Field(pattern=SECRET_NAME_PATTERN, max_length=253, description="Object name.")
    key: str = Field(pattern=SECRET_KEY_PATTERN, max_length=253, description="Key in it.")
    optional: bool = Field(default=False, description="Start the pod even if it is missing.")


_ONE_SOURCE = "spec.worker.env[].valueFrom takes exactly one of secretKeyRef and configMapKeyRef"
_ONE_VALUE = "spec.worker.env[] takes exactly one of value and valueFrom"


class EnvVarSource(ApiModel):
    """Where a variable's value comes from: a Secret's key or a ConfigMap's key."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("has(self.secretKeyRef) != has(self.configMapKeyRef)", _ONE_SOURCE)
            ]
        }
    )

    secret_key_ref: KeyRef | None = Field(default=None, description="A key of a Secret.")
    config_map_key_ref: KeyRef | None = Field(default=None, description="A key of a ConfigMap.")

    @model_validator(mode="after")
    def _exactly_one(self) -> EnvVarSource:
        if (self.secret_key_ref is None) == (self.config_map_key_ref is None):
            raise ValueError(_ONE_SOURCE)
        return self


class EnvVar(ApiModel):
    """An environment variable for the worker container."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("!has(self.valueFrom) || self.value == ''", _ONE_VALUE, ".valueFrom"),
                cel(
                    f"self.value == '' || !self.name.matches('{KEY_NAME_RE}')",
                    f"spec.worker.env[].name names a credential; {_NO_SECRET}",
                    ".name",
                ),
                cel(
                    f"!self.value.matches('{KEY_VALUE_RE}')",
                    f"spec.worker.env[].value looks like an API key; {_NO_SECRET}",
                    ".value",
                ),
            ]
        }
    )

    name: str = Field(
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=256, description="Variable name."
    )
    value: str = Field(default="", max_length=4096, description="Variable value.")
    value_from: EnvVarSource | None = Field(
        default=None,
        description="Take the value from a Secret or ConfigMap key instead (not with value).",
    )

    @model_validator(mode="after")
    def _no_literal_key(self) -> EnvVar:
        if self.value_from is not None and self.value:
            raise ValueError(_ONE_VALUE)
        if self.value and looks_like_key_name(self.name):
            raise ValueError(f"spec.worker.env[].name names a credential; {_NO_SECRET}")
        if looks_like_key_value(self.value):
            raise ValueError(f"spec.worker.env[].value looks like an API key; {_NO_SECRET}")
        return self


WorkerArg = Annotated[str, Field(max_length=4096)]


class WorkerSpec(ApiModel):
    """Extra settings passed straight to the worker container."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    f"self.args.all(a, !a.matches('{KEY_VALUE_RE}') && "
                    "!a.matches('^--(provider-)?api-key'))",
                    f"spec.worker.args must not carry an API key; {_NO_SECRET}",
                    ".args",
                )
            ]
        }
    )

    env: list[EnvVar] = Field(
        default_factory=list, max_length=64, description="Extra environment variables."
    )
    args: list[WorkerArg] = Field(
        default_factory=list, max_length=64, description="Extra command-line arguments."
    )
    # Big models on smaller GPUs (diffusers pools; docs/worker.md has their cost).
    model_cpu_offload: bool = Field(
        default=False,
        description="Keep submodels in CPU memory and move each to the GPU only while it "
        "runs: fits a model about the size of its largest part, at a cost per image.",
    )
    vae_tiling: bool = Field(
        default=False,
        description="Decode in overlapping tiles: bounded VAE memory above 1024 px.",
    )
    vae_slicing: bool = Field(
        default=False, description="Decode a batch one image at a time in the VAE."
    )
    truncate: bool = Field(
        default=True,
        description="Cut a prompt longer than a text encoder takes (77 CLIP tokens; T5's "
        "limit) and say so in X-ModelFleet-Prompt-Truncated; false: answer 400 naming prompt.",
    )

    @field_validator("args")
    @classmethod
    def _no_key_args(cls, v: list[str]) -> list[str]:
        for a in v:
            if looks_like_key_value(a) or re.match(r"^--(provider-)?api-key", a):
                raise ValueError(f"spec.worker.args must not carry an API key; {_NO_SECRET}")
        return v


_HOSTED = ", ".join(HOSTED_BACKENDS)
_KEYED = ", ".join(KEYED_BACKENDS)
# Fields only a diffusers pool has: a hosted pool has no weights, GPUs or batches.
DIFFUSERS_ONLY: tuple[str, ...] = ("model", "gpu", "batching", "limits", "cost")


def _quoted(names: tuple[str, ...]) -> str:
    return ", ".join(f"'{n}'" for n in names)


def _spec_rules() -> list[Any]:
    rules = [
        cel(
            "!has(self.model) || !has(self.model.vae) || self.model.family == 'custom' || "
            "self.model.vae.family == self.model.family",
            "spec.model.vae.family must match spec.model.family (a VAE from another "
            "latent space fails at decode time)",
            ".model.vae.family",
        ),
        cel(
            "self.backend != 'diffusers' || has(self.model)",
            "spec.model is required when spec.backend is diffusers",
            ".model",
        ),
        cel(
            "self.backend == 'diffusers' || has(self.provider)",
            f"spec.provider is required when spec.backend is a hosted type ({_HOSTED})",
            ".provider",
        ),
        cel(
            "self.backend != 'diffusers' || !has(self.provider)",
            "spec.provider applies only to hosted pools; a diffusers pool names its model in "
            "spec.model",
            ".provider",
        ),
        cel(
            f"!(self.backend in [{_quoted(KEYED_BACKENDS)}]) || "
            "(has(self.provider) && has(self.provider.credentials))",
            f"spec.provider.credentials (a Secret reference) is required when spec.backend "
            f"is {_KEYED}",
            ".provider",
        ),
        cel(
            "self.backend != 'openai-compatible' || !has(self.provider) || "
            "has(self.provider.endpoint)",
            "spec.provider.endpoint is required when spec.backend is openai-compatible",
            ".provider",
        ),
        cel(
            "self.backend != 'ideogram' || !has(self.provider) || "
            f"self.provider.model in [{_quoted(IDEOGRAM_MODELS)}]",
            f"spec.provider.model must be one of {', '.join(IDEOGRAM_MODELS)} when "
            "spec.backend is ideogram",
            ".provider.model",
        ),
    ]
    rules.append(
        cel(
            "!has(self.autoscaling) || self.replicas <= self.autoscaling.maxReplicas",
            "spec.replicas must not exceed spec.autoscaling.maxReplicas (with autoscaling, "
            "spec.replicas is the autoscaler's output: omit it or keep it within "
            "[minReplicas, maxReplicas])",
            ".replicas",
        )
    )
    for name in DIFFUSERS_ONLY:
        rules.append(
            cel(
                f"self.backend == 'diffusers' || !has(self.{name})",
                f"spec.{name} applies only to diffusers pools, not to spec.backend {_HOSTED}",
                f".{name}",
            )
        )
    return rules


class ModelPoolSpec(ApiModel):
    """Desired state of a ModelPool."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": _spec_rules()})

    backend: Backend = Field(
        default="diffusers",
        description="diffusers (GPU pods running the model) or a hosted provider API behind "
        "a CPU-only adapter: openai, openai-compatible, gemini-imagen, gemini, ideogram.",
    )
    model: ModelSpec | None = Field(
        default=None, description="The model the workers serve (diffusers pools; required)."
    )
    provider: ProviderSpec | None = Field(
        default=None, description="The provider API a hosted pool calls (hosted pools; required)."
    )
    image: str | None = Field(
        default=None,
        max_length=512,
        description="Worker container image; the operator's default when empty.",
    )
    replicas: int = Field(
        default=1,
        ge=0,
        le=1000,
        description=(
            "Worker pods (0-1000). With spec.autoscaling the operator writes it through the "
            "scale subresource; a literal value must not exceed maxReplicas."
        ),
    )
    autoscaling: AutoscalingSpec | None = Field(
        default=None,
        description="Follow the routers' live demand between minReplicas and maxReplicas.",
    )
    gpu: GpuSpec | None = Field(
        default=None, description="GPUs per worker pod (diffusers pools; 1 GPU when empty)."
    )
    batching: BatchingSpec | None = Field(
        default=None, description="Micro-batching (diffusers pools; defaults when empty)."
    )
    limits: LimitsSpec | None = Field(
        default=None, description="Request limits (diffusers pools; defaults when empty)."
    )
    cost: CostSpec | None = Field(
        default=None, description="GPU price for the per-image cost (diffusers pools)."
    )
    tags: list[str] = Field(
        default_factory=list,
        max_length=32,
        json_schema_extra={"x-kubernetes-list-type": "set"},
        description="Capabilities routing can match on, e.g. typography, photoreal, preview.",
    )
    model_names: list[ModelName] = Field(
        default_factory=list,
        max_length=16,
        json_schema_extra={"x-kubernetes-list-type": "set"},
        description=(
            "Names clients pass as `model` to reach this pool, e.g. sd3.5-medium or "
            "gpt-image-1 (lowercase letters, digits, '-' and '.'; at most 16, unique)."
        ),
    )
    worker: WorkerSpec = Field(default_factory=WorkerSpec, description="Extra worker settings.")

    @property
    def hosted(self) -> bool:
        return self.backend != "diffusers"

    def gpu_or_default(self) -> GpuSpec:
        """The GPUs a pod asks for: none for a hosted pool, one when a diffusers pool is silent."""
        if self.hosted:
            return GpuSpec(count=0)
        return self.gpu or GpuSpec()

    def batching_or_default(self) -> BatchingSpec:
        return self.batching or BatchingSpec()

    def limits_or_default(self) -> LimitsSpec:
        return self.limits or LimitsSpec()

    def diffusers_model(self) -> ModelSpec:
        if self.model is None:
            raise ValueError("spec.model is required when spec.backend is diffusers")
        return self.model

    def hosted_provider(self) -> ProviderSpec:
        if self.provider is None:
            raise ValueError("spec.provider is required when spec.backend is a hosted type")
        return self.provider

    @field_validator("model_names")
    @classmethod
    def _unique_model_names(cls, v: list[str]) -> list[str]:
        dupes = sorted({n for n in v if v.count(n) > 1})
        if dupes:
            raise ValueError(f"spec.modelNames must be unique; repeated: {', '.join(dupes)}")
        return v

    @model_validator(mode="after")
    def _replicas_within_autoscaling(self) -> ModelPoolSpec:
        a = self.autoscaling
        if a is not None and self.replicas > a.max_replicas:
            raise ValueError(
                "spec.replicas must not exceed spec.autoscaling.maxReplicas (with autoscaling, "
                "spec.replicas is the autoscaler's output: omit it or keep it within "
                "[minReplicas, maxReplicas])"
            )
        return self

    @model_validator(mode="after")
    def _backend_fields(self) -> ModelPoolSpec:
        """The CEL rules above, for the router's file loader and the operator."""
        if not self.hosted:
            model = self.diffusers_model()
            if self.provider is not None:
                raise ValueError(
                    "spec.provider applies only to hosted pools; a diffusers pool names its "
                    "model in spec.model"
                )
            vae, fam = model.vae, model.family
            if vae is not None and fam != "custom" and vae.family not in VAE_COMPATIBLE[fam]:
                raise ValueError(
                    f"spec.model.vae.family {vae.family!r} does not match spec.model.family {fam!r}"
                )
            return self
        for name in DIFFUSERS_ONLY:
            if getattr(self, name) is not None:
                raise ValueError(
                    f"spec.{name} applies only to diffusers pools, not to spec.backend {_HOSTED}"
                )
        provider = self.hosted_provider()
        if self.backend in KEYED_BACKENDS and provider.credentials is None:
            raise ValueError(
                "spec.provider.credentials (a Secret reference) is required when spec.backend "
                f"is {_KEYED}"
            )
        if self.backend == "openai-compatible" and provider.endpoint is None:
            raise ValueError(
                "spec.provider.endpoint is required when spec.backend is openai-compatible"
            )
        if self.backend == "ideogram" and provider.model not in IDEOGRAM_MODELS:
            raise ValueError(
                f"spec.provider.model must be one of {', '.join(IDEOGRAM_MODELS)} when "
                "spec.backend is ideogram"
            )
        return self


class GpuCapacity(ApiModel):
    """GPUs of one product: what the pool asks for against what the nodes offer."""

    product: str = Field(
        description="nvidia.com/gpu.product ('any' when spec.gpu.product is unset)."
    )
    requested: int = Field(description="GPUs the pool's desired replicas ask for.")
    schedulable: int = Field(
        description="Allocatable GPUs of this product on schedulable nodes (all pools share them)."
    )
    pending_pods: int = Field(default=0, description="Pool pods the scheduler cannot place.")


class ModelPoolStatus(ApiModel):
    """Observed state of a ModelPool."""

    phase: Literal["Pending", "Progressing", "Ready", "Degraded"] | None = Field(
        default=None, description="Pending, Progressing, Ready or Degraded."
    )
    replicas: int | None = Field(default=None, description="Worker pods that exist.")
    ready_replicas: int | None = Field(default=None, description="Worker pods that are ready.")
    updated_replicas: int | None = Field(
        default=None, description="Worker pods running the current spec."
    )
    observed_generation: int | None = Field(
        default=None, description="The generation this status describes."
    )
    service: str | None = Field(default=None, description="The pool's Service name.")
    desired_replicas: int | None = Field(
        default=None, description="Replicas the autoscaler wants (spec.autoscaling)."
    )
    last_scale_time: str | None = Field(
        default=None, description="When the autoscaler last changed spec.replicas (RFC 3339)."
    )
    scale_reason: str | None = Field(
        default=None,
        description="Why the autoscaler chose desiredReplicas (demand, window, bounds).",
    )
    demand: float | None = Field(
        default=None, description="Live demand the autoscaler last read from the routers."
    )
    gpus: list[GpuCapacity] = Field(
        default_factory=list, description="GPUs requested vs schedulable, per product."
    )
    conditions: list[Condition] = Field(
        default_factory=list, description="Ready, Progressing, Degraded, CapacityStarved."
    )


class ModelPool(ApiModel):
    """A pool of GPU worker pods serving one diffusion model."""

    api_version: str = Field(default="modelfleet.io/v1alpha1", alias="apiVersion")
    kind: Literal["ModelPool"] = "ModelPool"
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: ModelPoolSpec
    status: ModelPoolStatus | None = None

    @field_validator("api_version")
    @classmethod
    def _api_version(cls, v: str) -> str:
        if v != "modelfleet.io/v1alpha1":
            raise ValueError("apiVersion must be modelfleet.io/v1alpha1")
        return v
