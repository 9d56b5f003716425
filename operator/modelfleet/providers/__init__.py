"""Metrics providers: adapters behind the canary's MetricsProvider port
(`modelfleet.canary.ports`); they return numbers, never verdicts.

- `prometheus`: PromQL over the Prometheus HTTP API.
- `router_stats`: the routers' own /v1/stats, merged exactly (no Prometheus needed).
- `factory.provider_for`: the provider a Canary's spec.analysis.provider asks for.
"""

from __future__ import annotations

from modelfleet.providers.factory import provider_for
from modelfleet.providers.prometheus import PrometheusProvider
from modelfleet.providers.quantile import histogram_quantile
from modelfleet.providers.router_stats import RouterStatsProvider
from modelfleet.providers.template import TemplateError, render_query

__all__ = [
    "PrometheusProvider",
    "RouterStatsProvider",
    "TemplateError",
    "histogram_quantile",
    "provider_for",
    "render_query",
]
