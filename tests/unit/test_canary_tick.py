"""The canary controller shell: observe -> decide -> one status patch -> actions through
the ports, with in-memory fakes of the Kubernetes objects, the traffic router, the
metrics provider and the event sink."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from prometheus_client import REGISTRY

from controller_fakes import (
    Clock,
    FakeEvents,
    FakeObjects,
    FakeProvider,
    FakeTraffic,
    ProviderFactory,
    canary,
    pool,
)
from modelfleet.api.canary import StepRecord
from modelfleet.canary import (
    EmitEvent,
    Measurement,
    Promote,
    RecordAnalysis,
    RollBack,
    ScaleDownStable,
    SetWeight,
    TrafficTarget,
)
from modelfleet.controllers.canary import CanaryController, Driver

NS = "ns"
KEY = (NS, "c")
TARGET = TrafficTarget(NS, "c", "images", "default", "stable", "cand")
GOOD = Measurement(value=0.0, samples=100)
BAD = Measurement(value=0.5, samples=100)


class Shell:
    def __init__(self, **spec: Any) -> None:
        self.objects = FakeObjects()
        self.events = FakeEvents()
        self.traffic = FakeTraffic()
        self.factory = ProviderFactory()
        self.clock = Clock()
        self.objects.put("modelpools", pool(NS, "stable"))
        self.objects.put("modelpools", pool(NS, "cand"))
        self.objects.put("canaries", canary(NS, "c", **spec))
        self.controller = CanaryController(
            self.traffic,
            ["http://router:8080"],
            objects=self.objects,
            events=self.events,
            providers=self.factory,
            clock=self.clock,
        )
        self.driver = Driver(task=None)  # type: ignore[arg-type]  # tick() never reads the task

    @property
    def provider(self) -> FakeProvider:
        return self.factory.provider

    async def tick(self) -> float | None:
        return await self.controller.tick(KEY, self.driver)

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = self.objects.body("canaries", NS, "c").get("status") or {}
        return status

    def status_writes(self) -> int:
        return len(self.objects.status_patches)


async def test_first_tick_enters_step_one_and_moves_its_weight_through_the_port() -> None:
    shell = Shell()
    requeue = await shell.tick()
    assert (shell.status()["phase"], shell.status()["canaryWeight"]) == ("Progressing", 10)
    assert shell.status_writes() == 1
    assert shell.traffic.calls == [("set_weight", TARGET, 10)]
    assert "StepProgressing" in shell.events.reasons()
    assert requeue is not None and 0 < requeue <= 10


async def test_unchanged_tick_writes_no_status_but_reapplies_the_weight() -> None:
    shell = Shell()
    await shell.tick()
    shell.clock.advance(0.5)
    await shell.tick()
    assert shell.status_writes() == 1
    assert shell.traffic.weights() == [10, 10]  # idempotent: heals a lost apply


async def test_due_analysis_is_measured_through_the_provider_and_advances() -> None:
    shell = Shell()
    shell.provider.by_pool = {"cand": GOOD}
    await shell.tick()
    assert shell.provider.queries == [], "nothing is measured before the window ends"
    shell.clock.advance(10)
    await shell.tick()
    assert [(q.pool, q.window_seconds) for q in shell.provider.queries] == [("cand", 10)]
    assert shell.factory.built[0][1] == ("http://router:8080",)
    assert (shell.status()["currentStep"], shell.status()["canaryWeight"]) == (1, 50)
    assert shell.traffic.weights() == [10, 50]


async def test_ratio_metric_measures_both_pools() -> None:
    shell = Shell(
        analysis={
            "minRequests": 10,
            "metrics": [{"name": "p95", "builtin": "latency-p95", "maxRatioToStable": 1.5}],
        }
    )
    shell.provider.by_pool = {"cand": GOOD, "stable": GOOD}
    await shell.tick()
    shell.clock.advance(10)
    await shell.tick()
    assert sorted(q.pool for q in shell.provider.queries) == ["cand", "stable"]


async def test_failed_analysis_rolls_back_to_weight_zero() -> None:
    shell = Shell()
    shell.provider.by_pool = {"cand": BAD}
    await shell.tick()
    shell.clock.advance(10)
    await shell.tick()
    assert (shell.status()["phase"], shell.status()["canaryWeight"]) == ("RolledBack", 0)
    assert shell.traffic.weights() == [10, 0]
    assert "RolledBack" in shell.events.reasons()
    assert shell.status_writes() == 2


async def test_success_promotes_then_scales_the_stable_down() -> None:
    shell = Shell(steps=[100])
    shell.provider.by_pool = {"cand": GOOD}
    await shell.tick()
    shell.clock.advance(10)
    await shell.tick()
    assert shell.status()["phase"] == "Succeeded"
    assert shell.traffic.calls[-1] == ("promote", TARGET, None)
    assert shell.objects.patches[-1] == (("modelpools", NS, "stable"), {"spec": {"replicas": 0}})
    patches = len(shell.objects.patches)
    await shell.tick()  # the scale-down is applied once, then only re-checked
    assert len(shell.objects.patches) == patches


async def test_invalid_canary_warns_and_touches_nothing() -> None:
    shell = Shell(candidatePool="stable")
    assert await shell.tick() is None
    assert [(t, r) for _, t, r, _ in shell.events.posted] == [("Warning", "InvalidSpec")]
    assert shell.status_writes() == 0
    assert shell.traffic.calls == []


async def test_deleted_canary_ends_the_tick() -> None:
    shell = Shell()
    del shell.objects.objects[("canaries", NS, "c")]
    assert await shell.tick() is None
    assert shell.traffic.calls == []


async def test_pool_readiness_is_observed_fresh() -> None:
    shell = Shell()
    shell.objects.put("modelpools", pool(NS, "cand", ready=False))
    await shell.tick()
    assert shell.status()["phase"] == "Pending"
    assert "candidate pool 'cand' not ready" in shell.status()["message"]
    assert shell.traffic.weights() == [0]


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_apply_sends_each_action_to_its_port() -> None:
    shell = Shell()
    observed = await shell.controller.observe(KEY, shell.driver)
    assert observed is not None
    record = StepRecord(step=0, weight=10, result="fail", time="2024-01-01T00:00:00.000Z")
    labels = {"namespace": NS, "canary": "c"}
    rollbacks = _sample("modelfleet_canary_rollbacks_total", **labels, reason="AnalysisFailed")
    analyses = _sample("modelfleet_canary_analyses_total", **labels, result="fail", early="true")
    await shell.controller.apply(
        observed,
        [
            SetWeight(30),
            Promote("cand"),
            ScaleDownStable("stable"),
            EmitEvent("Normal", "StepProgressing", "hello"),
            RollBack("AnalysisFailed", "bad"),
            RecordAnalysis(record, early=True),
        ],
    )
    assert shell.traffic.calls == [("set_weight", TARGET, 30), ("promote", TARGET, None)]
    assert shell.objects.patches == [(("modelpools", NS, "stable"), {"spec": {"replicas": 0}})]
    assert shell.events.posted == [("c", "Normal", "StepProgressing", "hello")]
    after = _sample("modelfleet_canary_rollbacks_total", **labels, reason="AnalysisFailed")
    assert after == rollbacks + 1
    after = _sample("modelfleet_canary_analyses_total", **labels, result="fail", early="true")
    assert after == analyses + 1


async def test_deleting_a_canary_stops_its_driver_and_gives_the_route_back() -> None:
    shell = Shell()
    body = shell.objects.body("canaries", NS, "c")
    await shell.controller.canary_event({"type": "ADDED", "object": body}, body)
    driver = shell.controller.drivers[KEY]
    await asyncio.sleep(0)  # the driver's first tick starts
    driver.provider = shell.provider
    await shell.controller.canary_event({"type": "DELETED", "object": body}, body)
    assert driver.task.cancelled()
    assert KEY not in shell.controller.drivers
    assert shell.traffic.calls[-1] == ("set_weight", TARGET, 0)
    assert shell.provider.closed


async def test_a_controller_that_stood_down_ignores_events() -> None:
    shell = Shell()
    body = shell.objects.body("canaries", NS, "c")
    shell.controller.stop()
    await shell.controller.canary_event({"type": "ADDED", "object": body}, body)
    await shell.controller.canary_event({"type": "DELETED", "object": body}, body)
    assert shell.controller.drivers == {}
    assert shell.traffic.calls == []


async def test_event_wakes_a_running_driver_instead_of_starting_another() -> None:
    shell = Shell()
    body = shell.objects.body("canaries", NS, "c")
    await shell.controller.canary_event({"type": "ADDED", "object": body}, body)
    first = shell.controller.drivers[KEY]
    try:
        await shell.controller.canary_event({"type": "MODIFIED", "object": body}, body)
        assert shell.controller.drivers[KEY] is first
        assert first.wake.is_set()
    finally:
        await shell.controller.close()
    assert shell.controller.drivers == {}


@pytest.mark.parametrize(
    ("status", "pushed"),
    [
        ({"phase": "Progressing", "canaryWeight": 30}, [30]),
        ({"phase": "Paused", "canaryWeight": 60}, [60]),
        ({"phase": "Succeeded", "canaryWeight": 100}, []),
        ({"phase": "RolledBack", "canaryWeight": 0}, []),
        ({}, []),
    ],
)
async def test_restore_weights_pushes_what_active_canaries_recorded(
    status: dict[str, Any], pushed: list[int]
) -> None:
    shell = Shell()
    body = shell.objects.body("canaries", NS, "c")
    body["status"] = status
    await shell.controller.restore_weights([])
    assert shell.traffic.weights() == pushed
    assert all(target == TARGET for _, target, _ in shell.traffic.calls)


async def test_restore_weights_lists_only_the_watched_namespaces() -> None:
    shell = Shell()
    shell.objects.body("canaries", NS, "c")["status"] = {"phase": "Progressing", "canaryWeight": 30}
    await shell.controller.restore_weights(["elsewhere"])
    assert shell.traffic.calls == []
    await shell.controller.restore_weights([NS])
    assert shell.traffic.weights() == [30]
