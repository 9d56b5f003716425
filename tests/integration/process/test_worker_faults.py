"""Fault paths on a real worker: OOM splitting, queue full, bad VAE, SIGTERM drain."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from polling import wait_for
from worker_fixtures import Worker, running_worker, start_worker, tiny_model_dir


def body(**kw: Any) -> dict[str, Any]:
    return {"prompt": "a red cube", "steps": 2, **kw}


def test_oom_split_queue_full_and_fault_gauges() -> None:
    with running_worker(
        tiny_model_dir(),
        max_batch_size=4,
        max_latency_ms=1500,  # partial batches wait: lets the queue fill deterministically
        max_queue=6,
        fault_oom_above_batch=1,
        fault_latency_ms=5,
        fault_error_rate=0.0,
    ) as w:
        # A full batch of 4 OOMs, splits 4 -> 2+2 -> 1+1+1+1; every image succeeds.
        status, out = w.generate(body(n=4, seed=1))
        assert status == 200, out
        assert len(out["data"]) == 4 and out["timing"]["batch_size"] == 1
        assert w.metric("modelfleet_worker_batch_splits_total") == 3
        assert w.metric("modelfleet_worker_oom_total") == 3
        assert w.metric("modelfleet_worker_fault_oom_above_batch") == 1
        assert w.metric("modelfleet_worker_fault_latency_ms") == 5

        # Queue full: 3 images wait for their deadline; 4 more cannot be admitted.
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(w.generate, body(n=3, seed=2))
            wait_for(
                lambda: w.metric("modelfleet_worker_queue_depth") >= 3, interval=0.05, what="queued"
            )
            t0 = time.monotonic()
            code, headers, data = w.request("POST", "/v1/images/generations", body=body(n=4))
            assert code == 429, data
            assert time.monotonic() - t0 < 1.0, "429 must be answered fast"
            assert int(headers["Retry-After"]) >= 1
            assert first.result()[0] == 200


def test_injected_errors_are_500_and_visible() -> None:
    with running_worker(tiny_model_dir(), fault_error_rate=1.0, warmup="false") as w:
        code, out = w.generate(body())
        assert code == 500 and "injected" in out["error"]["message"]
        assert w.metric("modelfleet_worker_fault_error_rate") == 1.0


def test_mismatched_vae_refuses_to_start() -> None:
    bad = tiny_model_dir("vae8")
    w = start_worker(tiny_model_dir(), vae=f"file://{bad}/vae")
    try:
        code = w.proc.wait(120)
    finally:
        w.stop()
    log = w.log()
    assert code != 0
    assert "refusing to start" in log
    assert "(B, 8, 32, 32)" in log and "(B, 4, 32, 32)" in log, log[-2000:]


def test_sigterm_drains_in_flight_and_refuses_new() -> None:
    w: Worker = start_worker(
        tiny_model_dir(), max_latency_ms=1000, max_batch_size=4, fault_latency_ms=1500
    )
    w.wait_ready()
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(w.generate, body(seed=i)) for i in range(3)]
        wait_for(
            lambda: w.metric("modelfleet_worker_queue_depth") >= 3, interval=0.05, what="queued"
        )
        w.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: w.request("GET", "/readyz")[0] == 503, interval=0.05, what="readyz 503")
        code, out = w.generate(body())
        assert code == 503 and out["error"]["code"] == "unavailable"
        results = [f.result() for f in futures]
    assert [s for s, _ in results] == [200, 200, 200]
    try:
        assert w.proc.wait(30) == 0
    except subprocess.TimeoutExpired:
        w.proc.kill()
        raise
