"""The asyncio shell around the batching policy: queue, timer, one inference thread."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from .batching import BatchKey, Pending, next_deadline, select_batch
from .memory import run_with_split

log = logging.getLogger("modelfleet_worker.engine")


@dataclass(frozen=True, eq=False)
class Job:
    """One image to generate."""

    prompt: str
    negative_prompt: str | None
    seed: int
    text: tuple[str, ...] = ()  # expected text (a text-drawing test backend draws it)
    image: Any = None  # edits: the input PIL image (at the output size)
    mask: Any = None  # inpainting: PIL "L", 255 = repaint


@dataclass(frozen=True)
class JobResult:
    image: Any | None  # PIL image, None when failed
    error: BaseException | None  # set when the image OOMed even alone
    queue_wait_s: float
    batch_size: int
    inference_s: float


class QueueFullError(Exception):
    pass


class Runner(Protocol):
    def __call__(self, key: BatchKey, jobs: Sequence[Job]) -> list[Any]: ...


class EngineHooks(Protocol):
    def on_batch(self, size: int) -> None: ...
    def on_queue_waits(self, waits: Sequence[float]) -> None: ...
    def on_oom(self, ooms: int, splits: int) -> None: ...
    def on_depth(self, queued: int, in_flight: int) -> None: ...


@dataclass
class _Entry:
    job: Job
    future: asyncio.Future[JobResult]


class Engine:
    """Collects jobs, picks batches with `select_batch`, runs them one at a time.

    Inference runs in a single worker thread: the event loop keeps answering
    health checks and admitting requests while a batch denoises.
    """

    def __init__(
        self,
        runner: Runner,
        is_oom: Callable[[BaseException], bool],
        on_oom: Callable[[], None],
        cap_for: Callable[[BatchKey], int],
        max_latency_s: float,
        max_queue: int,
        hooks: EngineHooks,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._runner = runner
        self._is_oom = is_oom
        self._on_oom = on_oom
        self._cap_for = cap_for
        self._max_latency_s = max_latency_s
        self._max_queue = max_queue
        self._hooks = hooks
        self._clock = clock
        self._pending: list[Pending[_Entry]] = []
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._draining = False
        self._in_flight = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self._task: asyncio.Task[None] | None = None
        self.last_batch_s = 0.0

    @property
    def queued(self) -> int:
        return len(self._pending)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="batcher")

    def submit(self, key: BatchKey, jobs: Sequence[Job]) -> list[asyncio.Future[JobResult]]:
        if len(self._pending) + len(jobs) > self._max_queue:
            raise QueueFullError(f"queue holds {len(self._pending)} of {self._max_queue} images")
        loop = asyncio.get_running_loop()
        now = self._clock()
        futures = []
        for job in jobs:
            fut: asyncio.Future[JobResult] = loop.create_future()
            self._pending.append(Pending(key, now, next(self._seq), _Entry(job, fut)))
            futures.append(fut)
        self._idle.clear()
        self._hooks.on_depth(len(self._pending), self._in_flight)
        self._wake.set()
        return futures

    def retry_after_s(self) -> int:
        """A hint for 429s: batches ahead of a new request times the last batch time."""
        cap = max(1, self._cap_for_any())
        batches = (len(self._pending) + cap - 1) // cap + 1
        return max(1, int(batches * max(self.last_batch_s, 0.05) + 0.999))

    def _cap_for_any(self) -> int:
        if self._pending:
            return self._cap_for(self._pending[0].key)
        return 1

    async def drain(self, timeout_s: float) -> bool:
        """Run everything queued without waiting for batch deadlines; True if emptied."""
        self._draining = True
        self._wake.set()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
            return True
        except TimeoutError:
            return False

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            now = self._clock()
            sel = select_batch(
                self._pending, now, self._max_latency_s, self._cap_for, drain=self._draining
            )
            if sel is None:
                due = next_deadline(self._pending, self._max_latency_s)
                if due is None:  # nothing waits
                    self._idle.set()
                    await self._wake.wait()
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), max(0.0, due - now))
                continue
            chosen = {p.seq for p in sel.items}
            self._pending = [p for p in self._pending if p.seq not in chosen]
            self._in_flight = len(sel.items)
            self._hooks.on_depth(len(self._pending), self._in_flight)
            started = self._clock()
            waits = [started - p.enqueued_at for p in sel.items]
            self._hooks.on_queue_waits(waits)
            entries = [p.payload for p in sel.items]
            try:
                results = await loop.run_in_executor(
                    self._executor, self._run_batch, sel.key, [e.job for e in entries]
                )
            except Exception as exc:  # not an OOM: every job in the batch fails
                log.exception("batch of %d failed", len(entries))
                for e in entries:
                    if not e.future.done():
                        e.future.set_exception(exc)
            else:
                for e, w, (image, err, size, secs) in zip(entries, waits, results, strict=True):
                    if not e.future.done():
                        e.future.set_result(JobResult(image, err, w, size, secs))
            self.last_batch_s = self._clock() - started
            self._in_flight = 0
            self._hooks.on_depth(len(self._pending), 0)

    def _run_batch(
        self, key: BatchKey, jobs: Sequence[Job]
    ) -> list[tuple[Any | None, BaseException | None, int, float]]:
        def run(chunk: Sequence[Job]) -> list[tuple[Any, int, float]]:
            t0 = time.perf_counter()
            images = self._runner(key, chunk)
            secs = time.perf_counter() - t0
            return [(img, len(chunk), secs) for img in images]

        outcome = run_with_split(jobs, run, self._is_oom, self._on_oom)
        for size in outcome.batch_sizes:
            self._hooks.on_batch(size)
        if outcome.ooms:
            self._hooks.on_oom(outcome.ooms, outcome.splits)
        out: list[tuple[Any | None, BaseException | None, int, float]] = []
        for i in range(len(jobs)):
            if i in outcome.results:
                img, size, secs = outcome.results[i]
                out.append((img, None, size, secs))
            else:
                out.append((None, outcome.failed[i], 1, 0.0))
        return out
