"""Sticky assets through the real router (subprocess, --config) in front of stand-in
workers: an asset sticks to the pool of its first render against 50/50 weights, moves
when its pool leaves the config, and a killed Redis fails no request."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from modelfleet_dev.routerproc import RouterProcess, policy, write_config
from polling import wait_for_async
from redis_fixture import RedisServer
from router_client import metric, metrics, post

pytestmark = pytest.mark.timeout(120)

SOON: dict[str, float] = {"timeout": 5.0, "interval": 0.02}


def split(a: str, b: str) -> dict[str, Any]:
    """One route, weights 50/50 as a canary at 50% would set them."""
    return policy(
        [{"name": "all", "pool": a}],
        status_routes=[
            {"name": "all", "pools": [{"pool": a, "weight": 50}, {"pool": b, "weight": 50}]}
        ],
    )


async def render(
    http: aiohttp.ClientSession, r: Any, asset: str, via_header: bool = False
) -> tuple[int, Any, Any]:
    body: dict[str, Any] = {"prompt": f"asset {asset}", "size": "64x64"}
    headers = {}
    if via_header:
        headers["X-ModelFleet-Asset"] = asset
    else:
        body["asset_id"] = asset
    status, h, doc, _ = await post(http, r, body, headers)
    return status, h, doc


async def test_assets_stick_against_the_weights_and_move_when_their_pool_goes(
    workers: Any, http: aiohttp.ClientSession, router: Any, tmp_path: Path
) -> None:
    a, b = await workers("a"), await workers("b")
    r = router([split("a", "b")], {"a": [a.url], "b": [b.url]}, "--asset-store", "memory")
    first: dict[str, str] = {}
    for i in range(40):
        status, h, doc = await render(http, r, f"asset-{i}")
        assert status == 200, doc
        assert h["X-ModelFleet-Asset-Pool"] == h["X-ModelFleet-Pool"]
        assert h["X-ModelFleet-Asset-Moved"] == "false"
        first[f"asset-{i}"] = h["X-ModelFleet-Pool"]
    # Both pools made some: the weights really are 50/50, so sticking is not luck.
    assert set(first.values()) == {"a", "b"}, first
    for round_ in range(3):
        for asset, pool in first.items():
            status, h, doc = await render(http, r, asset, via_header=round_ == 1)
            assert status == 200, doc
            assert (h["X-ModelFleet-Pool"], h["X-ModelFleet-Asset-Pool"]) == (pool, pool), asset
            assert h["X-ModelFleet-Asset-Moved"] == "false"
    # Router-only: the worker never sees asset_id.
    assert all("asset_id" not in body for body in a.bodies + b.bodies)
    # Without an asset the weights still decide (both pools keep getting traffic).
    seen = set()
    for _ in range(30):
        status, h, _doc, _ = await post(http, r, {"prompt": "no asset"})
        assert status == 200 and "X-ModelFleet-Asset-Pool" not in h
        seen.add(h["X-ModelFleet-Pool"])
    assert seen == {"a", "b"}

    # Pool b is gone from the config: its assets move to a, once, and then stay there.
    write_config(r.config, [split("a", "a")], {"a": [a.url]})
    assert r.proc is not None
    r.proc.send_signal(signal.SIGHUP)

    moved_b = [k for k, p in first.items() if p == "b"]
    await wait_for_async(
        lambda: render(http, r, moved_b[0]),
        until=lambda got: got[1]["X-ModelFleet-Asset-Moved"] == "true",
        what="the first b asset to move after the reload",
        **SOON,
    )
    for asset in moved_b[1:]:
        status, h, doc = await render(http, r, asset)
        assert status == 200, doc
        assert (h["X-ModelFleet-Pool"], h["X-ModelFleet-Asset-Pool"]) == ("a", "a")
        assert h["X-ModelFleet-Asset-Moved"] == "true"
    for asset in first:
        status, h, doc = await render(http, r, asset)
        assert (status, h["X-ModelFleet-Asset-Pool"], h["X-ModelFleet-Asset-Moved"]) == (
            200,
            "a",
            "false",
        ), asset
    m = await metrics(http, r)
    assert metric(m, "modelfleet_router_asset_moves_total") == len(moved_b)


async def test_an_explicit_other_model_passes_the_record_over_and_keeps_it(
    workers: Any, http: aiohttp.ClientSession, router: Any, tmp_path: Path
) -> None:
    """Clients that send `model` every time keep stickiness across a canary of that model
    (both pools serve the name); asking for another model for an asset renders it there
    without rewriting the asset's record."""
    a, b, c = await workers("a"), await workers("b"), await workers("c")
    pol = policy(
        [{"name": "main", "pool": "a"}, {"name": "next", "match": {"tags": ["x"]}, "pool": "c"}],
        status_routes=[
            {"name": "main", "pools": [{"pool": "a", "weight": 50}, {"pool": "b", "weight": 50}]}
        ],
    )
    cfg = tmp_path / "models.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "policies": [pol],
                "endpoints": {"a": [a.url], "b": [b.url], "c": [c.url]},
                "modelNames": {"a": ["m1"], "b": ["m1"], "c": ["m2"]},
            }
        )
    )
    r = RouterProcess(cfg, ["--asset-store", "memory"]).start()
    try:
        home: dict[str, str] = {}
        for i in range(20):
            body = {"prompt": "x", "model": "m1", "asset_id": f"m-{i}"}
            status, h, doc, _ = await post(http, r, body)
            assert status == 200, doc
            home[f"m-{i}"] = h["X-ModelFleet-Pool"]
        assert set(home.values()) == {"a", "b"}
        for asset, pool in home.items():
            status, h, doc, _ = await post(
                http, r, {"prompt": "x", "model": "m1", "asset_id": asset}
            )
            assert (status, h["X-ModelFleet-Pool"]) == (200, pool), doc
            status, h, doc, _ = await post(
                http, r, {"prompt": "x", "model": "m2", "asset_id": asset}
            )
            assert (status, h["X-ModelFleet-Pool"], h["X-ModelFleet-Asset-Pool"]) == (
                200,
                "c",
                pool,
            )
            assert h["X-ModelFleet-Asset-Moved"] == "false"
            status, h, doc, _ = await post(http, r, {"prompt": "x", "asset_id": asset})
            assert (status, h["X-ModelFleet-Pool"]) == (200, pool), doc
    finally:
        r.stop()


