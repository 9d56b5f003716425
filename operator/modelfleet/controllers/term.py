"""One leadership term: the controllers' state, built fresh each time this operator
becomes the leader and dropped when it stands down.

Nothing the controllers remember survives into the next term. A standby that leads
again starts from the cluster (its watches' initial listings), never from a cache
that missed whatever happened while another operator led.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import kopf

from modelfleet.builders.modelpool import BuildSettings
from modelfleet.controllers.autoscale import AutoscaleController
from modelfleet.controllers.canary import CanaryController
from modelfleet.controllers.modelpool import ModelPoolController
from modelfleet.controllers.replay import ReplayRunner, credential_file
from modelfleet.controllers.routers import RouterEndpoints
from modelfleet.controllers.routingpolicy import RoutingPolicyController
from modelfleet.providers.demand import DemandReader


@dataclass
class Term:
    pools: ModelPoolController
    policies: RoutingPolicyController
    canaries: CanaryController
    namespaces: tuple[str, ...] = ()  # empty: all namespaces
    autoscaler: AutoscaleController | None = None

    @staticmethod
    def new(
        settings: BuildSettings,
        router_urls: Sequence[str],
        namespaces: Sequence[str] = (),
        operator_token_file: str | None = None,
    ) -> Term:
        policies = RoutingPolicyController()
        replays = ReplayRunner(router_urls, credential_file(operator_token_file))
        pools = ModelPoolController(settings)
        return Term(
            pools=pools,
            policies=policies,
            # The RoutingPolicy side is the canary's traffic router.
            canaries=CanaryController(traffic=policies, router_urls=router_urls, replays=replays),
            namespaces=tuple(namespaces),
            # Demand from every replica behind the routers the canary reads (a Service URL
            # is resolved to its endpoints); capacity from the pools' node cache.
            autoscaler=AutoscaleController(
                DemandReader(router_urls, resolve=RouterEndpoints(router_urls).resolve),
                lambda: list(pools.nodes.values()),
            ),
        )

    def registry(self) -> kopf.OperatorRegistry:
        """A registry with this term's handlers (kopf's framework handlers come on top)."""
        registry = kopf.OperatorRegistry()
        self.pools.register(registry)
        self.policies.register(registry)
        self.canaries.register(registry)
        if self.autoscaler is not None:
            self.autoscaler.register(registry)
        return registry

    async def prime(self) -> None:
        """Caches that must be full before the first reconcile judges anything."""
        await asyncio.to_thread(self.pools.prime_nodes)
        await self.canaries.restore_weights(self.namespaces)

    def stand_down(self) -> None:
        """Leadership lost: no pending retry, scheduled pass or driver may act."""
        self.pools.stand_down()
        self.policies.stand_down()
        self.canaries.stop()
        if self.autoscaler is not None:
            self.autoscaler.stop()

    async def close(self) -> None:
        self.stand_down()
        await self.canaries.close()
        if self.autoscaler is not None:
            await self.autoscaler.close()
