"""Text quality end to end (issue 12): canaries judged by the text their renders show,
and the router's verify gate, on the local cluster. The real operator drives a real
router (`--kube`); the pools' workers, run by the local pod runner, are the real worker
server verifying every render with the real OCR (rapidocr): text-drawing ones
(modelfleet_dev.textrender, some corrupting their lettering) and tiny diffusion ones
(noise, no readable text). Scenario chains as in test_canary_e2e (text_world.py adds
the text steps)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from conftest import LocalCluster
from modelfleet_dev.story import pool_manifest, single_route_policy
from modelfleet_dev.textrender import corrupts
from text_world import (
    TINY_SIZE,
    TextGiven,
    post,
    sign_body,
    text_pool,
    text_scenario,
    text_then,
)
from worker_fixtures import tiny_model_dir
from world import Fleet, start_fleet

pytestmark = [pytest.mark.e2e, pytest.mark.cluster, pytest.mark.timeout(600)]
NS = "e2e-text-canary"
# name -> corruption rate of its textrender workers
TEXT_POOLS = {"txt-stable": 0.0, "txt-good": 0.0, "txt-bad": 0.6, "txt-typo": 1.0}
TINY_POOLS = ("tiny-stable", "tiny-good")


@pytest.fixture(scope="module")
def fleet(cluster: LocalCluster, operator: Any) -> Iterator[Fleet]:
    model = str(tiny_model_dir())
    pools = [text_pool(name, model, rate) for name, rate in TEXT_POOLS.items()]
    pools += [pool_manifest(name, model) for name in TINY_POOLS]
    ready = single_route_policy("base", "txt-stable")
    with start_fleet(cluster, operator, NS, pools, ready) as f:
        yield f


@pytest.fixture
def given(fleet: Fleet) -> Iterator[TextGiven]:
    with text_scenario(fleet) as g:
        yield g


def test_candidate_that_mangles_its_lettering_rolls_back_on_text_accuracy(
    given: TextGiven,
) -> None:
    when = (
        given.text_canary("typos", "txt-stable", "txt-bad")
        .when().text_load_runs("typos").apply()
        .wait_for_phase("typos", "RolledBack", timeout=60, interval=0.2)
        .load_stops()
    )  # fmt: skip
    (
        text_then(when)
        .rolled_back_on_text_accuracy("typos")
        .text_metric("typos", "text-pass-rate", "fail")
        .rollback_event_names_text_accuracy("typos")
        .weight("typos", 0)
        .step("typos", 0, why="judged in its first window")
        .metric_result_is_not("typos", "errors", "fail", why="it answers every request")
        .no_server_errors()
    )  # fmt: skip


def test_candidate_as_good_as_the_stable_succeeds(given: TextGiven) -> None:
    when = (
        given.text_canary("alike", "txt-stable", "txt-good")
        .when().text_load_runs("alike", first_seed=5000).apply()
        .wait_for_phase("alike", "Succeeded", timeout=90, interval=0.2)
        .load_stops()
    )  # fmt: skip
    (
        text_then(when)
        .text_metric("alike", "text-accuracy", "pass")
        .text_metric("alike", "text-pass-rate", "pass")
        .text_metrics_measured("alike", at_least=5)
        .passed_steps("alike", [0, 1])
        .route_pool("alike", "txt-good")
        .no_server_errors()
    )  # fmt: skip


def test_pools_without_readable_text_are_decided_on_the_other_metrics(
    given: TextGiven,
) -> None:
    """Tiny diffusion pools draw noise: every render asks for text, none has any the OCR
    finds, so the text checks cannot apply and do not hold the canary."""
    when = (
        given.text_canary("noise", "tiny-stable", "tiny-good")
        .when().text_load_runs("noise", size=TINY_SIZE).apply()
        .wait_for_phase("noise", "Succeeded", timeout=90, interval=0.2)
        .load_stops()
    )  # fmt: skip
    (
        text_then(when)
        .text_metrics_not_applicable("noise")
        .passed_steps("noise", [0, 1])
        .metric_result("noise", "errors", "pass")
        .load_served().no_server_errors()
    )  # fmt: skip


def test_verify_gate_rescues_a_failed_render_on_the_onfail_pool(
    given: TextGiven, fleet: Fleet
) -> None:
    policy = {
        "apiVersion": "modelfleet.io/v1alpha1",
        "kind": "RoutingPolicy",
        "metadata": {"name": "gate"},
        "spec": {
            "routes": [
                {
                    "name": "signs",
                    "pool": "txt-typo",  # corrupts every render
                    "verify": {"minWordAccuracy": 0.9, "onFail": {"pool": "txt-stable"}},
                }
            ]
        },
    }
    given.manifest(policy).when().apply().wait_for_router_knows("gate")
    rescued_before = fleet.router_counter(
        "modelfleet_router_text_rescued_total", policy="gate", pool="txt-stable"
    )
    seeds = [11, 12, 13]
    assert all(corrupts(s, 1.0) for s in seeds)
    for seed in seeds:
        r = post(fleet, "gate", sign_body(seed))
        assert r.status == 200, r
        h = {k.lower(): v for k, v in r.headers.items()}
        assert h["x-modelfleet-verify"] == "rescued", h
        assert h["x-modelfleet-rerendered"] == "1", h
        assert h["x-modelfleet-pool"] == "txt-typo", h
        assert h["x-modelfleet-rerender-pool"] == "txt-stable", h
        assert "on pool txt-typo" in h["x-modelfleet-rerender-reason"], h
        b = r.block()
        assert b["passed"] is True and b["rerendered"] is True, b
        assert b["pool"] == "txt-stable" and b["attempts"] == 2, b
        assert b["word_accuracy"] == 1.0 and b["rerender_reason"].startswith("word_accuracy"), b
        assert r.doc["data"][0]["seed"] == seed + 8, "re-rendered with a derived seed"
    rescued = fleet.router_counter(
        "modelfleet_router_text_rescued_total", policy="gate", pool="txt-stable"
    )
    assert rescued - rescued_before == len(seeds)
