"""Pure translation of a client request to provider calls: size policy, n split, seeds."""

from __future__ import annotations

import pytest

from modelfleet_worker.hosted.backend import Capabilities, Size
from modelfleet_worker.hosted.translate import (
    TranslationError,
    aspect_ratio,
    call_seeds,
    check_quality,
    choose_size,
    nearest_size,
    plan_calls,
    split_n,
)

DALLE3 = Capabilities(
    sizes=(Size(1024, 1024), Size(1792, 1024), Size(1024, 1792)),
    default_size=Size(1024, 1024),
    max_n=1,
    seed=False,
    edits=False,
    qualities=("standard", "hd"),
)
SEEDED = Capabilities(
    sizes=(Size(1024, 1024), Size(2048, 2048), Size(1408, 768), Size(768, 1408)),
    default_size=Size(1024, 1024),
    max_n=4,
    seed=True,
    edits=False,
)


@pytest.mark.parametrize(
    ("requested", "policy", "want"),
    [
        (None, "reject", Size(1024, 1024)),
        ("auto", "reject", Size(1024, 1024)),
        ("1792x1024", "reject", Size(1792, 1024)),
        ("1000x1000", "nearest", Size(1024, 1024)),
        ("1920x1080", "nearest", Size(1792, 1024)),
        ("512x1024", "nearest", Size(1024, 1792)),
    ],
)
def test_choose_size(requested: str | None, policy: str, want: Size) -> None:
    assert choose_size(requested, DALLE3, policy) == want


def test_reject_names_size_and_lists_allowed_values() -> None:
    with pytest.raises(TranslationError) as err:
        choose_size("1000x1000", DALLE3, "reject")
    assert err.value.param == "size"
    for allowed in ("1024x1024", "1792x1024", "1024x1792"):
        assert allowed in err.value.message


@pytest.mark.parametrize("bad", ["big", "0x10", "10x", "x10", "-5x5", "1024*1024"])
def test_malformed_size_is_rejected_under_either_policy(bad: str) -> None:
    for policy in ("reject", "nearest"):
        with pytest.raises(TranslationError) as err:
            choose_size(bad, DALLE3, policy)
        assert err.value.param == "size"


@pytest.mark.parametrize(
    ("requested", "want"),
    [
        (Size(2000, 2000), Size(2048, 2048)),  # same shape: the nearer scale
        (Size(1100, 1100), Size(1024, 1024)),
        (Size(1920, 1080), Size(1408, 768)),  # shape before scale
        (Size(1080, 1920), Size(768, 1408)),
    ],
)
def test_nearest_prefers_shape_then_scale(requested: Size, want: Size) -> None:
    assert nearest_size(requested, SEEDED.sizes) == want


@pytest.mark.parametrize(
    ("n", "max_n", "want"),
    [(1, 1, [1]), (3, 1, [1, 1, 1]), (7, 3, [3, 3, 1]), (8, 4, [4, 4]), (2, 10, [2])],
)
def test_split_n(n: int, max_n: int, want: list[int]) -> None:
    assert split_n(n, max_n) == want
    assert sum(split_n(n, max_n)) == n


def test_split_n_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        split_n(0, 4)


def test_call_seeds_offset_by_the_images_before_each_call() -> None:
    assert call_seeds(100, [4, 4, 1], SEEDED) == [100, 104, 108]
    assert call_seeds(None, [4, 1], SEEDED) == [None, None]
    assert call_seeds(100, [1, 1], DALLE3) == [None, None]  # the provider takes no seed


def test_plan_calls() -> None:
    plan = plan_calls(9, "1000x1000", 7, SEEDED, "nearest")
    assert plan.size == Size(1024, 1024)
    assert plan.counts == (4, 4, 1)
    assert plan.seeds == (7, 11, 15)


@pytest.mark.parametrize(
    ("size", "ratio"),
    [(Size(1024, 1024), "1:1"), (Size(1792, 1024), "7:4"), (Size(1408, 768), "11:6")],
)
def test_aspect_ratio(size: Size, ratio: str) -> None:
    assert aspect_ratio(size) == ratio


def test_quality_checked_against_the_model() -> None:
    assert check_quality("hd", DALLE3) == "hd"
    assert check_quality(None, DALLE3) is None
    with pytest.raises(TranslationError) as err:
        check_quality("high", DALLE3)
    assert err.value.param == "quality" and "standard, hd" in err.value.message
    with pytest.raises(TranslationError):
        check_quality("hd", SEEDED)  # takes no quality at all
