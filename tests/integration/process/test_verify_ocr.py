"""The real OCR engine reads the text-drawing backend's banners: right text passes,
corrupted text fails, a banner without text is unreadable."""

from __future__ import annotations

import random
import shutil
from typing import Any

import pytest
from PIL import Image

from modelfleet_dev.textrender import corrupt, draw_text, random_style
from modelfleet_worker.ocr import RapidOcr, Tesseract, make_engine
from modelfleet_worker.verify import FAILED, PASSED, UNREADABLE, verify_image

BANNERS = [
    ["SALE NOW"],
    ["GRAND OPENING", "50% OFF"],
    ["FRESH COFFEE"],
    ["SUMMER MUSIC FESTIVAL"],
    ["FREE DELIVERY", "TODAY ONLY"],
    ["HAPPY BIRTHDAY"],
]


@pytest.fixture(scope="module")
def rapid() -> RapidOcr:
    return RapidOcr()


def banner(lines: list[str], seed: int, size: tuple[int, int]) -> Any:
    rng = random.Random(seed)
    return draw_text(lines, *size, random_style(rng, blur_max=1.5, rotation_max=3.0), rng)


@pytest.mark.parametrize("size", [(1024, 512), (512, 512)])
@pytest.mark.parametrize("i", range(len(BANNERS)))
def test_right_text_passes_corrupted_fails(rapid: RapidOcr, i: int, size: tuple[int, int]) -> None:
    lines = BANNERS[i]
    good = verify_image(rapid, banner(lines, i, size), lines, 1.0)
    assert good.status == PASSED, good.block()
    assert good.score is not None and good.score.word_accuracy == 1.0
    bad_lines = corrupt(lines, random.Random(100 + i))
    bad = verify_image(rapid, banner(bad_lines, i, size), lines, 1.0)
    assert bad.status == FAILED, (bad_lines, bad.block())
    assert bad.score is not None and bad.score.word_accuracy < 1.0


def test_banner_without_text_is_unreadable(rapid: RapidOcr) -> None:
    v = verify_image(rapid, banner([], 1, (512, 512)), ["SALE NOW"], 1.0)
    assert (v.status, v.reason, v.score) == (UNREADABLE, "no text found", None)


def test_odd_images_do_not_crash(rapid: RapidOcr) -> None:
    for im in (Image.new("L", (1, 1)), Image.new("RGBA", (3000, 20)), Image.new("P", (64, 64))):
        assert verify_image(rapid, im, ["X"], 1.0).status == UNREADABLE


@pytest.mark.skipif(shutil.which("tesseract") is None, reason="tesseract-ocr not installed")
def test_tesseract_adapter_reads_a_plain_banner() -> None:
    t = make_engine("tesseract")
    assert isinstance(t, Tesseract)
    rng = random.Random(0)
    style = random_style(rng)
    plain = type(style)(style.font, 0.8, (0, 0, 0), ((255, 255, 255),) * 2, "solid", 0.0, 0.0)
    img = draw_text(["SALE NOW"], 1024, 512, plain, rng)
    assert verify_image(t, img, ["SALE NOW"], 1.0).status == PASSED
