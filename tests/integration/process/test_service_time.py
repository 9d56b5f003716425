"""Service time per image, end to end: a real tiny worker sets the headers, the real router
(subprocess, --config) reads them and counts them by batch size in /v1/stats and /metrics."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from modelfleet.routing.stats import BATCH_SIZE_HEADER, SERVICE_TIME_HEADER
from modelfleet_dev.routerproc import RouterProcess, policy, write_config

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from worker_fixtures import Worker, running_worker, tiny_model_dir

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def worker() -> Iterator[Worker]:
    with running_worker(tiny_model_dir(), max_batch_size=4, max_latency_ms=300, max_steps=4) as w:
        yield w


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as r:
        body: bytes = r.read()
        return body


def _post(url: str) -> tuple[int, dict[str, str]]:
    req = urllib.request.Request(
        url + "/v1/images/generations",
        data=b'{"prompt": "a red cube", "size": "64x64", "steps": 2}',
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        r.read()
        return r.status, dict(r.headers)


def test_worker_reports_service_time_per_image(worker: Worker) -> None:
    status, headers = _post(worker.url)
    assert status == 200
    seconds = float(headers[SERVICE_TIME_HEADER])
    assert 0 < seconds < 30
    assert headers[BATCH_SIZE_HEADER] == "1"


def test_router_counts_service_time_by_batch_size(worker: Worker, tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path / "router.yaml",
        [policy([{"name": "all", "pool": "tiny"}])],
        {"tiny": [worker.url]},
    )
    with RouterProcess(cfg, ()) as r:
        _post(r.url)  # alone: batch 1
        with ThreadPoolExecutor(4) as ex:  # four at once within 300 ms: one batch of 4
            assert [s for s, _ in ex.map(lambda _: _post(r.url), range(4))] == [200] * 4
        doc: dict[str, Any] = json.loads(_get(r.url + "/v1/stats?window=600"))
        (pool,) = doc["pools"]
        strata = {s["batch_size"]: s["buckets"] for s in pool["service_time"]}
        assert sum(b[-1][1] for b in strata.values()) == 5
        assert strata["1"][-1] == ["+Inf", 1]
        assert set(strata) - {"1"}, strata.keys()  # the four ran batched
        assert pool["requests"] == 5
        # The same counts a minute later: a window that ended 60 s ago has none of them.
        past: dict[str, Any] = json.loads(_get(r.url + "/v1/stats?window=60&offset=60"))
        assert past["offset_seconds"] == 60
        assert all(p["requests"] == 0 and "service_time" not in p for p in past["pools"])
        for bad in ("offset=-1", "offset=x", "window=600&offset=3001"):
            with pytest.raises(urllib.error.HTTPError) as err:
                _get(
                    r.url + "/v1/stats?window=60&" + bad
                    if "window" not in bad
                    else r.url + "/v1/stats?" + bad
                )
            assert err.value.code == 400
        text = _get(r.url + "/metrics").decode()
        counts = [
            line
            for line in text.splitlines()
            if line.startswith("modelfleet_router_service_time_seconds_count")
        ]
        assert any('batch_size="1"' in line and line.endswith(" 1.0") for line in counts), counts


def test_cpu_clock_counts_only_the_inference_thread() -> None:
    """service_clock=cpu: a neighbour on a shared core stretches wall time, not CPU time;
    CPU time of one thread never exceeds the wall time it ran for."""
    with running_worker(tiny_model_dir(), service_clock="cpu", max_steps=4) as w:
        req = urllib.request.Request(
            w.url + "/v1/images/generations",
            data=b'{"prompt": "a red cube", "size": "64x64", "steps": 2}',
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=60) as r:
            doc = json.loads(r.read())
            seconds = float(r.headers[SERVICE_TIME_HEADER])
        assert 0 < seconds <= doc["timing"]["inference_ms"] / 1000 + 0.002
