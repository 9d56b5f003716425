"""The replay shell's task lifecycle: one task per canary and attempt, polled by ticks,
cancelled once no replay is due (no Kubernetes, the router address refuses)."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket

from modelfleet.api.canary import CanarySpec, CanaryStatus
from modelfleet.api.replay import ReplaySpec, ReplayStatus
from modelfleet.canary.replay import ReplayRun, ReplayRunning
from modelfleet.controllers.replay import ReplayRunner

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
KEY = ("ns", "c")


class _ConfigMaps:
    def __init__(self) -> None:
        self.reads = 0

    async def get(self, namespace: str, name: str) -> dict[str, str] | None:
        self.reads += 1
        return {"prompts.jsonl": '{"prompt": "p", "text": ["SALE NOW"]}'}


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


SPEC = CanarySpec(
    routing_policy="rp",
    route="all",
    stable_pool="s",
    candidate_pool="c",
    replay=ReplaySpec(config_map="golden", min_ratio_to_stable=0.9),
)
PENDING = CanaryStatus(phase="Pending", started_at="2026-01-01T00:00:00.000Z")


async def test_one_task_per_attempt_polled_then_dropped_when_not_due() -> None:
    cms = _ConfigMaps()
    woken = asyncio.Event()
    runner = ReplayRunner(
        [f"http://127.0.0.1:{_closed_port()}"], lambda: b"tok", configmaps=cms, clock=lambda: T0
    )
    try:
        assert runner.poll(KEY, SPEC, PENDING, False, woken.set) is None  # pools not ready
        first = runner.poll(KEY, SPEC, PENDING, True, woken.set)
        assert isinstance(first, ReplayRunning) and first.attempt == (PENDING.started_at, 1)
        await asyncio.wait_for(woken.wait(), 30)  # the task wakes the driver when done
        done = runner.poll(KEY, SPEC, PENDING, True, woken.set)
        assert isinstance(done, ReplayRun) and cms.reads == 1  # the same task, not a new one
        assert [c.stable.status for c in done.cases] == ["unavailable"]
        assert "tok" not in repr(done)
        judged = PENDING.model_copy(update={"replay": ReplayStatus(result="pass", attempts=1)})
        assert runner.poll(KEY, SPEC, judged, True, woken.set) is None
        assert runner.jobs == {}
    finally:
        await runner.close()


async def test_a_new_run_cancels_the_old_task() -> None:
    runner = ReplayRunner(["http://192.0.2.1:9"], lambda: b"tok", configmaps=_ConfigMaps())
    try:
        runner.poll(KEY, SPEC, PENDING, True, lambda: None)
        old = runner.jobs[KEY].task
        retried = PENDING.model_copy(update={"started_at": "2026-01-01T00:05:00.000Z"})
        now = runner.poll(KEY, SPEC, retried, True, lambda: None)
        assert isinstance(now, ReplayRunning) and now.attempt[0] == retried.started_at
        await asyncio.sleep(0)
        assert old.cancelled() or old.cancelling()
    finally:
        await runner.close()
