"""A real worker subprocess on a tiny CPU model: API, batching, determinism, fuzz."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from worker_fixtures import Worker, decode_png, running_worker, tiny_model_dir

MAX_LATENCY_MS = 150
# Alone vs batched: float32 on CPU, batched convolutions may sum in another order.
PIXEL_TOLERANCE = 2


@pytest.fixture(scope="module")
def worker() -> Iterator[Worker]:
    with running_worker(
        tiny_model_dir(),
        max_batch_size=4,
        max_latency_ms=MAX_LATENCY_MS,
        max_resolution=128,
        max_steps=4,
        max_queue=64,
        dtype="float16",  # CPU falls back to float32
    ) as w:
        yield w


def body(**kw: Any) -> dict[str, Any]:
    return {"prompt": "a red cube", "steps": 2, **kw}


def test_health_and_ready(worker: Worker) -> None:
    assert worker.request("GET", "/healthz")[0] == 200
    assert worker.request("GET", "/readyz")[0] == 200
    assert "float32" in worker.log()  # the CPU fallback is logged


def test_png_of_requested_size(worker: Worker) -> None:
    status, out = worker.generate(body(size="64x32", seed=3))
    assert status == 200, out
    img = decode_png(out["data"][0]["b64_json"])
    assert img.format == "PNG" and img.size == (64, 32)
    assert out["data"][0]["seed"] == 3
    assert out["pool"] == "test-pool"
    assert set(out["timing"]) == {"queue_wait_ms", "batch_size", "inference_ms", "per_step_ms"}


def test_default_size_and_random_seed_returned(worker: Worker) -> None:
    status, out = worker.generate({"prompt": "x", "steps": 1})
    assert status == 200
    assert decode_png(out["data"][0]["b64_json"]).size == (64, 64)
    assert isinstance(out["data"][0]["seed"], int)


def test_same_request_same_bytes(worker: Worker) -> None:
    a = worker.generate(body(seed=7))[1]
    b = worker.generate(body(seed=7))[1]
    assert a["data"][0]["b64_json"] == b["data"][0]["b64_json"]
    c = worker.generate(body(seed=8))[1]
    assert a["data"][0]["b64_json"] != c["data"][0]["b64_json"]


def pixels(b64: str) -> np.ndarray:
    return np.asarray(decode_png(b64).convert("RGB")).astype(np.int16)


def test_alone_vs_batched_within_tolerance(worker: Worker) -> None:
    # n=3 from seed 100 runs seeds 100..102 in one batch; seed 101 alone must match.
    status, batched = worker.generate(body(n=3, seed=100))
    assert status == 200 and batched["timing"]["batch_size"] == 3
    assert [d["seed"] for d in batched["data"]] == [100, 101, 102]
    alone = worker.generate(body(seed=101))[1]
    assert alone["timing"]["batch_size"] == 1
    diff = np.abs(pixels(alone["data"][0]["b64_json"]) - pixels(batched["data"][1]["b64_json"]))
    print(f"alone vs batched max abs pixel diff: {int(diff.max())}")
    assert int(diff.max()) <= PIXEL_TOLERANCE


def hist_counts(worker: Worker, name: str) -> dict[str, float]:
    out = {}
    for line in worker.metrics().splitlines():
        if line.startswith(name + "_bucket{"):
            le = line.split('le="')[1].split('"')[0]
            out[le] = float(line.rsplit(" ", 1)[1])
    return out


def test_batches_under_concurrency_and_bounded_wait(worker: Worker) -> None:
    before = hist_counts(worker, "modelfleet_worker_batch_size")
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: worker.generate(body(seed=i)), range(8)))
    assert all(s == 200 for s, _ in results)
    after = hist_counts(worker, "modelfleet_worker_batch_size")
    batches = after["+Inf"] - before["+Inf"]
    singles = after["1.0"] - before["1.0"]
    assert batches - singles >= 1, "no batch larger than 1 ran"
    assert max(o["timing"]["batch_size"] for _, o in results) > 1
    # No request waits longer than the batching window plus the batches ahead of it.
    compute_ms = sum({o["timing"]["inference_ms"] for _, o in results})
    for _, o in results:
        assert o["timing"]["queue_wait_ms"] <= MAX_LATENCY_MS + compute_ms + 250


INVALID: list[tuple[Any, int, str | None]] = [
    ({}, 400, "prompt"),
    ({"prompt": ""}, 400, "prompt"),
    ({"prompt": "x" * 4001}, 400, "prompt"),
    (body(size="64x64x"), 400, "size"),
    (body(size="60x64"), 400, "size"),
    (body(size="256x64"), 400, "size"),
    (body(steps=5), 400, "steps"),
    (body(n=0), 400, "n"),
    (body(n=9), 400, "n"),
    (body(n="1"), 400, "n"),
    (body(guidance_scale=31), 400, "guidance_scale"),
    (body(response_format="url"), 400, "response_format"),
    (body(seed=-5), 400, "seed"),
]


@pytest.mark.parametrize(("payload", "status", "param"), INVALID)
def test_bad_input(worker: Worker, payload: Any, status: int, param: str | None) -> None:
    code, out = worker.generate(payload)
    assert code == status
    assert out["error"]["param"] == param and out["error"]["message"]


@pytest.mark.parametrize(
    ("raw", "status"),
    [(b"{not json", 400), (b"", 400), (b'{"prompt": NaN}', 400), (b"x" * (1024 * 1024 + 10), 413)],
)
def test_bad_bodies(worker: Worker, raw: bytes, status: int) -> None:
    code, _, data = worker.request("POST", "/v1/images/generations", raw=raw)
    assert code == status
    assert "error" in json.loads(data)


def test_unknown_route_is_json_404(worker: Worker) -> None:
    code, _, data = worker.request("GET", "/nope")
    assert code == 404 and json.loads(data)["error"]["code"] == "not_found"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=6,
)
fields = st.fixed_dictionaries(
    {},
    optional={
        "prompt": st.one_of(st.text(max_size=30), json_values),
        "n": st.one_of(st.integers(-2, 10), json_values),
        "size": st.one_of(
            st.sampled_from(["8x8", "16x24", "64x64", "128x128", "129x128", "0x0", "64x64 "]),
            st.text(max_size=12),
            json_values,
        ),
        "steps": st.one_of(st.integers(-1, 6), json_values),
        "seed": st.one_of(st.integers(-1, 2**33), json_values),
        "guidance_scale": st.one_of(st.floats(-1, 40), json_values),
        "negative_prompt": st.one_of(st.text(max_size=10), json_values),
        "response_format": st.one_of(st.sampled_from(["b64_json", "url"]), json_values),
    },
)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(payload=st.one_of(fields, json_values))
def test_fuzz_never_5xx(worker: Worker, payload: Any) -> None:
    try:
        raw = json.dumps(payload).encode()  # NaN/Infinity stay in: not JSON, must be 400
    except (ValueError, OverflowError):
        return
    code, _, data = worker.request("POST", "/v1/images/generations", raw=raw)
    assert code < 500, data[:300]
    if code != 200:
        assert "error" in json.loads(data)


def test_still_alive_and_metrics_after_abuse(worker: Worker) -> None:
    assert worker.request("GET", "/healthz")[0] == 200
    text = worker.metrics()
    assert 'modelfleet_worker_requests_total{endpoint="generations",outcome="error"} 0.0' in text
    assert "modelfleet_worker_info{" in text and 'pool="test-pool"' in text
    assert worker.metric("modelfleet_worker_images_generated_total") >= 1
    assert worker.metric("modelfleet_worker_model_load_seconds") > 0
    assert worker.proc.poll() is None
