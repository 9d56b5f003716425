"""A worker backend that draws the requested text instead of running a diffusion model.

For tests, benches and the demo only (never in an image): each render draws
the expected text with a real font (Debian fonts-dejavu) on a varied
background, and a configurable share of renders gets a corrupted copy of
the text (letters swapped, dropped or substituted), so the real OCR
verifier has right and wrong lettering to tell apart.

    python -m modelfleet_dev.textrender --corruption-rate 0.6 [every serve flag]

It runs the real worker server (batching, validation, verification,
metrics); only the model is replaced.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFilter, ImageFont

FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
FONTS = (
    "DejaVuSans-Bold.ttf",
    "DejaVuSans.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSansMono-Bold.ttf",
    "DejaVuSansCondensed-Bold.ttf",
)
_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
# Look-alikes a diffusion model typically confuses ("SLAE N0W").
_LOOKALIKE = {"O": "0", "0": "O", "I": "1", "1": "I", "S": "5", "E": "F", "B": "8", "G": "6"}


class FontsMissingError(RuntimeError):
    pass


def font_paths() -> list[Path]:
    paths = [FONT_DIR / f for f in FONTS if (FONT_DIR / f).is_file()]
    if not paths:
        raise FontsMissingError(
            f"no DejaVu fonts under {FONT_DIR}: install the Debian package fonts-dejavu"
        )
    return paths


# ----- corruption ---------------------------------------------------------------


def corrupts(seed: int, rate: float) -> bool:
    """Whether the render with this seed is corrupted: tests predict it the same way."""
    return random.Random(seed ^ 0x5EED).random() < rate


def _sub(c: str, rng: random.Random) -> str:
    if c.upper() in _LOOKALIKE and rng.random() < 0.5:
        out = _LOOKALIKE[c.upper()]
    else:
        out = rng.choice([x for x in _LETTERS if x != c.upper()])
    return out if c.isupper() or not c.isalpha() else out.lower()


def corrupt(lines: Sequence[str], rng: random.Random) -> list[str]:
    """The same lines with one word mangled (swap, drop or substitute a letter);
    the mangled word always differs from the original, case-insensitively."""
    spots = [
        (i, j)
        for i, line in enumerate(lines)
        for j, w in enumerate(line.split(" "))
        if sum(c.isalnum() for c in w) >= 2
    ]
    if not spots:
        spots = [(i, j) for i, line in enumerate(lines) for j, w in enumerate(line.split(" ")) if w]
    if not spots:
        return list(lines)
    i, j = rng.choice(spots)
    words = lines[i].split(" ")
    w = words[j]
    for _ in range(20):
        k = rng.randrange(len(w))
        kind = rng.choice(("swap", "drop", "sub"))
        if kind == "swap" and k + 1 < len(w):
            new = w[:k] + w[k + 1] + w[k] + w[k + 2 :]
        elif kind == "drop" and len(w) > 1:
            new = w[:k] + w[k + 1 :]
        else:
            new = w[:k] + _sub(w[k], rng) + w[k + 1 :]
        if new.casefold() != w.casefold():
            break
    words[j] = new
    out = list(lines)
    out[i] = " ".join(words)
    return out


# ----- drawing ------------------------------------------------------------------


@dataclass(frozen=True)
class Style:
    font: Path
    fill: float  # share of the image width the longest line may take
    fg: tuple[int, int, int]
    bg: tuple[tuple[int, int, int], tuple[int, int, int]]
    background: str  # solid | gradient | stripes | noise
    blur: float  # Gaussian radius, px at 1024 wide
    rotation: float  # degrees


def _luma(c: tuple[int, int, int]) -> float:
    return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]


def _colour(rng: random.Random) -> tuple[int, int, int]:
    return (rng.randrange(256), rng.randrange(256), rng.randrange(256))


def random_style(rng: random.Random, blur_max: float = 0.0, rotation_max: float = 0.0) -> Style:
    bg1 = _colour(rng)
    bg2 = tuple(max(0, min(255, v + rng.randint(-60, 60))) for v in bg1)
    light = _luma(bg1) > 128
    while True:  # lettering readable on its background, as a banner's would be
        fg = _colour(rng)
        if abs(_luma(fg) - _luma(bg1)) > 100 and (_luma(fg) < 128) == light:
            break
    return Style(
        font=rng.choice(font_paths()),
        fill=rng.uniform(0.55, 0.9),
        fg=fg,
        bg=(bg1, (bg2[0], bg2[1], bg2[2])),
        background=rng.choice(("solid", "gradient", "stripes", "noise")),
        blur=rng.uniform(0.0, blur_max),
        rotation=rng.uniform(-rotation_max, rotation_max),
    )


def _background(style: Style, width: int, height: int, rng: random.Random) -> Image.Image:
    a, b = style.bg
    img = Image.new("RGB", (width, height), a)
    if style.background == "gradient":
        grad = Image.linear_gradient("L").resize((width, height))
        img = Image.composite(Image.new("RGB", (width, height), b), img, grad)
    elif style.background == "stripes":
        d = ImageDraw.Draw(img)
        step = max(8, width // rng.randint(6, 16))
        for x in range(-height, width, step * 2):
            d.polygon([(x, 0), (x + step, 0), (x + step + height, height), (x + height, height)], b)
    elif style.background == "noise":
        # Seeded noise (Image.effect_noise is not): the same seed draws the same image.
        size = (max(1, width // 16), max(1, height // 16))
        small = Image.frombytes(
            "L",
            size,
            bytes(min(255, max(0, round(rng.gauss(128, 40)))) for _ in range(size[0] * size[1])),
        )
        tint = Image.new("RGB", small.size, b)
        img = Image.composite(tint, Image.new("RGB", small.size, a), small).resize(
            (width, height), Image.Resampling.BICUBIC
        )
    return img


def _fit_font(lines: Sequence[str], style: Style, width: int, height: int) -> Any:
    size = max(6, height // (2 * max(1, len(lines))))
    while True:
        font = ImageFont.truetype(str(style.font), size)
        widest = max(font.getbbox(line)[2] for line in lines)
        tall = size * 1.3 * len(lines)
        if size <= 6 or (widest <= width * style.fill and tall <= height * 0.8):
            return font
        size = int(size * 0.9)


def draw_text(
    lines: Sequence[str], width: int, height: int, style: Style, rng: random.Random
) -> Image.Image:
    """The lines centred on a background in one style."""
    img = _background(style, width, height, rng)
    lines = [line for line in lines if line.strip()]
    if lines:
        layer = Image.new("RGBA", (width, height), (0, 0, 0, 0))
        d = ImageDraw.Draw(layer)
        font = _fit_font(lines, style, width, height)
        line_h = font.size * 1.3
        top = (height - line_h * len(lines)) / 2
        for n, line in enumerate(lines):
            w = font.getbbox(line)[2]
            d.text(((width - w) / 2, top + n * line_h), line, font=font, fill=(*style.fg, 255))
        if style.rotation:
            layer = layer.rotate(style.rotation, resample=Image.Resampling.BICUBIC)
        img.paste(layer, (0, 0), layer)
    if style.blur > 0:
        img = img.filter(ImageFilter.GaussianBlur(style.blur * width / 1024))
    return img


# ----- the worker backend ---------------------------------------------------------


@dataclass(frozen=True)
class _Compat:
    size_multiple: int = 8


class TextRenderModel:
    """Speaks what the worker server needs of a loaded model (pipeline.LoadedModel)."""

    def __init__(self, corruption_rate: float, width: int = 512, height: int = 512) -> None:
        font_paths()  # fail at start, not on the first request
        self.corruption_rate = corruption_rate
        self.compat = _Compat()
        self.default_width = width
        self.default_height = height
        self.supports_negative_prompt = True
        self.on_cuda = False
        self.profile = None
        self.cpu_memory = None

    def generate(
        self,
        items: Sequence[Any],
        width: int,
        height: int,
        steps: int,
        guidance_scale: float,
        inject_faults: bool = True,
    ) -> list[Any]:
        out = []
        for it in items:
            rng = random.Random(it.seed)
            lines: list[str] = list(getattr(it, "text", ()))
            if lines and corrupts(it.seed, self.corruption_rate):
                # Its own generator: the style and background stay those of the same seed
                # on a pool that does not corrupt, so side by side only the letters differ.
                lines = corrupt(lines, random.Random(it.seed ^ 0xC0FFEE))
            out.append(draw_text(lines, width, height, random_style(rng), rng))
        return out

    def free_memory(self) -> tuple[int, int]:
        return 0, 0

    def empty_cache(self) -> None:
        pass

    def warm_up(self) -> None:
        pass


def build_parser() -> argparse.ArgumentParser:
    from modelfleet_worker.config import add_serve_arguments

    p = argparse.ArgumentParser(
        prog="python -m modelfleet_dev.textrender",
        description="The real worker server with a text-drawing model (tests and demo only).",
    )
    p.add_argument(
        "--corruption-rate",
        type=float,
        default=float(os.environ.get("MODELFLEET_TEXTRENDER_CORRUPTION_RATE", "0")),
        help="share of renders whose text is corrupted [env MODELFLEET_TEXTRENDER_CORRUPTION_RATE]",
    )
    p.add_argument("--default-size", type=int, default=512, help="width and height by default")
    add_serve_arguments(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from modelfleet_worker.config import resolve_config
    from modelfleet_worker.lifecycle import serve

    args = build_parser().parse_args(argv)
    if not 0.0 <= args.corruption_rate <= 1.0:
        print("textrender: --corruption-rate must be within [0, 1]", file=sys.stderr)
        return 2
    try:
        cfg = resolve_config(args, os.environ)
    except ValueError as exc:
        print(f"textrender: {exc}", file=sys.stderr)
        return 2
    rate, size = args.corruption_rate, args.default_size
    return serve(cfg, loader=lambda _cfg: TextRenderModel(rate, size, size))


if __name__ == "__main__":
    sys.exit(main())
