"""Memory cap and OOM split ladder (pure)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from modelfleet_worker.memory import (
    MemoryProfile,
    margin_bytes,
    memory_batch_cap,
    run_with_split,
    scaled_profile,
)

GiB = 1024**3


@pytest.mark.parametrize(
    ("free", "per", "fixed", "margin", "cfg", "want"),
    [
        (40 * GiB, 2 * GiB, 1 * GiB, 4 * GiB, 4, 4),  # plenty: configured max wins
        (10 * GiB, 2 * GiB, 1 * GiB, 1 * GiB, 8, 4),  # (10-1-1)/2 = 4
        (5 * GiB, 2 * GiB, 1 * GiB, 1 * GiB, 8, 1),  # (5-2)/2 = 1.5 -> 1
        (3 * GiB, 2 * GiB, 1 * GiB, 1 * GiB, 8, 0),  # 1 GiB left: not even one
        (0, 2 * GiB, 0, 0, 8, 0),
        (10 * GiB, 0, 0, 0, 3, 3),  # no estimate: configured max
    ],
)
def test_memory_batch_cap(
    free: int, per: int, fixed: int, margin: int, cfg: int, want: int
) -> None:
    assert memory_batch_cap(free, per, fixed, margin, cfg) == want


def test_scaled_profile_is_linear_in_pixels() -> None:
    p = MemoryProfile(per_image_bytes=100, fixed_bytes=50, ref_pixels=64 * 64)
    assert scaled_profile(p, 128 * 128) == (400, 200)
    assert scaled_profile(p, 64 * 64) == (100, 50)


def test_margin() -> None:
    assert margin_bytes(80 * GiB, 0.1) == 8 * GiB
    assert margin_bytes(1 * GiB, 0.01) == 256 * 1024**2  # floor
    assert margin_bytes(0, 0.1) == 0


class FakeOOM(Exception):
    pass


def runner(limit: int, calls: list[int], fail_alone: frozenset[str] = frozenset()):  # type: ignore[no-untyped-def]
    def run(chunk: Sequence[str]) -> list[str]:
        calls.append(len(chunk))
        if len(chunk) > limit or (len(chunk) == 1 and chunk[0] in fail_alone):
            raise FakeOOM("out of memory")
        return [x.upper() for x in chunk]

    return run


@pytest.mark.parametrize(
    ("n", "limit", "want_calls", "want_splits"),
    [
        (4, 4, [4], 0),  # fits: no split
        (4, 2, [4, 2, 2], 1),
        (4, 1, [4, 2, 1, 1, 2, 1, 1], 3),
        (5, 2, [5, 3, 2, 1, 2], 2),  # odd: left half takes the extra item
        (8, 3, [8, 4, 2, 2, 4, 2, 2], 3),
    ],
)
def test_split_ladder(n: int, limit: int, want_calls: list[int], want_splits: int) -> None:
    calls: list[int] = []
    items = [f"x{i}" for i in range(n)]
    out = run_with_split(items, runner(limit, calls), lambda e: isinstance(e, FakeOOM))
    assert calls == want_calls
    assert out.splits == want_splits
    assert out.ooms == len(want_calls) - len(out.batch_sizes)
    assert [out.results[i] for i in range(n)] == [x.upper() for x in items]
    assert not out.failed


def test_item_fails_only_when_it_cannot_run_alone() -> None:
    calls: list[int] = []
    cleared: list[int] = []
    out = run_with_split(
        ["a", "b", "c"],
        runner(1, calls, frozenset({"b"})),
        lambda e: isinstance(e, FakeOOM),
        on_oom=lambda: cleared.append(1),
    )
    assert set(out.results) == {0, 2}
    assert set(out.failed) == {1}
    assert len(cleared) == out.ooms


def test_non_oom_errors_propagate() -> None:
    def boom(chunk: Sequence[str]) -> list[str]:
        raise ValueError("not about memory")

    with pytest.raises(ValueError):
        run_with_split(["a", "b"], boom, lambda e: isinstance(e, FakeOOM))
