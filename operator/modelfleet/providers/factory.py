"""Pick the provider a Canary's spec.analysis.provider asks for."""

from __future__ import annotations

from collections.abc import Sequence

from modelfleet.api.canary import ProviderSpec
from modelfleet.canary.ports import MetricsProvider
from modelfleet.providers.prometheus import PrometheusProvider
from modelfleet.providers.router_stats import RouterStatsProvider


def provider_for(spec: ProviderSpec, router_urls: Sequence[str]) -> MetricsProvider:
    """router: the given router base URLs (from the router Service's EndpointSlices);
    prometheus: spec.address. The caller owns the result and must close() it."""
    if spec.type == "prometheus":
        if not spec.address:
            raise ValueError("spec.analysis.provider.address is required for prometheus")
        return PrometheusProvider(spec.address)
    return RouterStatsProvider(router_urls)
