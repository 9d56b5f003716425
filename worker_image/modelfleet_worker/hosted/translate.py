"""Pure translation from a client request to provider calls: size policy, n split, seeds.

Every rejection is a TranslationError naming the client field and listing what is
allowed, which the server returns as a 400 in the OpenAI error shape.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

from .backend import Capabilities, Size

SIZE_POLICIES = ("reject", "nearest")


class TranslationError(ValueError):
    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param
        self.message = message


def parse_size(value: str) -> Size:
    w, sep, h = value.partition("x")
    if not sep or not w.isdigit() or not h.isdigit() or int(w) < 1 or int(h) < 1:
        raise TranslationError("size", f"size must look like '1024x1024', got {value[:32]!r}")
    return Size(int(w), int(h))


def aspect_ratio(size: Size) -> str:
    """'W:H' reduced, e.g. 1792x1024 -> '7:4'."""
    f = Fraction(size.width, size.height)
    return f"{f.numerator}:{f.denominator}"


def _distance(a: Size, b: Size) -> tuple[float, float]:
    # Shape first (log of the aspect ratios), then scale (log of the areas): a
    # 1000x1000 request is nearer 1024x1024 than 1536x1024, and 2000x2000 nearer
    # 2048x2048 than 1024x1024.
    shape = abs(math.log(a.width / a.height) - math.log(b.width / b.height))
    scale = abs(math.log(a.width * a.height) - math.log(b.width * b.height))
    return (round(shape, 6), scale)


def nearest_size(requested: Size, allowed: Sequence[Size]) -> Size:
    return min(allowed, key=lambda s: _distance(requested, s))


def choose_size(requested: str | None, caps: Capabilities, policy: str) -> Size:
    """The provider size for a request's `size` ("auto"/None = the default)."""
    if requested is None or requested == "auto":
        return caps.default_size
    want = parse_size(requested)
    if want in caps.sizes:
        return want
    if policy == "nearest":
        return nearest_size(want, caps.sizes)
    allowed = ", ".join(str(s) for s in caps.sizes)
    raise TranslationError(
        "size", f"size {want} is not one this model makes; allowed: {allowed} (or 'auto')"
    )


def split_n(n: int, max_n: int) -> list[int]:
    """Images per provider call: n=7, max 3 -> [3, 3, 1]."""
    if n < 1 or max_n < 1:
        raise ValueError(f"n and max_n must be >= 1, got {n}, {max_n}")
    full, rest = divmod(n, max_n)
    return [max_n] * full + ([rest] if rest else [])


def call_seeds(seed: int | None, counts: Sequence[int], caps: Capabilities) -> list[int | None]:
    """The seed for each call: seed, seed + images before it, ... so a split request
    makes the same images as calls of one image each would; None where the provider
    takes no seed or the client gave none."""
    if seed is None or not caps.seed:
        return [None] * len(counts)
    out: list[int | None] = []
    offset = 0
    for c in counts:
        out.append(seed + offset)
        offset += c
    return out


def check_quality(quality: str | None, caps: Capabilities) -> str | None:
    if quality is None:
        return None
    if not caps.qualities:
        raise TranslationError("quality", "this model takes no quality setting")
    if quality not in caps.qualities:
        raise TranslationError(
            "quality", f"quality must be one of {', '.join(caps.qualities)}, got {quality!r}"
        )
    return quality


@dataclass(frozen=True)
class CallPlan:
    size: Size
    counts: tuple[int, ...]  # images per provider call
    seeds: tuple[int | None, ...]


def plan_calls(
    n: int, size: str | None, seed: int | None, caps: Capabilities, policy: str
) -> CallPlan:
    chosen = choose_size(size, caps, policy)
    counts = split_n(n, caps.max_n)
    return CallPlan(chosen, tuple(counts), tuple(call_seeds(seed, counts, caps)))
