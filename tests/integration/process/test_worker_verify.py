"""A real worker with verification on: the text-drawing backend, the real OCR engine.

Right renders pass, corrupted ones fail, the response carries the `modelfleet`
block, metrics count them; a tiny diffusion model's noise is unreadable; a
missing OCR engine stops the worker before it serves.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from modelfleet_dev.textrender import corrupts
from worker_fixtures import Worker, decode_png, free_port, running_worker, tiny_model_dir

RATE = 0.5
# Words without letters the corruption may swap for a look-alike (O/0, I/1, S/5, ...):
# "0PEN" drawn in DejaVu reads as "OPEN" to any OCR, so it would not be caught.
PLAIN = "HAPPY MARKET"


def _env(port: int, **settings: Any) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELFLEET_")}
    env.update(
        {
            "MODELFLEET_WORKER_HOST": "127.0.0.1",
            "MODELFLEET_WORKER_PORT": str(port),
            "MODELFLEET_WORKER_POOL": "text-pool",
            "MODELFLEET_WORKER_CPU_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update({"MODELFLEET_WORKER_" + k.upper(): str(v) for k, v in settings.items()})
    return env


@pytest.fixture(scope="module")
def text_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    port = free_port()
    log_path = tmp_path_factory.mktemp("textworker") / "worker.log"
    env = _env(port, max_batch_size=4, max_latency_ms=50, verify_workers=2)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "modelfleet_dev.textrender", "--corruption-rate", str(RATE)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    w = Worker(proc, port, log_path, env)
    try:
        w.wait_ready()
        yield w
    finally:
        w.stop()


def seeds(corrupted: bool, n: int) -> list[int]:
    return [s for s in range(1000) if corrupts(s, RATE) == corrupted][:n]


def counter(w: Worker, name: str) -> float:
    return w.metric(f"modelfleet_worker_text_{name}_total")


def test_right_text_passes_with_its_block(text_worker: Worker) -> None:
    seed = seeds(False, 1)[0]
    status, out = text_worker.generate(
        {"prompt": "a shop banner saying 'SALE NOW'", "seed": seed, "size": "512x256"}
    )
    assert status == 200, out
    assert decode_png(out["data"][0]["b64_json"]).size == (512, 256)
    block = out["data"][0]["modelfleet"]
    assert block["verified"] is True and block["status"] == "passed"
    assert (block["expected"], block["word_accuracy"], block["passed"]) == (
        ["SALE NOW"],
        1.0,
        True,
    )
    assert "SALE NOW" in block["read"] and block["ned"] > 0.9 and block["engine"] == "rapidocr"


def test_corrupted_text_fails(text_worker: Worker) -> None:
    seed = seeds(True, 1)[0]
    status, out = text_worker.generate(
        {"prompt": "a poster", "text": [PLAIN], "seed": seed, "size": "512x256"}
    )
    assert status == 200
    block = out["data"][0]["modelfleet"]
    assert block["status"] == "failed" and block["passed"] is False
    assert block["word_accuracy"] < 1.0 and block["expected"] == [PLAIN]


def test_every_image_of_a_batch_is_verified_and_counted(text_worker: Worker) -> None:
    before = {k: counter(text_worker, k) for k in ("verified", "failed", "unreadable")}
    good, bad = seeds(False, 6), seeds(True, 6)

    def one(seed: int) -> dict[str, Any]:
        status, out = text_worker.generate(
            {"prompt": f'a sign "{PLAIN}"', "seed": seed, "size": "512x256"}
        )
        assert status == 200, out
        return dict(out["data"][0]["modelfleet"])

    with ThreadPoolExecutor(8) as pool:
        results = dict(zip(good + bad, pool.map(one, good + bad), strict=True))
    assert all(results[s]["passed"] for s in good), [results[s] for s in good]
    assert not any(results[s]["passed"] for s in bad), [results[s] for s in bad]
    assert counter(text_worker, "verified") - before["verified"] == 12
    assert counter(text_worker, "failed") - before["failed"] == 6
    assert counter(text_worker, "unreadable") == before["unreadable"]
    hist = text_worker.metrics()
    assert 'modelfleet_worker_text_word_accuracy_bucket{le="1.0",pool="text-pool"}' in hist


def test_n_images_each_carry_a_block(text_worker: Worker) -> None:
    status, out = text_worker.generate(
        {"prompt": "x", "text": ["HAPPY"], "n": 3, "seed": 40, "size": "256x256"}
    )
    assert status == 200
    blocks = [d["modelfleet"] for d in out["data"]]
    assert [b["passed"] for b in blocks] == [not corrupts(s, RATE) for s in (40, 41, 42)]


def test_no_expected_text_no_block(text_worker: Worker) -> None:
    for body in ({"prompt": "a red cube"}, {"prompt": 'a sign "OPEN"', "text": []}):
        status, out = text_worker.generate({**body, "size": "256x256", "seed": 1})
        assert status == 200 and "modelfleet" not in out["data"][0]


@pytest.mark.parametrize("text", ["SALE NOW", [""], [3], {"a": 1}])
def test_malformed_text_is_400_naming_text(text_worker: Worker, text: object) -> None:
    status, out = text_worker.generate({"prompt": "a poster", "text": text})
    assert status == 400 and out["error"]["param"] == "text", out


def test_tiny_diffusion_noise_is_unreadable_and_counted() -> None:
    with running_worker(tiny_model_dir(), max_steps=2, max_resolution=128) as w:
        status, out = w.generate({"prompt": 'a banner "SALE NOW"', "steps": 1, "seed": 1})
        assert status == 200, out
        block = out["data"][0]["modelfleet"]
        assert (block["verified"], block["status"]) == (False, "unreadable")
        assert block["reason"] == "no text found"
        assert w.metric("modelfleet_worker_text_unreadable_total") == 1
        assert w.metric("modelfleet_worker_text_verified_total") == 0


def test_verification_off_means_no_block() -> None:
    with running_worker(tiny_model_dir(), max_steps=2, verify="false") as w:
        status, out = w.generate({"prompt": 'a banner "SALE NOW"', "steps": 1})
        assert status == 200 and "modelfleet" not in out["data"][0]


@pytest.mark.parametrize(
    ("settings", "prelude", "names"),
    [
        (
            {"verify_engine": "tesseract", "path": "/nonexistent"},
            "",
            "apt-get install tesseract-ocr",
        ),
        ({}, "sys.modules['rapidocr_onnxruntime'] = None; ", "pip install rapidocr_onnxruntime"),
    ],
)
def test_missing_ocr_engine_refuses_to_start(
    settings: dict[str, str], prelude: str, names: str
) -> None:
    settings = dict(settings)
    path = settings.pop("path", os.environ["PATH"])
    env = {**_env(free_port(), model="file:///nonexistent", **settings), "PATH": path}
    code = f"import sys; {prelude}from modelfleet_worker.cli import main; sys.exit(main(['serve']))"
    p = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert p.returncode == 2, p.stderr
    assert "refusing to start" in p.stderr and names in p.stderr, p.stderr
    assert "--verify=false" in p.stderr
