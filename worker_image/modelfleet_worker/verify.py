"""Verifying rendered text: OCR in a bounded thread pool, scored by the pure core.

The pool runs beside the inference thread, never on it nor on the event loop:
the next batch starts while this one's images are read. Each pool thread
owns one engine on one core, so `--verify-workers` is the number of cores
verification may take.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from modelfleet_common.textscore import TextScore, score

from .ocr import OcrEngine, make_engine

log = logging.getLogger("modelfleet_worker.verify")

PASSED, FAILED, UNREADABLE = "passed", "failed", "unreadable"


@dataclass(frozen=True)
class Verification:
    status: str  # passed | failed | unreadable
    expected: tuple[str, ...]
    score: TextScore | None  # None when unreadable
    engine: str
    ocr_s: float
    reason: str = ""  # why unreadable

    def block(self) -> dict[str, Any]:
        """The image's `modelfleet` block in the response (docs/verification.md)."""
        out: dict[str, Any] = {
            "verified": self.score is not None,
            "status": self.status,
            "expected": list(self.expected),
        }
        s = self.score
        if s is None:
            out["reason"] = self.reason
        else:
            out.update(
                read=s.read,
                word_accuracy=round(s.word_accuracy, 4),
                ned=round(s.ned, 4),
                exact=s.exact,
                passed=s.passed,
                min_word_accuracy=s.min_word_accuracy,
            )
        out["engine"] = self.engine
        out["ocr_ms"] = round(self.ocr_s * 1000.0, 1)
        return out


def verify_image(
    engine: OcrEngine, image: Any, expected: Sequence[str], min_word_accuracy: float
) -> Verification:
    """Read one image and score it. Never raises: what cannot be read is unreadable."""
    t0 = time.perf_counter()
    try:
        lines = engine.read(image)
    except Exception as exc:  # a broken image or engine error must not fail the request
        log.warning("OCR could not read an image: %s: %s", type(exc).__name__, exc)
        return Verification(
            UNREADABLE,
            tuple(expected),
            None,
            engine.name,
            time.perf_counter() - t0,
            f"OCR failed: {type(exc).__name__}",
        )
    secs = time.perf_counter() - t0
    if not lines:
        return Verification(UNREADABLE, tuple(expected), None, engine.name, secs, "no text found")
    s = score(expected, "\n".join(lines), min_word_accuracy)
    return Verification(PASSED if s.passed else FAILED, tuple(expected), s, engine.name, secs)


class VerifyPool:
    """`workers` engines, built at start (so a missing engine stops the worker
    before it serves), each used by one pool thread at a time."""

    def __init__(
        self,
        engine: str,
        workers: int,
        min_word_accuracy: float,
        factory: Callable[[str], OcrEngine] = make_engine,
    ) -> None:
        self.min_word_accuracy = min_word_accuracy
        self._engines: queue.SimpleQueue[OcrEngine] = queue.SimpleQueue()
        for _ in range(workers):
            self._engines.put(factory(engine))  # raises OcrUnavailableError
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ocr")
        self._backlog = 0  # images handed to the pool and not yet read (event-loop side)

    @property
    def backlog(self) -> int:
        """Images waiting for or in OCR: admission turns requests away above a bound."""
        return self._backlog

    def _run(self, image: Any, expected: Sequence[str], threshold: float | None) -> Verification:
        # At most `workers` tasks run at once, so an engine is always free here.
        engine = self._engines.get()
        try:
            t = self.min_word_accuracy if threshold is None else threshold
            return verify_image(engine, image, expected, t)
        finally:
            self._engines.put(engine)

    async def verify(
        self, image: Any, expected: Sequence[str], threshold: float | None = None
    ) -> Verification:
        """`threshold`: this request's pass threshold (field min_word_accuracy), else the pool's."""
        loop = asyncio.get_running_loop()
        self._backlog += 1
        try:
            return await loop.run_in_executor(self._executor, self._run, image, expected, threshold)
        finally:
            self._backlog -= 1

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
