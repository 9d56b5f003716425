"""The ModelPool controller's Deployment cache against its own applies: an apply's answer
is a snapshot from when the API server handled it, and a watch event that arrived while
the apply was in flight may be newer (readyReplicas 3 after the answer's 2). The answer
must not replace that event, or the pool's status keeps the stale count (seen in CI: a
shift canary's candidate stuck at 2/3 ready while its Deployment said 3/3)."""

from __future__ import annotations

from typing import Any

import pytest

from modelfleet.api.modelpool import ModelPool
from modelfleet.builders import modelpool as build
from modelfleet.controllers import modelpool as controller_module
from modelfleet.controllers.modelpool import ModelPoolController

POOL = ModelPool.model_validate(
    {
        "metadata": {"name": "cand", "namespace": "ns", "generation": 4},
        "spec": {"model": {"source": "hf://org/model"}, "replicas": 3},
    }
)


def deployment(ready: int) -> dict[str, Any]:
    labels = {build.POOL_LABEL: "cand", "app.kubernetes.io/managed-by": build.MANAGED_BY}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "cand", "namespace": "ns", "generation": 4, "labels": labels},
        "spec": {"replicas": 3},
        "status": {"replicas": 3, "readyReplicas": ready, "observedGeneration": 4},
    }


@pytest.mark.parametrize("event_during_apply", [True, False])
async def test_an_apply_answer_never_replaces_a_newer_watch_event(
    monkeypatch: pytest.MonkeyPatch, event_during_apply: bool
) -> None:
    c = ModelPoolController()

    async def run(fn: Any, manifest: dict[str, Any]) -> dict[str, Any]:
        if manifest["kind"] != "Deployment":
            return manifest
        if event_during_apply:  # the status update lands while the apply is in flight
            await c.deployment_event({"type": "MODIFIED", "object": {}}, deployment(ready=3))
        return deployment(ready=2)  # the apply's answer, from just before that update

    monkeypatch.setattr(controller_module.kube, "run", run)
    await c._apply_children(POOL, {"metadata": {}, "status": {"observedGeneration": 4}})
    ready = c.deployments[("ns", "cand")]["status"]["readyReplicas"]
    assert ready == (3 if event_during_apply else 2)