async def test_malformed_asset_id_is_a_400_naming_it(
    workers: Any, http: aiohttp.ClientSession, router: Any
) -> None:
    a = await workers("a")
    r = router([split("a", "a")], {"a": [a.url]})
    for body, headers in [
        ({"prompt": "x", "asset_id": "has space"}, {}),
        ({"prompt": "x", "asset_id": 5}, {}),
        ({"prompt": "x"}, {"X-ModelFleet-Asset": "x" * 201}),
    ]:
        status, _h, doc, _ = await post(http, r, body, headers)
        assert status == 400, doc
        assert doc["error"]["param"] == "asset_id", doc
    assert a.requests == 0


async def test_redis_killed_fails_no_request_and_stickiness_returns(
    workers: Any, http: aiohttp.ClientSession, router: Any, redis_server: RedisServer
) -> None:
    a, b = await workers("a"), await workers("b")
    r = router([split("a", "b")], {"a": [a.url], "b": [b.url]}, "--asset-store", redis_server.url)
    first: dict[str, str] = {}
    for i in range(30):
        status, h, doc = await render(http, r, f"r-{i}")
        assert status == 200, doc
        first[f"r-{i}"] = h["X-ModelFleet-Pool"]
    assert set(first.values()) == {"a", "b"}
    redis_server.kill()
    served = []
    for asset in first:
        status, h, doc = await render(http, r, asset)
        assert status == 200, doc  # fail open: never an error for a store outage
        served.append(h["X-ModelFleet-Pool"])
    # The weights served during the outage: some assets landed on the other pool.
    assert any(p != first[k] for k, p in zip(first, served, strict=True))
    m = await metrics(http, r)
    assert metric(m, "modelfleet_router_asset_store_errors_total", op="get") >= len(first)
    redis_server.start()  # same port and directory: the records are back
    ok_gets = metric(await metrics(http, r), "modelfleet_router_asset_store_seconds_count")

    async def lookups_ok() -> float:
        await render(http, r, "r-0")
        return metric(await metrics(http, r), "modelfleet_router_asset_store_seconds_count")

    # The router leaves the store alone for 1 s after an error, then reaches it again.
    await wait_for_async(
        lookups_ok,
        until=lambda n: n > ok_gets,
        what="lookups reaching Redis again",
        timeout=10,
        interval=0.1,
    )
    errors_before = metric(await metrics(http, r), "modelfleet_router_asset_store_errors_total")
    for asset, pool in first.items():
        status, h, doc = await render(http, r, asset)
        assert status == 200, doc
        assert h["X-ModelFleet-Pool"] == pool, asset
    after = metric(await metrics(http, r), "modelfleet_router_asset_store_errors_total")
    assert after == errors_before


