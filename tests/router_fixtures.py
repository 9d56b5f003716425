"""Fixtures for the process-tier router tests, loaded by tests/conftest.py as a plugin:
in-process stand-in workers, an HTTP client and real router subprocesses on a static config."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from modelfleet_dev.fakeworker import FakeWorker
from modelfleet_dev.routerproc import RouterProcess, write_config


@pytest.fixture
async def workers() -> AsyncIterator[Callable[..., Any]]:
    """make(name, score=None, **attrs): a started FakeWorker serving pool `name`; `score`
    is the word accuracy it reports, attrs are set on it before it starts."""
    started: list[FakeWorker] = []

    async def make(name: str, score: float | str | None = None, **attrs: Any) -> FakeWorker:
        w = FakeWorker(name)
        w.default_score = score
        for k, v in attrs.items():
            setattr(w, k, v)
        await w.start()
        started.append(w)
        return w

    yield make
    for w in started:
        await w.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as s:
        yield s


@pytest.fixture
def router(tmp_path: Path) -> Iterator[Callable[..., RouterProcess]]:
    """start(policies, endpoints, *args): a real router on that static config, stopped
    at the end of the test."""
    procs: list[RouterProcess] = []

    def start(
        policies: list[dict[str, Any]], endpoints: dict[str, list[str]], *args: str
    ) -> RouterProcess:
        cfg = write_config(tmp_path / f"router{len(procs)}.yaml", policies, endpoints)
        r = RouterProcess(cfg, args)
        procs.append(r)
        return r.start()

    yield start
    for r in procs:
        r.__exit__()
