"""ModelPool spec.autoscaling: replicas that follow the routers' live demand
(docs/autoscaling.md)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, model_validator

from modelfleet.api.common import DURATION_PATTERN, ApiModel, cel, parse_duration

_DURATIONS: tuple[tuple[str, str, str], ...] = (
    # (field, default, what it is) — wire names are camelCase of the field.
    ("stable_window", "60s", "Window the stable (smoothed) demand average is taken over"),
    ("panic_window", "6s", "Short window whose average triggers panic mode"),
    ("scale_up_stabilization", "0s", "Scale up to the lowest recommendation of this window"),
    ("scale_down_stabilization", "60s", "Scale down to the highest recommendation of this window"),
    ("scale_to_zero_delay", "5m", "Zero demand this long before a pool at minReplicas 0 goes to 0"),
)


def _duration(default: str, what: str, wire: str) -> Any:
    return Field(
        default=default,
        pattern=DURATION_PATTERN,
        max_length=32,
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "duration(self) <= duration('24h')",
                    f"spec.autoscaling.{wire} must be at most 24h",
                )
            ]
        },
        description=f"{what} (e.g. {default}; at most 24h).",
    )


class AutoscalingSpec(ApiModel):
    """Replicas that follow the routers' live demand (in flight + queued/held requests)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.minReplicas <= self.maxReplicas",
                    "spec.autoscaling.minReplicas must not exceed spec.autoscaling.maxReplicas",
                    ".minReplicas",
                ),
                cel(
                    "duration(self.panicWindow) <= duration(self.stableWindow)",
                    "spec.autoscaling.panicWindow must not exceed spec.autoscaling.stableWindow",
                    ".panicWindow",
                ),
            ]
        }
    )

    min_replicas: int = Field(
        default=1, ge=0, le=1000, description="Fewest worker pods (0 allows scale to zero)."
    )
    max_replicas: int = Field(ge=1, le=1000, description="Most worker pods (1-1000).")
    metric: Literal["inFlight", "queueDepth"] = Field(
        default="inFlight",
        description=(
            "inFlight: requests at the workers plus queued/held in the routers, per replica; "
            "queueDepth: only the queued/held ones."
        ),
    )
    target: float = Field(
        default=4,
        gt=0,
        le=10000,
        description="Demand each replica should carry (requests per replica, > 0).",
    )
    stable_window: str = _duration("60s", _DURATIONS[0][2], "stableWindow")
    panic_window: str = _duration("6s", _DURATIONS[1][2], "panicWindow")
    panic_threshold: float = Field(
        default=2.0,
        ge=1,
        le=100,
        description=(
            "Panic (scale up on the short window, never down) when the panic window's "
            "demand needs this many times the ready replicas (1-100)."
        ),
    )
    scale_up_stabilization: str = _duration("0s", _DURATIONS[2][2], "scaleUpStabilization")
    scale_down_stabilization: str = _duration("60s", _DURATIONS[3][2], "scaleDownStabilization")
    max_scale_up_step: int = Field(
        default=4, ge=1, le=1000, description="Most replicas added by one change (1-1000)."
    )
    max_scale_down_step: int = Field(
        default=1, ge=1, le=1000, description="Most replicas removed by one change (1-1000)."
    )
    scale_to_zero_delay: str = _duration("5m", _DURATIONS[4][2], "scaleToZeroDelay")

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalingSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                "spec.autoscaling.minReplicas must not exceed spec.autoscaling.maxReplicas"
            )
        for name, _, _ in _DURATIONS:
            if parse_duration(getattr(self, name)).total_seconds() > 86400:
                raise ValueError(f"spec.autoscaling.{name} must be at most 24h")
        if parse_duration(self.panic_window) > parse_duration(self.stable_window):
            raise ValueError(
                "spec.autoscaling.panicWindow must not exceed spec.autoscaling.stableWindow"
            )
        return self

    def seconds(self, name: str) -> float:
        """A duration field in seconds (stable_window, panic_window, ...)."""
        return parse_duration(getattr(self, name)).total_seconds()
