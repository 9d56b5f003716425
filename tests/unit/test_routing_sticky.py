"""Sticky assets' decisions (routing.sticky): table tests."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest

from modelfleet.routing.sticky import (
    AssetRecord,
    StickyChoice,
    asset_id_of,
    record_from_response,
    sticky_choice,
)


def rec(pool: str) -> AssetRecord:
    return AssetRecord(pool, "sd3.5-medium", "r1", "ab" * 32, 7, 1700000000.0)


LADDER = ("stable", "canary", "fallback")


@pytest.mark.parametrize(
    ("record", "ladder", "live", "first", "out_ladder", "moved"),
    [
        # No record: the weights' ladder as it is, a first render.
        (None, LADDER, {"stable", "canary"}, None, LADDER, False),
        # The weights chose the canary; the asset was made by the stable: stable first.
        (
            rec("stable"),
            ("canary", "stable", "fallback"),
            {"stable", "canary"},
            "stable",
            ("stable", "canary", "fallback"),
            False,
        ),
        # Already first: unchanged.
        (rec("stable"), LADDER, {"stable"}, "stable", LADDER, False),
        # The stable went to weight 0 after promotion (absent from the ladder) but exists.
        (
            rec("old"),
            ("new", "fallback"),
            {"old", "new"},
            "old",
            ("old", "new", "fallback"),
            False,
        ),
        # The asset's pool is gone: the ladder as the weights made it, and the record moves.
        (rec("old"), ("new", "fallback"), {"new", "fallback"}, None, ("new", "fallback"), True),
        # Gone, nothing else live either: still a move (whoever serves records it).
        (rec("old"), ("new",), set(), None, ("new",), True),
        # Empty ladder (no weighted pool): the live recorded pool still serves.
        (rec("stable"), (), {"stable"}, "stable", ("stable",), False),
    ],
)
def test_sticky_choice(
    record: AssetRecord | None,
    ladder: tuple[str, ...],
    live: set[str],
    first: str | None,
    out_ladder: tuple[str, ...],
    moved: bool,
) -> None:
    c = sticky_choice(record, ladder, live)
    assert c.pool_first == first
    assert c.ladder == out_ladder
    assert c.moved is moved
    assert c.record_pool == (record.pool if record else None)


@pytest.mark.parametrize(
    ("choice", "served", "record", "asset_pool"),
    [
        (StickyChoice(None, LADDER, False, None), "canary", True, "canary"),  # first render
        (StickyChoice(None, LADDER, True, "old"), "stable", True, "stable"),  # moved
        (StickyChoice("stable", LADDER, False, "stable"), "stable", False, "stable"),
        # Its pool exists but had no endpoint this once: served by a fallback, not moved.
        (StickyChoice("stable", LADDER, False, "stable"), "fallback", False, "stable"),
    ],
)
def test_should_record_and_asset_pool(
    choice: StickyChoice, served: str, record: bool, asset_pool: str
) -> None:
    assert choice.should_record is record
    assert choice.asset_pool(served) == asset_pool


def test_record_json_round_trip_and_refusals() -> None:
    r = rec("stable")
    assert AssetRecord.from_json(r.to_json()) == r
    r2 = AssetRecord("p", "m", None, "d", None, 1.0)
    assert AssetRecord.from_json(r2.to_json().encode()) == r2
    for bad in ["[]", '{"pool": "", "model": "m"}', '{"pool": "p", "model": "m"}', "nope"]:
        with pytest.raises(ValueError):
            AssetRecord.from_json(bad)
    doc = json.loads(r.to_json())
    for field, value in [("seed", True), ("seed", "7"), ("revision", 3), ("created_unix", None)]:
        with pytest.raises(ValueError):
            AssetRecord.from_json(json.dumps({**doc, field: value}))


@pytest.mark.parametrize(
    ("body", "headers", "want"),
    [
        ({}, {}, None),
        ({"asset_id": "a-1"}, {}, "a-1"),
        ({}, {"x-modelfleet-asset": "hdr/2"}, "hdr/2"),
        ({"asset_id": "body"}, {"x-modelfleet-asset": "hdr"}, "body"),  # body wins
    ],
)
def test_asset_id_of(body: dict[str, object], headers: dict[str, str], want: str | None) -> None:
    assert asset_id_of(body, headers) == want


@pytest.mark.parametrize("bad", ["", "a b", "x" * 201, 5, None])
def test_asset_id_of_refuses(bad: object) -> None:
    body = {"asset_id": bad} if bad is not None else {}
    headers = {} if bad is not None else {"x-modelfleet-asset": "tab\there"}
    with pytest.raises(ValueError, match="asset_id must be"):
        asset_id_of(body, headers)


def test_record_from_response_digests_the_first_image() -> None:
    first, second = b"\x89PNG first image", b"\x89PNG second"
    body = json.dumps(
        {
            "created": 1,
            "data": [
                {"b64_json": base64.b64encode(first).decode()},
                {"b64_json": base64.b64encode(second).decode()},
            ],
            "modelfleet": {"model": "sd3.5-medium", "revision": "abc", "seeds": [42, 43]},
        }
    ).encode()
    r = record_from_response("stable", body, {}, 123.5)
    assert r == AssetRecord(
        "stable", "sd3.5-medium", "abc", hashlib.sha256(first).hexdigest(), 42, 123.5
    )


def test_record_from_response_falls_back_on_headers() -> None:
    img = b"pixels"
    body = json.dumps({"data": [{"b64_json": base64.b64encode(img).decode()}]}).encode()
    headers = {"X-ModelFleet-Model": "sdxl", "X-ModelFleet-Revision": "r9"}
    r = record_from_response("p", body, headers, 1.0)
    assert r is not None
    assert (r.model, r.revision, r.seed) == ("sdxl", "r9", None)
    assert r.digest == hashlib.sha256(img).hexdigest()


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"data": []}',
        b'{"data": [{"url": "x"}]}',
        b'{"data":[{"b64_json":"@@"}]}',
    ],
)
def test_record_from_response_without_an_image(body: bytes) -> None:
    assert record_from_response("p", body, {}, 1.0) is None


@pytest.mark.parametrize(
    ("model_pools", "first", "out_ladder", "moved", "record_pool"),
    [
        # The request's model is served by both canary pools: stickiness as without one.
        ({"stable", "canary"}, "stable", ("stable", "canary"), False, "stable"),
        # The client asked for a model the asset's pool does not serve: that model's
        # ladder serves this request; the record stays (not moved, not rewritten).
        ({"canary"}, None, ("canary", "stable"), False, "stable"),
        # No pool serves it (names unknown): the same, the record untouched.
        (set(), None, ("canary", "stable"), False, "stable"),
    ],
)
def test_sticky_choice_with_a_model(
    model_pools: set[str],
    first: str | None,
    out_ladder: tuple[str, ...],
    moved: bool,
    record_pool: str,
) -> None:
    c = sticky_choice(rec("stable"), ("canary", "stable"), {"stable", "canary"}, model_pools)
    assert (c.pool_first, c.ladder, c.moved, c.record_pool) == (
        first,
        out_ladder,
        moved,
        record_pool,
    )
    assert not c.should_record and c.asset_pool("canary") == "stable"


def test_sticky_choice_with_a_model_when_the_pool_is_gone() -> None:
    c = sticky_choice(rec("old"), ("new",), {"new"}, {"new"})
    assert (c.pool_first, c.moved, c.should_record) == (None, True, True)


def test_model_pools() -> None:
    from modelfleet.routing.models import PoolModels
    from modelfleet.routing.sticky import model_pools

    names = {
        ("ns", "stable"): PoolModels(("sd3.5-medium",)),
        ("ns", "canary"): PoolModels(("sd3.5-medium", "sd3.5-next")),
        ("ns", "unnamed"): PoolModels(()),
        ("other", "x"): PoolModels(("sd3.5-medium",)),
    }
    assert model_pools(None, "ns", names) is None
    assert model_pools("sd3.5-medium", "ns", names) == frozenset({"stable", "canary"})
    assert model_pools("sd3.5-next", "ns", names) == frozenset({"canary"})
    assert model_pools("nope", "ns", names) == frozenset()
    # A namespace whose pools name no models routes `model` by intent: no restriction.
    assert model_pools("sd3.5-medium", "bare", names) is None
    assert model_pools("sd3.5-medium", "ns", {("ns", "u"): PoolModels(())}) is None
