"""Memory policy: the batch cap from free memory, and the OOM split ladder. Pure."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar


@dataclass(frozen=True)
class MemoryProfile:
    """Measured at warm-up, at the reference resolution.

    per_image_bytes: extra peak memory for each image in a batch (peak@2 - peak@1).
    fixed_bytes: transient peak a batch of any size needs on top of the weights.
    """

    per_image_bytes: int
    fixed_bytes: int
    ref_pixels: int


def scaled_profile(profile: MemoryProfile, pixels: int) -> tuple[int, int]:
    """Per-image and fixed bytes at another resolution.

    Activations grow linearly with pixels when attention is memory-efficient
    (SDPA flash/mem-efficient kernels); a linear estimate is what we can defend.
    """
    ratio = pixels / max(1, profile.ref_pixels)
    per_image = max(1, int(profile.per_image_bytes * ratio))
    return per_image, int(profile.fixed_bytes * ratio)


def memory_batch_cap(
    free_bytes: int,
    per_image_bytes: int,
    fixed_bytes: int,
    margin_bytes: int,
    configured_max: int,
) -> int:
    """How many images fit now: 0 means not even one, else 1..configured_max."""
    if per_image_bytes <= 0:
        return configured_max
    usable = free_bytes - margin_bytes - fixed_bytes
    if usable < per_image_bytes:
        return 0
    return min(configured_max, usable // per_image_bytes)


def margin_bytes(total_bytes: int, fraction: float, floor_bytes: int = 256 * 1024**2) -> int:
    return max(int(total_bytes * fraction), floor_bytes) if total_bytes > 0 else 0


T = TypeVar("T")
R = TypeVar("R")


@dataclass
class SplitOutcome(Generic[T, R]):
    results: dict[int, R] = field(default_factory=dict)  # index into the input -> result
    failed: dict[int, BaseException] = field(default_factory=dict)  # could not run alone
    ooms: int = 0
    splits: int = 0
    batch_sizes: list[int] = field(default_factory=list)  # sizes that ran successfully


def run_with_split(
    items: Sequence[T],
    run: Callable[[Sequence[T]], Sequence[R]],
    is_oom: Callable[[BaseException], bool],
    on_oom: Callable[[], None] = lambda: None,
) -> SplitOutcome[T, R]:
    """Run a batch; on OOM split it in halves and retry each half.

    An item fails only when it OOMs alone. Other exceptions propagate: they
    are not about size, and retrying smaller would only hide them.
    """
    out: SplitOutcome[T, R] = SplitOutcome()
    # Depth-first, left half first, so results come back in arrival order.
    stack: list[tuple[int, int]] = [(0, len(items))]
    while stack:
        lo, hi = stack.pop()
        chunk = items[lo:hi]
        try:
            results = run(chunk)
        except BaseException as exc:
            if not is_oom(exc):
                raise
            out.ooms += 1
            on_oom()
            if hi - lo == 1:
                out.failed[lo] = exc
                continue
            mid = lo + (hi - lo + 1) // 2
            out.splits += 1
            stack.append((mid, hi))
            stack.append((lo, mid))
            continue
        if len(results) != hi - lo:
            raise RuntimeError(f"batch of {hi - lo} returned {len(results)} results")
        out.batch_sizes.append(hi - lo)
        for i, r in enumerate(results):
            out.results[lo + i] = r
    return out
