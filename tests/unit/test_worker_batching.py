"""Batching policy: table tests over pure select_batch/next_deadline."""

from __future__ import annotations

import pytest

from modelfleet_worker.batching import BatchKey, Pending, next_deadline, select_batch

A = BatchKey(64, 64, 4, 7.5, False)
B = BatchKey(64, 64, 4, 7.5, True)  # differs only by negative-prompt presence
C = BatchKey(128, 64, 4, 7.5, False)


def items(*spec: tuple[BatchKey, float]) -> list[Pending[str]]:
    return [Pending(k, t, i, f"r{i}") for i, (k, t) in enumerate(spec)]


def cap(n: int) -> object:
    return lambda key: n


@pytest.mark.parametrize(
    ("pending", "now", "cap_n", "drain", "want_key", "want_ids", "reason"),
    [
        # nothing waits
        ([], 0.0, 4, False, None, [], None),
        # young partial bucket waits for more
        (items((A, 0.0), (A, 0.01)), 0.05, 4, False, None, [], None),
        # full bucket flushes at once
        (items(*[(A, 0.0)] * 4), 0.0, 4, False, A, [0, 1, 2, 3], "full"),
        # a bucket larger than the cap flushes cap items, FIFO
        (items(*[(A, 0.0)] * 6), 0.0, 4, False, A, [0, 1, 2, 3], "full"),
        # deadline flushes a partial bucket
        (items((A, 0.0), (A, 0.02)), 0.08, 4, False, A, [0, 1], "deadline"),
        # incompatible requests never share a batch
        (items((A, 0.0), (B, 0.0), (C, 0.0)), 0.1, 4, False, A, [0], "deadline"),
        # oldest-first across ready buckets: the old quiet bucket beats a full busy one
        (items((B, 0.0), *[(A, 0.05)] * 4), 0.09, 4, False, B, [0], "deadline"),
        # ...but a full bucket goes first while the other is not yet due
        (items((B, 0.0), *[(A, 0.01)] * 4), 0.02, 4, False, A, [1, 2, 3, 4], "full"),
        # draining: no waiting for deadlines
        (items((A, 0.0)), 0.0, 4, True, A, [0], "drain"),
        # cap 1 (no batching): every item is its own full batch
        (items((A, 0.0), (A, 0.0)), 0.0, 1, False, A, [0], "full"),
        # cap 0 from the memory cap is treated as 1 (run alone)
        (items((A, 0.0)), 0.0, 0, False, A, [0], "full"),
    ],
)
def test_select_batch(
    pending: list[Pending[str]],
    now: float,
    cap_n: int,
    drain: bool,
    want_key: BatchKey | None,
    want_ids: list[int],
    reason: str | None,
) -> None:
    sel = select_batch(pending, now, 0.08, cap(cap_n), drain=drain)  # type: ignore[arg-type]
    if want_key is None:
        assert sel is None
        return
    assert sel is not None
    assert sel.key == want_key
    assert [p.seq for p in sel.items] == want_ids
    assert sel.reason == reason


def test_per_key_cap() -> None:
    pending = items(*[(C, 0.0)] * 3)
    sel = select_batch(pending, 0.0, 0.08, lambda k: 2 if k == C else 8)
    assert sel is not None and len(sel.items) == 2


def test_next_deadline() -> None:
    assert next_deadline([], 0.08) is None
    assert next_deadline(items((A, 1.0), (B, 0.5)), 0.08) == pytest.approx(0.58)


def test_no_starvation_simulation() -> None:
    """A bucket refilled every tick never holds back another past its deadline."""
    latency = 0.08
    pending = items((B, 0.0))
    seq = 100
    now = 0.0
    served_b_at = None
    while now < 1.0 and served_b_at is None:
        pending += [Pending(A, now, seq + i, "a") for i in range(4)]
        seq += 4
        sel = select_batch(pending, now, latency, lambda k: 4)
        assert sel is not None
        chosen = {p.seq for p in sel.items}
        pending = [p for p in pending if p.seq not in chosen]
        if sel.key == B:
            served_b_at = now
        now += 0.03  # each batch takes 30 ms
    assert served_b_at is not None and served_b_at <= latency + 0.03
