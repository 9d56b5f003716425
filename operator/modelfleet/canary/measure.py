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
    """Measure every metric of the plan on the candidate over the plan's window and, for
    checks against the stable, on the stable over plan.stable_window_seconds(metric) (the
    reference window for rank and proportion tests, the same window otherwise).

    Never raises for provider trouble: an exception becomes Measurement(error=...), which
    the core judges inconclusive.
    """

    def q(pool: str, metric_index: int, window: int | None = None) -> MetricQuery:
        metric = plan.metrics[metric_index]
        stable = pool == spec.stable_pool
        if window is None:
            # The stable's reference window for rank and proportion tests (both end now).
            window = plan.stable_window_seconds(metric) if stable else plan.window_seconds
        return MetricQuery(
            namespace=namespace,
            pool=pool,
            metric=metric,
            window_seconds=window,
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
            if plan.stable_window_seconds(metric) > plan.window_seconds:
                # The reference and, for the tests to prefer when it holds enough, the
                # stable over the candidate's own window.
                cand, stable, same = await asyncio.gather(
                    safe(q(spec.candidate_pool, i)),
                    safe(q(spec.stable_pool, i)),
                    safe(q(spec.stable_pool, i, plan.window_seconds)),
                )
                return MetricObservation(candidate=cand, stable=stable, stable_same_window=same)
            cand, stable = await asyncio.gather(
                safe(q(spec.candidate_pool, i)), safe(q(spec.stable_pool, i))
            )
            return MetricObservation(candidate=cand, stable=stable)
        return MetricObservation(candidate=await safe(q(spec.candidate_pool, i)))

    observed = await asyncio.gather(*(one(i) for i in range(len(plan.metrics))))
    return AnalysisObservation(
        plan=plan, metrics={m.name: o for m, o in zip(plan.metrics, observed, strict=True)}
    )
