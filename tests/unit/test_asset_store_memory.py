"""MemoryAssetStore (TTL from last use, bounded, LRU), the fail-open wrapper, and the
router's two calls (StickyAssets) over a store that fails on demand."""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from modelfleet.router.assets import (
    AssetConfigError,
    FailOpenStore,
    MemoryAssetStore,
    RedisAssetStore,
    StickyAssets,
    add_asset_args,
    asset_store_from_args,
    describe,
)
from modelfleet.routing.sticky import AssetRecord


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def rec(pool: str, digest: str = "d") -> AssetRecord:
    return AssetRecord(pool, "m", None, digest, None, 1.0)


async def test_memory_ttl_slides_on_use() -> None:
    clock = Clock()
    s = MemoryAssetStore(ttl_s=10, clock=clock)
    await s.put("ns", "a", rec("p"))
    clock.t += 9
    assert await s.get("ns", "a") == rec("p")  # a use: expiry now at +19
    clock.t += 9
    assert await s.get("ns", "a") == rec("p")
    clock.t += 10
    assert await s.get("ns", "a") is None
    assert len(s) == 0  # the expired entry is dropped, not kept


async def test_memory_namespaces_are_separate_and_put_overwrites() -> None:
    s = MemoryAssetStore()
    await s.put("a", "x", rec("p1"))
    await s.put("b", "x", rec("p2"))
    assert (await s.get("a", "x"), await s.get("b", "x")) == (rec("p1"), rec("p2"))
    await s.put("a", "x", rec("p3"))
    assert await s.get("a", "x") == rec("p3")


async def test_memory_bounded_lru() -> None:
    s = MemoryAssetStore(max_entries=3)
    for k in "abc":
        await s.put("ns", k, rec(k))
    assert await s.get("ns", "a") == rec("a")  # a is now the most recent
    await s.put("ns", "d", rec("d"))  # evicts b, the least recently used
    assert len(s) == 3
    assert await s.get("ns", "b") is None
    assert [await s.get("ns", k) for k in "acd"] == [rec("a"), rec("c"), rec("d")]


def test_memory_refuses_nonsense_bounds() -> None:
    with pytest.raises(ValueError):
        MemoryAssetStore(ttl_s=0)
    with pytest.raises(ValueError):
        MemoryAssetStore(max_entries=0)


class Flaky(MemoryAssetStore):
    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.calls = 0

    async def get(self, namespace: str, asset_id: str) -> AssetRecord | None:
        self.calls += 1
        if self.down:
            raise ConnectionError("store down")
        return await super().get(namespace, asset_id)

    async def put(self, namespace: str, asset_id: str, record: AssetRecord) -> None:
        self.calls += 1
        if self.down:
            raise ConnectionError("store down")
        await super().put(namespace, asset_id, record)


def errors(reg: CollectorRegistry, op: str) -> float:
    v = reg.get_sample_value("modelfleet_router_asset_store_errors_total", {"op": op})
    assert v is not None
    return v


async def test_fail_open_counts_and_pauses() -> None:
    reg, clock, inner = CollectorRegistry(), Clock(), Flaky()
    s = FailOpenStore(inner, reg, pause_s=1.0, clock=clock)
    assert await s.put("ns", "a", rec("p")) is True
    assert await s.get("ns", "a") == (rec("p"), True)
    assert errors(reg, "get") == 0 and errors(reg, "put") == 0
    inner.down = True
    assert await s.get("ns", "a") == (None, False)
    calls = inner.calls
    # Paused: the inner store is not asked, and each skipped call is a miss.
    assert await s.get("ns", "a") == (None, False)
    assert await s.put("ns", "a", rec("q")) is False
    assert inner.calls == calls
    assert errors(reg, "get") == 2 and errors(reg, "put") == 1
    inner.down = False
    clock.t += 1.0
    assert await s.get("ns", "a") == (rec("p"), True)  # back, the record intact


async def test_fail_open_times_out_a_hanging_store() -> None:
    import asyncio

    class Hang(MemoryAssetStore):
        async def get(self, namespace: str, asset_id: str) -> AssetRecord | None:
            await asyncio.Event().wait()
            return None

    reg = CollectorRegistry()
    s = FailOpenStore(Hang(), reg, op_timeout_s=0.05)
    assert await s.get("ns", "a") == (None, False)
    assert errors(reg, "get") == 1


def body_of(image: bytes, model: str = "m") -> bytes:
    return json.dumps(
        {"data": [{"b64_json": base64.b64encode(image).decode()}], "modelfleet": {"model": model}}
    ).encode()


async def test_sticky_assets_first_render_then_stick_then_move() -> None:
    reg, inner = CollectorRegistry(), Flaky()
    sa = StickyAssets(inner, reg, wall_clock=lambda: 5.0)
    t = await sa.lookup("ns", "a1", ("canary", "stable"), {"canary", "stable"})
    assert t.ladder == ("canary", "stable") and t.lookup_ok
    h = await sa.recorded(t, "canary", body_of(b"img"), {})
    assert h == {"X-ModelFleet-Asset-Pool": "canary", "X-ModelFleet-Asset-Moved": "false"}
    stored = await inner.get("ns", "a1")
    assert stored is not None and stored.pool == "canary" and stored.created_unix == 5.0
    # Weights now say stable first: the asset still goes to the canary.
    t = await sa.lookup("ns", "a1", ("stable", "canary"), {"canary", "stable"})
    assert t.ladder == ("canary", "stable")
    h = await sa.recorded(t, "canary", body_of(b"img2"), {})
    assert h["X-ModelFleet-Asset-Moved"] == "false"
    assert await inner.get("ns", "a1") == stored  # not rewritten by an edit
    # The canary pool is gone: the weights' pool serves, the record moves.
    t = await sa.lookup("ns", "a1", ("stable",), {"stable"})
    assert t.ladder == ("stable",)
    h = await sa.recorded(t, "stable", body_of(b"img3"), {})
    assert h == {"X-ModelFleet-Asset-Pool": "stable", "X-ModelFleet-Asset-Moved": "true"}
    moved = await inner.get("ns", "a1")
    assert moved is not None and moved.pool == "stable"
    assert reg.get_sample_value("modelfleet_router_asset_moves_total", {"namespace": "ns"}) == 1


