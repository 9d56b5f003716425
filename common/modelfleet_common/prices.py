"""Per-image prices of hosted models: the shipped table (prices.json, with each entry's
source and date) and a pool's overrides. Lookup is pure; only load_table reads a file."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TABLE_PATH = Path(__file__).with_name("prices.json")


@dataclass(frozen=True)
class Price:
    usd_per_image: float
    quality: str | None = None  # None: any
    size: str | None = None  # "WxH"; None: any
    provider: str | None = None  # None in overrides: the pool's own
    model: str | None = None
    source: str = ""
    date: str = ""

    def matches(self, provider: str, model: str, quality: str | None, size: str) -> bool:
        return (
            (self.provider is None or self.provider == provider)
            and (self.model is None or self.model == model)
            and (self.quality is None or self.quality == quality)
            and (self.size is None or self.size == size)
        )


@dataclass(frozen=True)
class PriceTable:
    entries: tuple[Price, ...]
    default_quality: dict[str, str]  # "provider/model" -> quality billed for None/"auto"

    def lookup(
        self,
        provider: str,
        model: str,
        quality: str | None,
        size: str,
        overrides: Sequence[Price] = (),
    ) -> float | None:
        """USD per image, or None when neither the overrides nor the table know it."""
        if quality in (None, "auto"):
            quality = self.default_quality.get(f"{provider}/{model}", quality)
        # Overrides: the most specific match wins (quality+size, then one, then neither).
        ranked = sorted(overrides, key=lambda p: -((p.quality is not None) + (p.size is not None)))
        for p in (*ranked, *self.entries):
            if p.matches(provider, model, quality, size):
                return p.usd_per_image
        return None


class PriceError(ValueError):
    pass


def _price(raw: Any, where: str, shipped: bool) -> Price:
    if not isinstance(raw, dict):
        raise PriceError(f"{where}: must be an object")
    usd = raw.get("usd_per_image", raw.get("usdPerImage"))
    if isinstance(usd, bool) or not isinstance(usd, int | float) or usd < 0:
        raise PriceError(f"{where}: usdPerImage must be a number >= 0")
    for key in ("quality", "size", "provider", "model"):
        if raw.get(key) is not None and not isinstance(raw[key], str):
            raise PriceError(f"{where}: {key} must be a string or null")
    if shipped and not (raw.get("source") and raw.get("date")):
        raise PriceError(f"{where}: a shipped price needs its source and date")
    return Price(
        usd_per_image=float(usd),
        quality=raw.get("quality"),
        size=raw.get("size"),
        provider=raw.get("provider"),
        model=raw.get("model"),
        source=str(raw.get("source", "")),
        date=str(raw.get("date", "")),
    )


def parse_table(doc: Any) -> PriceTable:
    if not isinstance(doc, dict) or not isinstance(doc.get("entries"), list):
        raise PriceError("price table: needs an 'entries' list")
    entries = tuple(_price(e, f"entries[{i}]", True) for i, e in enumerate(doc["entries"]))
    dq = doc.get("default_quality", {})
    if not isinstance(dq, dict) or not all(isinstance(v, str) for v in dq.values()):
        raise PriceError("price table: default_quality must map 'provider/model' to a string")
    return PriceTable(entries, dict(dq))


def load_table(path: Path = TABLE_PATH) -> PriceTable:
    return parse_table(json.loads(path.read_text()))


def parse_overrides(text: str) -> tuple[Price, ...]:
    """A pool's overrides: '' (none), a number (that price for every image), or a JSON
    list of {"quality"?, "size"?, "usd_per_image"} (the most specific match wins)."""
    text = text.strip()
    if not text:
        return ()
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise PriceError(f"price overrides are not JSON: {exc}") from exc
    if isinstance(doc, int | float) and not isinstance(doc, bool):
        return (_price({"usdPerImage": doc}, "price overrides", False),)
    if not isinstance(doc, list):
        raise PriceError("price overrides must be a number or a list of objects")
    return tuple(_price(e, f"price overrides[{i}]", False) for i, e in enumerate(doc))
