"""The RoutingPolicy controller shell and its TrafficRouter side (set_weight, promote with
its 409 retry), with in-memory fakes of the Kubernetes objects and the event sink."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes.client.rest import ApiException

from controller_fakes import FakeEvents, FakeObjects, policy
from modelfleet.canary import TrafficTarget
from modelfleet.controllers.routingpolicy import PROMOTE_ATTEMPTS, RoutingPolicyController

NS = "ns"
POLICY = ("routingpolicies", NS, "images")
TARGET = TrafficTarget(NS, "c", "images", "default", "stable", "cand")
ROUTES = [
    {"name": "text", "match": {"tags": ["typography"]}, "pool": "typo", "fallbacks": ["stable"]},
    {"name": "default", "pool": "stable", "fallbacks": ["typo"]},
]


class Shell:
    def __init__(self, pools: tuple[str, ...] = ("stable", "cand", "typo", "v3")) -> None:
        self.objects = FakeObjects()
        self.events = FakeEvents()
        self.controller = RoutingPolicyController(objects=self.objects, events=self.events)
        self.pools = pools

    async def start(self, routes: list[dict[str, Any]] | None = None) -> None:
        for name in self.pools:
            body = {"metadata": {"namespace": NS, "name": name}}
            await self.controller.pool_membership({"type": "ADDED", "object": body}, body)
        await self.policy_event(routes or ROUTES)

    async def policy_event(self, routes: list[dict[str, Any]]) -> None:
        """The policy as the watch delivers it (after a spec change, say)."""
        known = self.objects.objects.get(POLICY)
        body = policy(NS, "images", routes)
        if known is not None:
            body["status"] = known.get("status")
        self.objects.put("routingpolicies", body)
        body = self.objects.body(*POLICY)
        await self.controller.policy_event({"type": "MODIFIED", "object": body}, body)

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = self.objects.body(*POLICY).get("status") or {}
        return status

    def split(self, route: str = "default") -> dict[str, int]:
        compiled = next(r for r in self.status()["routes"] if r["name"] == route)
        return {p["pool"]: p["weight"] for p in compiled["pools"]}

    def ready(self) -> tuple[str, str]:
        cond = next(c for c in self.status()["conditions"] if c["type"] == "Ready")
        return cond["status"], cond["reason"]


async def test_set_weight_compiles_the_split_into_the_route_table() -> None:
    shell = Shell()
    await shell.start()
    assert shell.split() == {"stable": 100}
    await shell.controller.set_weight(TARGET, 30)
    assert shell.split() == {"stable": 70, "cand": 30}
    assert shell.split("text") == {"typo": 100}
    assert shell.ready() == ("True", "Compiled")


async def test_unchanged_weight_writes_nothing() -> None:
    shell = Shell()
    await shell.start()
    await shell.controller.set_weight(TARGET, 30)
    writes = len(shell.objects.status_patches)
    await shell.controller.set_weight(TARGET, 30)
    assert len(shell.objects.status_patches) == writes


async def test_weight_zero_gives_the_route_back_to_its_pool() -> None:
    shell = Shell()
    await shell.start()
    await shell.controller.set_weight(TARGET, 30)
    await shell.controller.set_weight(TARGET, 0)
    assert shell.split() == {"stable": 100}
    assert shell.controller.overrides == {}


async def test_weight_for_a_policy_not_seen_yet_applies_when_it_arrives() -> None:
    shell = Shell()
    await shell.controller.set_weight(TARGET, 60)
    assert shell.objects.status_patches == []
    await shell.start()
    assert shell.split() == {"stable": 40, "cand": 60}


async def test_canary_moved_to_another_policy_leaves_the_old_one() -> None:
    shell = Shell()
    await shell.start()
    await shell.controller.set_weight(TARGET, 30)
    other = TrafficTarget(NS, "c", "elsewhere", "default", "stable", "cand")
    await shell.controller.set_weight(other, 30)
    assert shell.split() == {"stable": 100}


async def test_promote_holds_the_candidate_and_points_the_spec_at_it() -> None:
    shell = Shell()
    await shell.start()
    await shell.controller.set_weight(TARGET, 10)
    await shell.controller.promote(TARGET)
    # At 100% at once, before the spec change comes back through the watch.
    assert shell.split() == {"cand": 100}
    spec_route = next(
        r for r in shell.objects.body(*POLICY)["spec"]["routes"] if r["name"] == "default"
    )
    assert spec_route == {"name": "default", "pool": "cand", "fallbacks": ["stable", "typo"]}
    # The patch carried the version it read (optimistic concurrency).
    ((_, patch),) = [p for p in shell.objects.patches if p[0] == POLICY]
    assert patch["metadata"]["resourceVersion"]


async def test_promote_reads_the_policy_again_after_a_conflict() -> None:
    shell = Shell()
    await shell.start()
    shell.objects.conflicts[POLICY] = 2
    await shell.controller.promote(TARGET)
    patches = [p for key, p in shell.objects.patches if key == POLICY]
    assert len(patches) == 3
    versions = [p["metadata"]["resourceVersion"] for p in patches]
    assert len(set(versions)) == 3, "each attempt uses the version it has just read"
    assert [c for c in shell.objects.calls if c == ("get", POLICY)] == [("get", POLICY)] * 3
    spec_route = next(
        r for r in shell.objects.body(*POLICY)["spec"]["routes"] if r["name"] == "default"
    )
    assert spec_route["pool"] == "cand"


async def test_promote_gives_up_after_repeated_conflicts() -> None:
    shell = Shell()
    await shell.start()
    shell.objects.conflicts[POLICY] = 100
    await shell.controller.promote(TARGET)  # the next tick tries again
    assert len([p for key, p in shell.objects.patches if key == POLICY]) == PROMOTE_ATTEMPTS
    spec_route = next(
        r for r in shell.objects.body(*POLICY)["spec"]["routes"] if r["name"] == "default"
    )
    assert spec_route["pool"] == "stable"
    assert shell.split() == {"cand": 100}, "the route table keeps the promoted candidate"


async def test_promote_raises_errors_other_than_conflicts() -> None:
    shell = Shell()
    await shell.start()
    shell.objects.failures[POLICY] = ApiException(status=500, reason="Internal Server Error")
    with pytest.raises(ApiException):
        await shell.controller.promote(TARGET)


@pytest.mark.parametrize(
    "routes",
    [
        [{"name": "default", "pool": "cand", "fallbacks": ["stable"]}],  # already promoted
        [{"name": "other", "pool": "stable"}],  # no such route
    ],
)
async def test_promote_writes_no_spec_when_there_is_nothing_to_point(
    routes: list[dict[str, Any]],
) -> None:
    shell = Shell()
    await shell.start(routes)
    await shell.controller.promote(TARGET)
    assert [p for key, p in shell.objects.patches if key == POLICY] == []


async def test_promote_of_a_missing_policy_is_a_no_op() -> None:
    shell = Shell()
    await shell.controller.promote(TARGET)
    assert shell.objects.patches == []


async def test_promoted_override_retires_once_the_spec_serves_the_candidate() -> None:
    shell = Shell()
    await shell.start()
    await shell.controller.promote(TARGET)
    await shell.policy_event(shell.objects.body(*POLICY)["spec"]["routes"])
    assert shell.split() == {"cand": 100}
    # A next canary on the same route is not shadowed by the finished one.
    nxt = TrafficTarget(NS, "next", "images", "default", "cand", "v3")
    await shell.controller.set_weight(nxt, 20)
    assert shell.split() == {"cand": 80, "v3": 20}


async def test_deleted_pool_makes_the_policy_miss_it() -> None:
    shell = Shell()
    await shell.start()
    body = {"metadata": {"namespace": NS, "name": "typo"}}
    await shell.controller.pool_membership({"type": "DELETED", "object": body}, body)
    assert shell.ready() == ("False", "MissingPool")
    assert ("images", "Warning", "MissingPool") in [p[:3] for p in shell.events.posted]


async def test_failed_status_write_is_retried_with_backoff() -> None:
    shell = Shell()

    async def fail(*_: Any) -> None:
        raise ApiException(status=500, reason="Internal Server Error")

    shell.objects.patch_status = fail  # type: ignore[method-assign]
    await shell.start()
    assert shell.controller.retry.failures == {(NS, "images"): 1}
    shell.controller.stand_down()
    assert shell.controller.retry.failures == {}
