"""A leadership term owns all controller state: a new term knows nothing of the last,
and standing down stops every controller from acting."""

from __future__ import annotations

import asyncio

from modelfleet.builders.modelpool import BuildSettings
from modelfleet.controllers.canary import Driver
from modelfleet.controllers.term import Term


def _pool(name: str) -> dict[str, object]:
    return {"metadata": {"namespace": "ns", "name": name}}


async def test_a_new_term_remembers_nothing_of_the_last() -> None:
    first = Term.new(BuildSettings(), ["http://r:8080"])
    body = _pool("gone")
    await first.policies.pool_membership({"type": "ADDED", "object": body}, body)
    assert first.policies.pools == {"ns": {"gone"}}
    first.stand_down()

    second = Term.new(BuildSettings(), ["http://r:8080"])
    assert second.policies.pools == {}
    assert second.pools.pools == {}
    assert second.policies.overrides == {}
    assert second.canaries.drivers == {}


def test_the_canary_moves_traffic_through_the_policy_controller() -> None:
    term = Term.new(BuildSettings(), ["http://a:1", "http://b:2"], ["team-a"])
    assert term.canaries.traffic is term.policies
    assert term.canaries.router_urls == ("http://a:1", "http://b:2")
    assert term.namespaces == ("team-a",)


async def test_standing_down_stops_retries_passes_and_drivers() -> None:
    term = Term.new(BuildSettings(), [])
    term.pools.retry.failed(("ns", "p"))
    term.policies.retry.failed(("ns", "rp"))
    sleeper = asyncio.get_running_loop().create_task(asyncio.sleep(60))
    term.pools.tasks.add(sleeper)
    driver = Driver(task=asyncio.get_running_loop().create_task(asyncio.sleep(60)))
    term.canaries.drivers[("ns", "c")] = driver

    await term.close()

    assert term.pools.retry.failures == {}
    assert term.policies.retry.failures == {}
    await asyncio.wait({sleeper, driver.task}, timeout=5)
    assert sleeper.cancelled() and driver.task.cancelled()
    assert term.canaries.stopped and term.canaries.drivers == {}
    assert term.autoscaler is not None and term.autoscaler.stopped


def test_the_registry_binds_this_terms_handlers_and_no_other() -> None:
    term = Term.new(BuildSettings(), [])
    handlers = term.registry()._watching.get_all_handlers()  # kopf keeps them here
    owners = {id(h.fn.__self__) for h in handlers}  # type: ignore[attr-defined]
    assert owners == {id(term.pools), id(term.policies), id(term.canaries), id(term.autoscaler)}
    watched = sorted(h.selector.any_name for h in handlers if h.selector is not None)
    assert watched == sorted(
        [
            "canaries",
            "deployments",
            "modelpools",
            "modelpools",
            "modelpools",  # the autoscaler forgets deleted pools
            "nodes",
            "poddisruptionbudgets",
            "pods",
            "routingpolicies",
            "services",
        ]
    )
