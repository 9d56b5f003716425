"""The text-drawing test backend: corruption always changes a word, drawing is deterministic."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from modelfleet_common.textscore import word_accuracy
from modelfleet_dev.textrender import TextRenderModel, corrupt, corrupts, draw_text, random_style
from modelfleet_worker.pipeline import ItemSpec

LINES = st.lists(
    st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789% ", min_size=1, max_size=24).filter(
        lambda s: any(c.isalnum() for c in s)
    ),
    min_size=1,
    max_size=3,
)


@given(LINES, st.integers(0, 2**32 - 1))
def test_corruption_always_changes_a_word(lines: list[str], seed: int) -> None:
    bad = corrupt(lines, random.Random(seed))
    assert len(bad) == len(lines)
    assert word_accuracy(" ".join(lines), " ".join(bad)) < 1.0


def test_corrupts_follows_the_rate() -> None:
    hits = sum(corrupts(s, 0.3) for s in range(2000))
    assert 500 < hits < 700
    assert not any(corrupts(s, 0.0) for s in range(100))
    assert all(corrupts(s, 1.0) for s in range(100))


def test_same_seed_same_image() -> None:
    a, b = (
        draw_text(["SALE"], 128, 64, random_style(random.Random(3)), random.Random(3)) for _ in "ab"
    )
    assert a.tobytes() == b.tobytes() and a.size == (128, 64)


def test_model_draws_the_expected_text_or_a_corrupted_copy() -> None:
    m = TextRenderModel(corruption_rate=1.0)
    clean = TextRenderModel(corruption_rate=0.0)
    spec = ItemSpec("a poster", None, 5, ("SALE NOW",))
    bad, good = m.generate([spec], 256, 128, 1, 0)[0], clean.generate([spec], 256, 128, 1, 0)[0]
    assert bad.size == good.size == (256, 128)
    assert bad.tobytes() != good.tobytes()
    blank = clean.generate([ItemSpec("a poster", None, 5)], 64, 64, 1, 0)[0]
    rng = random.Random(5)
    background = draw_text([], 64, 64, random_style(rng), rng)
    assert blank.tobytes() == background.tobytes()  # no expected text: nothing drawn
