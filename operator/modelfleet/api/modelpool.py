"""ModelPool: a pool of GPU workers serving one diffusion model."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from modelfleet.api.common import ApiModel, Condition, ObjectMeta, cel

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


class EnvVar(ApiModel):
    """An environment variable for the worker container."""

    name: str = Field(
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=256, description="Variable name."
    )
    value: str = Field(default="", description="Variable value.")


class WorkerSpec(ApiModel):
    """Extra settings passed straight to the worker container."""

    env: list[EnvVar] = Field(default_factory=list, description="Extra environment variables.")
    args: list[str] = Field(default_factory=list, description="Extra command-line arguments.")


class ModelPoolSpec(ApiModel):
    """Desired state of a ModelPool."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!has(self.model.vae) || self.model.family == 'custom' || "
                    "self.model.vae.family == self.model.family",
                    "spec.model.vae.family must match spec.model.family (a VAE from another "
                    "latent space fails at decode time)",
                    ".model.vae.family",
                )
            ]
        }
    )

    model: ModelSpec = Field(description="The model the workers serve.")
    image: str | None = Field(
        default=None,
        max_length=512,
        description="Worker container image; the operator's default when empty.",
    )
    replicas: int = Field(default=1, ge=0, le=1000, description="Worker pods (0-1000).")
    gpu: GpuSpec = Field(default_factory=GpuSpec, description="GPUs per worker pod.")
    batching: BatchingSpec = Field(default_factory=BatchingSpec, description="Micro-batching.")
    limits: LimitsSpec = Field(default_factory=LimitsSpec, description="Request limits.")
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

    @field_validator("model_names")
    @classmethod
    def _unique_model_names(cls, v: list[str]) -> list[str]:
        dupes = sorted({n for n in v if v.count(n) > 1})
        if dupes:
            raise ValueError(f"spec.modelNames must be unique; repeated: {', '.join(dupes)}")
        return v

    @model_validator(mode="after")
    def _vae_matches_family(self) -> ModelPoolSpec:
        vae = self.model.vae
        fam = self.model.family
        if vae is not None and fam != "custom" and vae.family not in VAE_COMPATIBLE[fam]:
            raise ValueError(
                f"spec.model.vae.family {vae.family!r} does not match spec.model.family {fam!r}"
            )
        return self


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
    conditions: list[Condition] = Field(
        default_factory=list, description="Ready, Progressing, Degraded."
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
