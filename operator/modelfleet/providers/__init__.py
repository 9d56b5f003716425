"""Metrics providers behind the MetricsProvider protocol; they return numbers, never verdicts."""

from __future__ import annotations

# collect_analysis lives in modelfleet.providers.collect and is not re-exported here:
# it imports the canary core, which imports providers.base (an import cycle otherwise).
from modelfleet.providers.base import Measurement, MetricQuery, MetricsProvider
from modelfleet.providers.factory import provider_for
from modelfleet.providers.prometheus import PrometheusProvider
from modelfleet.providers.quantile import histogram_quantile
from modelfleet.providers.router import RouterStatsProvider
from modelfleet.providers.template import TemplateError, render_query

__all__ = [
    "Measurement",
    "MetricQuery",
    "MetricsProvider",
    "PrometheusProvider",
    "RouterStatsProvider",
    "TemplateError",
    "histogram_quantile",
    "provider_for",
    "render_query",
]
