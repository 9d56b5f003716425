"""Measure what an AnalysisPlan asks for through the MetricsProvider port.

The observe half of a canary tick; it only sees the port, never a concrete provider.
"""

from __future__ import annotations

import asyncio

from modelfleet.api.canary import CanarySpec
from modelfleet.canary.ports import Measurement, MetricQuery, MetricsProvider
from modelfleet.canary.types import AnalysisObservation, AnalysisPlan, MetricObservation


async def collect_analysis(
    provider: MetricsProvider, plan: AnalysisPlan, spec: CanarySpec, namespace: str
) -> AnalysisObservation:
    """Measure every metric of the plan on the candidate (and, for ratio checks, stable).

    Never raises for provider trouble: an exception becomes Measurement(error=...), which
    the core judges inconclusive.
    """

    def q(pool: str, metric_index: int) -> MetricQuery:
        return MetricQuery(
            namespace=namespace,
            pool=pool,
            metric=plan.metrics[metric_index],
            window_seconds=plan.window_seconds,
            stable_pool=spec.stable_pool,
            candidate_pool=spec.candidate_pool,
        )

    async def safe(query: MetricQuery) -> Measurement:
        try:
            return await provider.measure(query)
        except Exception as e:  # a provider bug must not stall the state machine
            return Measurement.failed(f"{type(e).__name__}: {e}")

    async def one(i: int) -> MetricObservation:
        metric = plan.metrics[i]
        if plan.needs_stable(metric):
            cand, stable = await asyncio.gather(
                safe(q(spec.candidate_pool, i)), safe(q(spec.stable_pool, i))
            )
            return MetricObservation(candidate=cand, stable=stable)
        return MetricObservation(candidate=await safe(q(spec.candidate_pool, i)))

    observed = await asyncio.gather(*(one(i) for i in range(len(plan.metrics))))
    return AnalysisObservation(
        plan=plan, metrics={m.name: o for m, o in zip(plan.metrics, observed, strict=True)}
    )
