"""spec.capacity: shift's pool sizes per step (pure tables and a converging simulation
that never holds more than the stable's replicas + 1 pods), and CapacityStarved: a
candidate the cluster cannot place pauses the canary, never rolls it back or fails it,
and the canary resumes by itself."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from controller_fakes import Clock, FakeEvents, FakeObjects, FakeTraffic, canary, pool
from modelfleet.api.canary import CanarySpec, CanaryStatus, CapacityStatus
from modelfleet.api.common import format_time
from modelfleet.canary import (
    Decision,
    Observations,
    PoolReadiness,
    Promote,
    ScaleDownStable,
    ScalePool,
    SetWeight,
    decide,
)
from modelfleet.canary import reasons as R
from modelfleet.canary.capacity import (
    PoolSize,
    apply_plan,
    candidate_need,
    plan,
    stable_need,
)
from modelfleet.controllers.canary import CanaryController, Driver, pool_size, starved_message

T0 = datetime(2024, 1, 1, tzinfo=UTC)
STARVED = "2 GPUs of product H100 requested, 1 schedulable in the cluster; 1 pod(s) waiting"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def spec(**kw: Any) -> CanarySpec:
    base: dict[str, Any] = {
        "routing_policy": "rp",
        "route": "images",
        "stable_pool": "stable",
        "candidate_pool": "cand",
        "interval": "10s",
        "steps": [10, 30, 60, 100],
    }
    base.update(kw)
    return CanarySpec(**base)


def size(replicas: int, ready: int | None = None, autoscaled: bool = False) -> PoolSize:
    return PoolSize(replicas, replicas, replicas if ready is None else ready, autoscaled)


# --- sizes per weight -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("full", "weight", "stable", "candidate"),
    [
        (4, 0, 4, 1),
        (4, 10, 4, 1),
        (4, 30, 3, 2),
        (4, 50, 2, 2),
        (4, 60, 2, 3),
        (4, 100, 1, 4),
        (1, 0, 1, 1),
        (1, 50, 1, 1),
        (1, 100, 1, 1),
        (3, 34, 2, 2),
        (10, 25, 8, 3),
    ],
)
def test_sizes_follow_the_weight(full: int, weight: int, stable: int, candidate: int) -> None:
    assert (stable_need(weight, full), candidate_need(weight, full)) == (stable, candidate)


def test_the_two_sizes_never_sum_above_full_plus_one() -> None:
    for full in range(1, 17):
        for weight in range(101):
            assert stable_need(weight, full) + candidate_need(weight, full) <= full + 1


# --- one plan ---------------------------------------------------------------------------


def prev(full: int, routed: int) -> CapacityStatus:
    return CapacityStatus(full_replicas=full, routed_weight=routed)


@pytest.mark.parametrize(
    ("case", "phase", "weight", "previous", "stable", "candidate", "want"),
    [
        # (routed weight, stable replicas, candidate replicas, scale_down_ok)
        (
            "pending sizes the candidate to one",
            "Pending",
            0,
            None,
            size(4),
            size(0),
            (0, 4, 1, True),
        ),
        (
            "first step: the stable still has 4 pods, no room",
            "Progressing",
            30,
            prev(4, 10),
            size(4),
            size(1),
            (30, 3, 1, True),
        ),
        (
            "the stable shrank: the candidate grows into the room",
            "Progressing",
            30,
            prev(4, 30),
            size(3),
            size(1),
            (30, 3, 2, True),
        ),
        (
            "existing pods count even when spec already shrank",
            "Progressing",
            60,
            prev(4, 30),
            PoolSize(2, 3, 2),
            size(2),
            (60, 2, 2, True),
        ),
        ("last step", "Progressing", 100, prev(4, 60), size(1), size(3), (100, 1, 4, True)),
        (
            "rollback: the stable grows first, the route holds",
            "RolledBack",
            0,
            prev(4, 100),
            size(1),
            size(4),
            (100, 4, 1, True),
        ),
        (
            "rollback: stable partly ready, still held",
            "RolledBack",
            0,
            prev(4, 100),
            size(4, ready=3),
            size(1),
            (100, 4, 1, True),
        ),
        (
            "rollback: stable ready, the route moves back",
            "RolledBack",
            0,
            prev(4, 100),
            size(4),
            size(1),
            (0, 4, 1, True),
        ),
        (
            "success: the stable waits for a full candidate",
            "Succeeded",
            100,
            prev(4, 100),
            size(1),
            size(4, ready=3),
            (100, None, 4, False),
        ),
        (
            "success: full candidate, the stable may go",
            "Succeeded",
            100,
            prev(4, 100),
            size(1),
            size(4),
            (100, None, 4, True),
        ),
        (
            "autoscaled pools are left alone",
            "Progressing",
            30,
            prev(4, 10),
            size(4, autoscaled=True),
            size(1, autoscaled=True),
            (30, None, None, True),
        ),
        (
            "autoscaled stable: the route never waits for it",
            "RolledBack",
            0,
            prev(4, 100),
            size(1, autoscaled=True),
            size(4),
            (0, None, 1, True),
        ),
    ],
)
def test_plan_table(
    case: str,
    phase: Any,
    weight: int,
    previous: CapacityStatus | None,
    stable: PoolSize,
    candidate: PoolSize,
    want: tuple[int, int | None, int | None, bool],
) -> None:
    p = plan("shift", phase, weight, previous, stable, candidate)
    got = (p.weight, p.stable_replicas, p.candidate_replicas, p.scale_down_ok)
    assert got == want, case
    assert p.status is not None and p.status.routed_weight == p.weight
    assert p.status.full_replicas == (previous.full_replicas if previous else stable.replicas)


def test_surge_plans_nothing() -> None:
    p = plan("surge", "Progressing", 60, None, size(4), size(4))
    assert (p.weight, p.stable_replicas, p.candidate_replicas, p.status) == (60, None, None, None)


def test_waiting_requeues_soon_and_says_why() -> None:
    p = plan("shift", "RolledBack", 0, prev(4, 100), size(4, ready=2), size(1))
    assert p.requeue_after is not None and p.requeue_after <= 2
    assert p.status is not None and "holding 100% until the stable is ready for 0%" in (
        p.status.message
    )
    settled = plan("shift", "Progressing", 30, prev(4, 30), size(3), size(2))
    assert settled.requeue_after is None


# --- a whole canary, pools converging one tick behind ----------------------------------


def simulate(weights: list[tuple[Any, int]], full: int) -> list[tuple[int, int, int]]:
    """Each tick: plan, then the pools take the written sizes; the pods of a growing pool
    appear (and become ready) one tick later, those of a shrinking one go at once."""
    stable, candidate = size(full), size(0)
    status: CapacityStatus | None = None
    seen = []
    for phase, weight in weights:
        p = plan("shift", phase, weight, status, stable, candidate)
        status = p.status
        seen.append((p.weight, stable.footprint, candidate.footprint))
        if p.stable_replicas is not None:
            stable = step_towards(stable, p.stable_replicas)
        if p.candidate_replicas is not None:
            candidate = step_towards(candidate, p.candidate_replicas)
    return seen


def step_towards(pool: PoolSize, target: int) -> PoolSize:
    if target <= pool.pods:  # the pods there are ready from their second tick on
        return PoolSize(target, target, target)
    return PoolSize(target, target, pool.pods)  # new pods exist now, ready next tick


@pytest.mark.parametrize("full", [1, 2, 3, 4, 7])
def test_forward_and_back_never_exceed_the_stable_plus_one(full: int) -> None:
    ticks: list[tuple[Any, int]] = [("Pending", 0)] * 3
    for w in (10, 30, 60, 100):
        ticks += [("Progressing", w)] * 3
    ticks += [("RolledBack", 0)] * 5
    seen = simulate(ticks, full)
    assert all(s + c <= full + 1 for _, s, c in seen), seen
    assert seen[-1] == (0, full, 1), "rolled back: the stable is whole, the route back"
    routed_back = next(i for i, (w, _, _) in enumerate(seen) if i > 15 and w == 0)
    assert seen[routed_back][1] == full, "the route moved back only onto a whole stable"


# --- decide(): CapacityStarved ----------------------------------------------------------


def obs(candidate: PoolReadiness, stable: PoolReadiness | None = None) -> Observations:
    return Observations(stable=stable or PoolReadiness(True), candidate=candidate, generation=1)


def reason(d: Decision) -> str | None:
    return next(c.reason for c in d.next_status.conditions if c.type == "Progressing")


def events(d: Decision) -> list[str]:
    return [a.reason for a in d.actions if hasattr(a, "reason") and hasattr(a, "type")]


def test_starved_candidate_while_pending_pauses_past_the_deadline_and_resumes() -> None:
    s = spec(progress_deadline="30s")
    starved = PoolReadiness(False, "0/1 ready", starved=STARVED)
    d = decide(s, CanaryStatus(), obs(starved), at(0))
    assert (d.next_status.phase, reason(d)) == ("Paused", R.CAPACITY_STARVED)
    assert "short of GPUs" in d.next_status.message and STARVED in d.next_status.message
    assert events(d).count(R.CAPACITY_STARVED) == 1
    assert d.requeue_after is not None and d.requeue_after <= 5
    later = decide(s, d.next_status, obs(starved), at(600))  # far past progressDeadline
    assert later.next_status.phase == "Paused", "never Failed for lack of GPUs"
    assert R.CAPACITY_STARVED not in events(later), "the Event is for the transition only"
    ready = decide(s, later.next_status, obs(PoolReadiness(True)), at(601))
    assert ready.next_status.phase == "Progressing" and ready.next_status.canary_weight == 10
    assert R.RESUMED in events(ready)


def test_starved_candidate_mid_canary_pauses_without_analysis_and_resumes_a_fresh_window() -> None:
    s = spec()
    d = decide(s, CanaryStatus(), obs(PoolReadiness(True)), at(0))
    d = decide(s, d.next_status, obs(PoolReadiness(True)), at(1))
    assert d.next_status.phase == "Progressing"
    starved = PoolReadiness(True, starved=STARVED)
    paused = decide(s, d.next_status, obs(starved), at(2))
    st = paused.next_status
    assert (st.phase, reason(paused), st.canary_weight) == ("Paused", R.CAPACITY_STARVED, 10)
    assert SetWeight(10) in paused.actions, "weight held, not rolled back"
    assert st.failed_checks == 0 and not st.history
    still = decide(s, st, obs(starved), at(300))
    assert still.next_status.phase == "Paused" and not still.next_status.history
    back = decide(s, still.next_status, obs(PoolReadiness(True)), at(301))
    assert back.next_status.phase == "Progressing"
    assert back.next_status.step_started_at == format_time(at(301)), "a fresh window"


def test_user_pause_wins_over_capacity() -> None:
    s = spec(paused=True)
    d = decide(s, CanaryStatus(), obs(PoolReadiness(False, starved=STARVED)), at(0))
    assert reason(d) == R.PAUSED_BY_USER


# --- apply_plan: the decision with shift applied ---------------------------------------


def test_apply_plan_rewrites_weight_holds_scale_down_and_writes_changed_sizes() -> None:
    s = spec(capacity="shift")
    status = CanaryStatus(phase="Succeeded", capacity=prev(4, 100))
    d = Decision(next_status=status, actions=[Promote("cand"), ScaleDownStable("stable")])
    out = apply_plan(s, d, size(1), size(3))
    assert out.actions == [Promote("cand"), ScalePool("cand", 4)], "stable waits"
    full = apply_plan(s, d, size(1), size(4))
    assert full.actions == [Promote("cand"), ScaleDownStable("stable")], "unchanged: no write"
    rolled = Decision(
        next_status=CanaryStatus(phase="RolledBack", capacity=prev(4, 100)), actions=[SetWeight(0)]
    )
    back = apply_plan(s, rolled, size(1), size(4))
    assert back.actions == [SetWeight(100), ScalePool("stable", 4), ScalePool("cand", 1)]
    assert back.next_status.capacity is not None and back.requeue_after == 2.0


def test_apply_plan_under_surge_changes_nothing() -> None:
    d = Decision(next_status=CanaryStatus(phase="Progressing"), actions=[SetWeight(60)])
    assert apply_plan(spec(), d, size(4), size(4)) == d


# --- the controller shell: reads starvation and sizes, writes through the scaler -------


def test_pool_body_to_size_and_starvation() -> None:
    body = pool("ns", "p", replicas=3)
    body["spec"]["autoscaling"] = {"minReplicas": 1, "maxReplicas": 4}
    body["status"].update(
        replicas=4,
        conditions=[
            {
                "type": "CapacityStarved",
                "status": "True",
                "reason": "InsufficientGPUs",
                "message": STARVED,
            }
        ],
    )
    assert pool_size(body) == PoolSize(3, 4, 3, True)
    assert starved_message(body["status"]) == STARVED
    body["status"]["conditions"][0]["status"] = "False"
    assert starved_message(body["status"]) is None


class RecordingScaler:
    def __init__(self, objects: FakeObjects) -> None:
        self.objects, self.calls = objects, []  # type: ignore[var-annotated]

    async def scale(self, namespace: str, pool: str, replicas: int) -> None:
        self.calls.append((pool, replicas))
        self.objects.body("modelpools", namespace, pool)["spec"]["replicas"] = replicas


class PodCount:
    def __init__(self, pods: dict[str, int]) -> None:
        self.pods, self.asked = pods, []  # type: ignore[var-annotated]

    async def count(self, namespace: str, pool: str) -> int:
        self.asked.append(pool)
        return self.pods[pool]


async def test_terminating_stable_pods_keep_the_candidate_from_growing() -> None:
    objects = FakeObjects()
    objects.put("modelpools", pool("ns", "stable", replicas=3))  # status: 3 pods ready
    objects.put("modelpools", pool("ns", "cand", replicas=1))
    body = canary("ns", "c", capacity="shift", steps=[50, 100])
    body["status"] = {
        "phase": "Progressing",
        "currentStep": 1,
        "canaryWeight": 100,
        "stepStartedAt": "2024-01-01T00:00:00.000Z",
        "startedAt": "2024-01-01T00:00:00.000Z",
        "capacity": {"fullReplicas": 3, "routedWeight": 50},
    }
    objects.put("canaries", body)
    objects.body("modelpools", "ns", "stable")["spec"]["replicas"] = 1
    scaler = RecordingScaler(objects)
    clock = Clock()
    controller = CanaryController(
        FakeTraffic(),
        objects=objects,
        events=FakeEvents(),
        clock=clock,
        scaler=scaler,
        pods=PodCount({"stable": 3}),  # spec says 1, but three pods still exist
    )
    await controller.tick(("ns", "c"), Driver(task=None))  # type: ignore[arg-type]
    assert ("cand", 3) not in scaler.calls and ("cand", 2) not in scaler.calls
    controller.pods = PodCount({"stable": 1})
    await controller.tick(("ns", "c"), Driver(task=None))  # type: ignore[arg-type]
    assert ("cand", 3) in scaler.calls


async def test_shift_tick_sizes_the_pools_through_the_scaler() -> None:
    objects = FakeObjects()
    objects.put("modelpools", pool("ns", "stable", replicas=4))
    cand = pool("ns", "cand", replicas=0)
    cand["status"] = {"phase": "Pending", "readyReplicas": 0}
    objects.put("modelpools", cand)
    objects.put("canaries", canary("ns", "c", capacity="shift", steps=[25, 100]))
    scaler = RecordingScaler(objects)
    pods = PodCount({"stable": 4})
    controller = CanaryController(
        FakeTraffic(),
        objects=objects,
        events=FakeEvents(),
        clock=Clock(),
        scaler=scaler,
        pods=pods,
    )
    driver = Driver(task=None)  # type: ignore[arg-type]
    await controller.tick(("ns", "c"), driver)
    assert scaler.calls == [("cand", 1)]
    assert pods.asked == ["stable"], "shift counts the stable's pods"
    status = objects.body("canaries", "ns", "c")["status"]
    assert status["capacity"]["fullReplicas"] == 4 and status["phase"] == "Pending"
    objects.body("modelpools", "ns", "cand")["status"] = {
        "phase": "Pending",
        "readyReplicas": 0,
        "conditions": [{"type": "CapacityStarved", "status": "True", "message": STARVED}],
    }
    await controller.tick(("ns", "c"), driver)
    status = objects.body("canaries", "ns", "c")["status"]
    assert status["phase"] == "Paused" and STARVED in status["message"]


async def test_deleting_a_shift_canary_gives_the_stable_its_full_size_back() -> None:
    objects = FakeObjects()
    objects.put("modelpools", pool("ns", "stable", replicas=1))
    objects.put("modelpools", pool("ns", "cand", replicas=3))
    body = canary("ns", "c", capacity="shift")
    body["status"] = {"phase": "Progressing", "capacity": {"fullReplicas": 4}}
    scaler = RecordingScaler(objects)
    traffic = FakeTraffic()
    controller = CanaryController(traffic, objects=objects, events=FakeEvents(), scaler=scaler)
    await controller.canary_event({"type": "DELETED", "object": body}, body)  # type: ignore[arg-type]
    assert scaler.calls == [("stable", 4)]
    assert traffic.weights() == [0]
    body["status"]["phase"] = "Succeeded"  # the stable is meant to go: leave it
    scaler.calls.clear()
    await controller.canary_event({"type": "DELETED", "object": body}, body)  # type: ignore[arg-type]
    assert scaler.calls == []


@pytest.mark.parametrize(
    ("status", "pushed"),
    [
        ({"phase": "RolledBack", "canaryWeight": 0, "capacity": {"routedWeight": 100}}, [100]),
        ({"phase": "RolledBack", "canaryWeight": 0, "capacity": {"routedWeight": 0}}, []),
        ({"phase": "Progressing", "canaryWeight": 60, "capacity": {"routedWeight": 60}}, [60]),
    ],
)
async def test_a_new_leader_restores_the_weight_shift_routes(
    status: dict[str, Any], pushed: list[int]
) -> None:
    objects = FakeObjects()
    body = canary("ns", "c", capacity="shift")
    body["status"] = status
    objects.put("canaries", body)
    traffic = FakeTraffic()
    controller = CanaryController(traffic, objects=objects, events=FakeEvents())
    await controller.restore_weights([])
    assert traffic.weights() == pushed
