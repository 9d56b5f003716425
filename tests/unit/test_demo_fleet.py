"""The demo's mixed fleet (hosted_demo.py): its pools and policy are valid API objects
whose adapters start, every hosted route has a fallback, and the cost per pool is read
from the router's counters."""

from __future__ import annotations

import re

import pytest

from modelfleet.api.modelpool import ModelPool
from modelfleet.api.routingpolicy import RoutingPolicy
from modelfleet_dev import demo, hosted_demo, story
from modelfleet_worker.hosted.registry import BackendSettings, make_backend


@pytest.mark.parametrize("pool", hosted_demo.HOSTED, ids=lambda p: p.name)
def test_hosted_pools_are_valid_and_their_adapters_would_start(
    pool: hosted_demo.HostedPool,
) -> None:
    doc = hosted_demo.pool_manifest(pool)
    parsed = ModelPool.model_validate(doc)
    assert parsed.spec.backend == pool.backend
    provider = doc["spec"]["provider"]
    assert provider["credentials"]["name"] == hosted_demo.BY_NAME[pool.provider].secret
    assert "key" not in str(provider.get("defaults", {})).lower()  # only a Secret reference
    # The defaults as the adapter gets them (snake_case), and its factory accepts them.
    defaults = {re.sub(r"(?<!^)(?=[A-Z])", "_", k).lower(): v for k, v in pool.defaults.items()}
    backend = make_backend(pool.backend, BackendSettings(pool.model, defaults=defaults))
    assert backend.model == pool.model


def test_every_route_names_pools_of_the_demo_and_hosted_routes_fall_back() -> None:
    RoutingPolicy.model_validate(hosted_demo.POLICY)
    known = set(hosted_demo.HOSTED_NAMES) | set(demo.POOLS)
    for route in hosted_demo.POLICY["spec"]["routes"]:
        assert {route["pool"], *route["fallbacks"]} <= known
        if route["pool"] in hosted_demo.HOSTED_NAMES:
            assert route["fallbacks"], route["name"]


def test_diffusers_pools_get_a_gpu_price() -> None:
    doc = hosted_demo.with_gpu_price(story.pool_manifest("p", "/models/tiny"), 2.5)
    assert ModelPool.model_validate(doc).spec.cost is not None
    assert doc["spec"]["cost"] == {"gpuHourPrice": 2.5}


METRICS = """\
# HELP modelfleet_router_cost_usd_total Cost
# TYPE modelfleet_router_cost_usd_total counter
modelfleet_router_cost_usd_total{namespace="d",pool="ideogram"} 0.09
modelfleet_router_cost_usd_total{namespace="d",pool="production"} 1.5e-05
modelfleet_router_cost_usd_total{namespace="other",pool="ideogram"} 7.0
modelfleet_router_images_total{namespace="d",pool="ideogram"} 3.0
modelfleet_router_images_total{namespace="d",pool="production"} 5.0
modelfleet_router_images_total{namespace="d",pool="imagen"} 0.0
"""


def test_cost_per_pool_from_the_router_counters(monkeypatch: pytest.MonkeyPatch) -> None:
    class Resp:
        def __enter__(self) -> Resp:
            return self

        def __exit__(self, *a: object) -> None:
            return None

        def read(self) -> bytes:
            return METRICS.encode()

    monkeypatch.setattr(hosted_demo.urllib.request, "urlopen", lambda *a, **k: Resp())
    costs = hosted_demo.pool_costs("http://router", "d")
    assert costs == {
        "ideogram": (0.09, 3.0),
        "production": (1.5e-05, 5.0),
        "imagen": (0.0, 0.0),
    }
    rows = hosted_demo.cost_table(costs)
    assert rows[1].split()[:3] == ["ideogram", "ideogram", "V_3"]  # hosted pools first
    assert rows[1].split()[-2:] == ["0.090000", "0.030000"]
    assert rows[-1].startswith("production") and rows[-1].split()[-1] == "0.000003"
    assert rows[2].split()[-1] == "-"  # imagen: no images, no per-image cost
    assert "$2.5/GPU-hour" in rows[-1]
    assert "no gpuHourPrice" in hosted_demo.cost_table(costs, gpu_priced=())[-1]