async def test_sticky_assets_missed_lookup_never_overwrites() -> None:
    reg, inner = CollectorRegistry(), Flaky()
    sa = StickyAssets(inner, reg, pause_s=0.0)
    await inner.put("ns", "a1", rec("stable"))
    inner.down = True
    t = await sa.lookup("ns", "a1", ("canary", "stable"), {"canary", "stable"})
    assert not t.lookup_ok and t.ladder == ("canary", "stable")
    inner.down = False  # back before the render finished
    h = await sa.recorded(t, "canary", body_of(b"x"), {})
    assert h == {"X-ModelFleet-Asset-Pool": "canary", "X-ModelFleet-Asset-Moved": "false"}
    assert await inner.get("ns", "a1") == rec("stable")
    assert errors(reg, "get") == 1


def parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_asset_args(p)
    return p.parse_args(list(argv))


def test_flags(tmp_path: Path) -> None:
    assert asset_store_from_args(parse("--asset-store", "none")) is None
    mem = asset_store_from_args(parse("--asset-ttl", "60"))
    assert isinstance(mem, MemoryAssetStore) and mem.ttl_s == 60
    assert describe(mem) == "memory"
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    r = asset_store_from_args(
        parse("--asset-store", "redis://127.0.0.1:6390/2", "--asset-store-password-file", str(pw))
    )
    assert isinstance(r, RedisAssetStore) and r.ttl_s == 30 * 24 * 3600
    assert "s3cret" not in describe(r)
    empty = tmp_path / "empty"
    empty.write_text("\n")
    bad = [
        (("--asset-store", "redis://:pw@h:1/0"), "must not carry a password"),
        (("--asset-store", "http://h"), "is not memory, none or redis"),
        (("--asset-store", "redis://h:1/x"), "is not a number"),
        (("--asset-ttl", "0"), "--asset-ttl"),
        (("--asset-store-password-file", str(pw)), "needs a redis://"),
        (("--asset-store", "redis://h:1/0", "--asset-store-password-file", str(empty)), "empty"),
        (
            ("--asset-store", "redis://h:1/0", "--asset-store-password-file", str(tmp_path / "no")),
            "No such file",
        ),
    ]
    for argv, msg in bad:
        with pytest.raises(AssetConfigError, match=msg) as exc:
            asset_store_from_args(parse(*argv))
        assert "pw@" not in str(exc.value) and "s3cret" not in str(exc.value)


def test_password_file_is_read_per_connection(tmp_path: Path) -> None:
    from modelfleet.router.assets import PasswordFile

    pw = tmp_path / "pw"
    pw.write_text("one\n")
    creds = PasswordFile(pw)
    assert creds.get_credentials() == ("one",)
    pw.write_text("two\n")  # a rotated Secret
    assert creds.get_credentials() == ("two",)
    assert PasswordFile(pw, "app").get_credentials() == ("app", "two")
    pw.write_text("")
    with pytest.raises(ValueError, match="empty"):
        creds.get_credentials()
    # A username in the URL goes to the provider (redis-py refuses both at once).
    pw.write_text("two\n")
    store = RedisAssetStore("redis://app@127.0.0.1:1/3", password_file=pw)
    kw = store._redis.connection_pool.connection_kwargs
    assert kw.get("username") is None and kw.get("password") is None
    assert kw["credential_provider"].get_credentials() == ("app", "two")
    assert kw["db"] == 3


async def test_racing_first_renders_keep_the_first_record() -> None:
    """n variations of a new asset sent at once: each looked up no record; the first one
    recorded is the asset's, and every later answer names that pool."""
    reg, inner = CollectorRegistry(), MemoryAssetStore()
    sa = StickyAssets(inner, reg)
    tickets = [await sa.lookup("ns", "a", ("p1", "p2"), {"p1", "p2"}) for _ in range(3)]
    assert all(t.choice.record_pool is None for t in tickets)
    h1 = await sa.recorded(tickets[0], "p2", body_of(b"first"), {})
    h2 = await sa.recorded(tickets[1], "p1", body_of(b"second"), {})
    h3 = await sa.recorded(tickets[2], "p2", body_of(b"third"), {})
    assert [h["X-ModelFleet-Asset-Pool"] for h in (h1, h2, h3)] == ["p2", "p2", "p2"]
    stored = await inner.get("ns", "a")
    assert stored is not None and stored.pool == "p2"
    assert stored.digest == hashlib.sha256(b"first").hexdigest()
    # A move still overwrites (the recorded pool is gone).
    t = await sa.lookup("ns", "a", ("p1",), {"p1"})
    assert (await sa.recorded(t, "p1", body_of(b"moved"), {}))["X-ModelFleet-Asset-Moved"] == "true"
    moved = await inner.get("ns", "a")
    assert moved is not None and moved.pool == "p1"
