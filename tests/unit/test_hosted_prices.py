"""The shipped price table and a pool's overrides."""

from __future__ import annotations

import json

import pytest

from modelfleet_common.prices import (
    TABLE_PATH,
    PriceError,
    load_table,
    parse_overrides,
    parse_table,
)
from modelfleet_worker.hosted.openai import capabilities_for


def test_every_shipped_entry_has_source_and_date() -> None:
    doc = json.loads(TABLE_PATH.read_text())
    for e in doc["entries"]:
        assert e["source"].startswith("https://"), e
        assert len(e["date"]) == 10, e


@pytest.mark.parametrize("model", ["gpt-image-1", "gpt-image-1-mini", "dall-e-3", "dall-e-2"])
def test_every_size_and_quality_an_openai_model_makes_is_priced(model: str) -> None:
    table = load_table()
    caps, _, _ = capabilities_for(model)
    for size in caps.sizes:
        for quality in (*caps.qualities, None):
            price = table.lookup("openai", model, quality, str(size))
            assert price is not None and price > 0, (model, quality, size)


@pytest.mark.parametrize(
    ("model", "quality", "size", "usd"),
    [
        ("dall-e-3", "standard", "1024x1024", 0.04),
        ("dall-e-3", "hd", "1792x1024", 0.12),
        ("dall-e-3", None, "1024x1792", 0.08),  # None: billed at the default quality
        ("gpt-image-1", "low", "1024x1024", 0.011),
        ("gpt-image-1", "high", "1536x1024", 0.25),
        ("gpt-image-1", "auto", "1024x1024", 0.167),
        ("dall-e-2", None, "256x256", 0.016),
    ],
)
def test_lookup(model: str, quality: str | None, size: str, usd: float) -> None:
    assert load_table().lookup("openai", model, quality, size) == usd


def test_unknown_model_has_no_price() -> None:
    assert load_table().lookup("openai", "gpt-image-9", "high", "1024x1024") is None


def test_most_specific_override_wins_then_the_table() -> None:
    overrides = parse_overrides(
        json.dumps(
            [
                {"usd_per_image": 0.5},
                {"quality": "hd", "usd_per_image": 0.2},
                {"quality": "hd", "size": "1792x1024", "usd_per_image": 0.3},
            ]
        )
    )
    t = load_table()
    assert t.lookup("openai", "dall-e-3", "hd", "1792x1024", overrides) == 0.3
    assert t.lookup("openai", "dall-e-3", "hd", "1024x1024", overrides) == 0.2
    assert t.lookup("openai", "dall-e-3", "standard", "1024x1024", overrides) == 0.5
    assert t.lookup("openai", "dall-e-3", "standard", "1024x1024") == 0.04


def test_a_plain_number_prices_every_image() -> None:
    t = load_table()
    assert t.lookup("openai", "unknown-model", None, "64x64", parse_overrides("0.07")) == 0.07
    assert parse_overrides("") == ()


@pytest.mark.parametrize(
    "text",
    ["{", '"x"', '[{"quality": "hd"}]', '[{"usd_per_image": -1}]', '[{"usd_per_image": true}]',
     '[{"size": 5, "usd_per_image": 1}]'],
)  # fmt: skip
def test_bad_overrides_are_refused(text: str) -> None:
    with pytest.raises(PriceError):
        parse_overrides(text)


def test_shipped_entries_without_source_are_refused() -> None:
    entry = {"provider": "openai", "model": "m", "usd_per_image": 0.1}
    with pytest.raises(PriceError, match="source and date"):
        parse_table({"entries": [entry]})
