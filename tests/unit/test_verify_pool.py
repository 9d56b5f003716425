"""Verification in the worker: the `text` field at validation, verify_image's outcomes,
the pool, the settings, and the response block."""

from __future__ import annotations

import argparse
import asyncio
import threading
from typing import Any

import pytest

from modelfleet_worker.config import add_serve_arguments, resolve_config
from modelfleet_worker.ocr import OcrUnavailableError
from modelfleet_worker.validation import Limits, RequestError, validate_request
from modelfleet_worker.verify import FAILED, PASSED, UNREADABLE, VerifyPool, verify_image

LIMITS = Limits(
    max_resolution=256, max_steps=8, size_multiple=8, default_width=64, default_height=64
)


@pytest.mark.parametrize(
    ("body", "want"),
    [
        ({"prompt": "a red cube"}, ()),
        ({"prompt": 'a sign saying "OPEN"'}, ("OPEN",)),
        ({"prompt": 'a sign saying "OPEN"', "text": ["CLOSED", "SOON"]}, ("CLOSED", "SOON")),
        ({"prompt": 'a sign saying "OPEN"', "text": []}, ()),
        ({"prompt": 'a sign saying "OPEN"', "text": None}, ("OPEN",)),
    ],
)
def test_expected_text_on_the_request(body: dict[str, Any], want: tuple[str, ...]) -> None:
    assert validate_request(body, LIMITS).expected_text == want


@pytest.mark.parametrize(
    "text", ["SALE", 5, {"a": "b"}, [1], ["ok", ""], ["x" * 501], ["a"] * 17, [["nested"]]]
)
def test_malformed_text_is_400_naming_text(text: object) -> None:
    with pytest.raises(RequestError) as err:
        validate_request({"prompt": "x", "text": text}, LIMITS)
    assert (err.value.status, err.value.param) == (400, "text")
    assert err.value.body()["error"]["param"] == "text"


class Engine:
    """A stand-in OCR engine owned by this test: returns or raises what it is told."""

    name = "stand-in"

    def __init__(self, lines: list[str] | None = None, error: Exception | None = None) -> None:
        self.lines = lines or []
        self.error = error
        self.threads: set[str] = set()

    def read(self, image: Any) -> list[str]:
        self.threads.add(threading.current_thread().name)
        if self.error is not None:
            raise self.error
        return self.lines


@pytest.mark.parametrize(
    ("engine", "status", "reason"),
    [
        (Engine(["SALE NOW"]), PASSED, ""),
        (Engine(["SALE", "NOW"]), PASSED, ""),
        (Engine(["SLAE NOW"]), FAILED, ""),
        (Engine([]), UNREADABLE, "no text found"),
        (Engine(error=OSError("truncated image")), UNREADABLE, "OCR failed: OSError"),
        (Engine(error=ValueError("bad shape")), UNREADABLE, "OCR failed: ValueError"),
    ],
)
def test_verify_image_outcomes(engine: Engine, status: str, reason: str) -> None:
    v = verify_image(engine, object(), ("SALE NOW",), 1.0)
    assert (v.status, v.reason) == (status, reason)
    block = v.block()
    assert block["status"] == status and block["expected"] == ["SALE NOW"]
    assert block["verified"] is (status != UNREADABLE)
    if status == UNREADABLE:
        assert "word_accuracy" not in block and block["reason"] == reason
    else:
        assert set(block) >= {"read", "word_accuracy", "ned", "exact", "passed"}
        assert block["passed"] is (status == PASSED)


def test_threshold_decides_pass() -> None:
    e = Engine(["SALE N0W"])
    assert verify_image(e, None, ("SALE NOW",), 0.5).status == PASSED
    assert verify_image(e, None, ("SALE NOW",), 0.51).status == FAILED


async def test_pool_reads_off_the_event_loop_with_one_engine_per_thread() -> None:
    made: list[Engine] = []

    def factory(name: str) -> Engine:
        made.append(Engine(["OPEN"]))
        return made[-1]

    pool = VerifyPool("stand-in", 3, 1.0, factory)
    try:
        results = await asyncio.gather(*(pool.verify(None, ("OPEN",)) for _ in range(12)))
    finally:
        pool.close()
    assert len(made) == 3  # built at start: a missing engine fails before serving
    assert all(r.status == PASSED for r in results)
    used = set().union(*(e.threads for e in made))
    assert used and all(t.startswith("ocr") for t in used)


def test_pool_start_fails_when_the_engine_is_missing() -> None:
    def factory(name: str) -> Engine:
        raise OcrUnavailableError("pip install rapidocr_onnxruntime")

    with pytest.raises(OcrUnavailableError, match="rapidocr_onnxruntime"):
        VerifyPool("rapidocr", 2, 1.0, factory)


def _cfg(argv: list[str], env: dict[str, str]) -> Any:
    p = argparse.ArgumentParser()
    add_serve_arguments(p)
    return resolve_config(p.parse_args(argv), env)


def test_verify_settings_flags_env_defaults() -> None:
    d = _cfg([], {})
    assert (d.verify, d.verify_engine, d.verify_workers, d.verify_min_word_accuracy) == (
        True,
        "rapidocr",
        1,
        1.0,
    )
    env = {
        "MODELFLEET_WORKER_VERIFY": "false",
        "MODELFLEET_WORKER_VERIFY_WORKERS": "3",
        "MODELFLEET_WORKER_VERIFY_ENGINE": "tesseract",
        "MODELFLEET_WORKER_VERIFY_MIN_WORD_ACCURACY": "0.8",
    }
    e = _cfg([], env)
    assert (e.verify, e.verify_engine, e.verify_workers, e.verify_min_word_accuracy) == (
        False,
        "tesseract",
        3,
        0.8,
    )
    assert _cfg(["--verify-workers", "2"], env).verify_workers == 2  # the flag wins


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MODELFLEET_WORKER_VERIFY_WORKERS", "0"),
        ("MODELFLEET_WORKER_VERIFY_ENGINE", "easyocr"),
        ("MODELFLEET_WORKER_VERIFY_MIN_WORD_ACCURACY", "1.5"),
        ("MODELFLEET_WORKER_VERIFY", "maybe"),
    ],
)
def test_bad_verify_settings_name_the_env_var(name: str, value: str) -> None:
    with pytest.raises(ValueError, match=name):
        _cfg([], {name: value})


async def test_pool_backlog_counts_images_until_read() -> None:
    release = threading.Event()

    class Slow(Engine):
        def read(self, image: Any) -> list[str]:
            release.wait(10)
            return ["OPEN"]

    pool = VerifyPool("stand-in", 1, 1.0, lambda name: Slow())
    try:
        tasks = [asyncio.ensure_future(pool.verify(None, ("OPEN",))) for _ in range(3)]
        await asyncio.sleep(0)  # let the three calls start
        assert pool.backlog == 3  # one in OCR, two waiting for the single thread
        release.set()
        await asyncio.gather(*tasks)
        assert pool.backlog == 0
    finally:
        release.set()
        pool.close()