async def test_redis_password_from_a_file_never_shown(
    workers: Any, http: aiohttp.ClientSession, router: Any, tmp_path: Path
) -> None:
    secret = "pw-" + "7f3a9c" * 4
    redis = RedisServer(tmp_path / "redis-auth", password=secret).start()
    try:
        a = await workers("a")
        pw = tmp_path / "password"
        pw.write_text(secret + "\n")
        r = router(
            [split("a", "a")],
            {"a": [a.url]},
            *("--asset-store", redis.url, "--asset-store-password-file", str(pw)),
        )
        status, h, doc = await render(http, r, "p-1")
        assert status == 200, doc
        status, h, doc = await render(http, r, "p-1")
        assert h["X-ModelFleet-Asset-Pool"] == "a"
        m = await metrics(http, r)
        assert metric(m, "modelfleet_router_asset_store_errors_total") == 0  # AUTH worked
        async with http.get(r.url + "/metrics") as resp:
            assert secret not in await resp.text()
        assert secret not in r.logs()
        # The Secret rotates: Redis takes a new password, the file changes, connections drop.
        # The router reads the file again for its next connection: no restart.
        from redis.asyncio import Redis

        admin = Redis.from_url(redis.url, password=secret)
        rotated = "pw-" + "1b2d4e" * 4
        await admin.config_set("requirepass", rotated)
        pw.write_text(rotated + "\n")
        await admin.client_kill_filter(_type="normal", skipme=True)
        await admin.aclose()
        before = metric(await metrics(http, r), "modelfleet_router_asset_store_seconds_count")

        async def lookups_ok() -> float:
            status, _h, _doc = await render(http, r, "p-1")
            assert status == 200  # rotation or not, requests never fail
            return metric(await metrics(http, r), "modelfleet_router_asset_store_seconds_count")

        await wait_for_async(
            lookups_ok,
            until=lambda n: n > before,
            what="lookups with the rotated password",
            timeout=10,
            interval=0.1,
        )
        assert rotated not in r.logs() and secret not in r.logs()
        # A wrong password: requests still succeed, the misses are counted, never shown.
        pw.write_text("wrong\n")
        r2 = router(
            [split("a", "a")],
            {"a": [a.url]},
            *("--asset-store", redis.url, "--asset-store-password-file", str(pw)),
        )
        status, h, doc = await render(http, r2, "p-2")
        assert status == 200, doc
        m = await metrics(http, r2)
        assert metric(m, "modelfleet_router_asset_store_errors_total", op="get") == 1
        assert secret not in r2.logs() and "wrong" not in r2.logs()
    finally:
        redis.stop()
