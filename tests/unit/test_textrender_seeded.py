"""The text-drawing backend is reproducible from (prompt, seed): the report shows the
pre-flight replay's renders again by asking for the same seed, and a corrupting pool's
render of a seed differs from a clean pool's only in its letters."""

from __future__ import annotations

import random
from dataclasses import dataclass

from modelfleet_dev.textrender import TextRenderModel, random_style


@dataclass(frozen=True)
class _Item:
    seed: int
    text: tuple[str, ...] = ("HAPPY MARKET",)


def test_same_seed_same_pixels_on_every_background() -> None:
    model = TextRenderModel(corruption_rate=0.5)
    seeds = list(range(40))
    backgrounds = {random_style(random.Random(s)).background for s in seeds}
    assert backgrounds == {"solid", "gradient", "stripes", "noise"}  # every kind is covered
    items = [_Item(s) for s in seeds]
    first = model.generate(items, 128, 64, steps=1, guidance_scale=0.0)
    again = model.generate(items, 128, 64, steps=1, guidance_scale=0.0)
    for seed, a, b in zip(seeds, first, again, strict=True):
        assert a.tobytes() == b.tobytes(), f"seed {seed} drew a different image"


def test_a_corrupted_render_keeps_the_seeds_style_and_background() -> None:
    clean, bad = TextRenderModel(corruption_rate=0.0), TextRenderModel(corruption_rate=1.0)
    items = [_Item(s) for s in range(20)]
    for item, a, b in zip(
        items,
        clean.generate(items, 256, 96, steps=1, guidance_scale=0.0),
        bad.generate(items, 256, 96, steps=1, guidance_scale=0.0),
        strict=True,
    ):
        assert a.tobytes() != b.tobytes(), f"seed {item.seed}: the letters should differ"
        corners = [(0, 0), (255, 0), (0, 95), (255, 95)]
        assert [a.getpixel(c) for c in corners] == [b.getpixel(c) for c in corners], item.seed
