"""Fault injection for drills: off by default, visible in metrics when on."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class FaultSettings:
    latency_ms: int = 0
    error_rate: float = 0.0
    oom_above_batch: int = 0  # 0 = off

    @property
    def active(self) -> bool:
        return self.latency_ms > 0 or self.error_rate > 0 or self.oom_above_batch > 0


class FaultInjector:
    def __init__(self, settings: FaultSettings, seed: int = 0) -> None:
        self.settings = settings
        self._rng = random.Random(seed or None)

    def should_fail(self) -> bool:
        rate = self.settings.error_rate
        return rate > 0 and self._rng.random() < rate

    @property
    def added_latency_s(self) -> float:
        return self.settings.latency_ms / 1000.0
