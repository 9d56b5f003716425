"""Token limits per text encoder: which encoders cut a prompt, the header that says
so, the refusal when a pool does not truncate, and the encoders found on a
pipeline's real (offline) CLIP and T5 tokenizers."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from modelfleet_worker.prompts import (
    TRUNCATED_HEADER,
    Encoder,
    PromptGuard,
    Truncation,
    encoders_of,
    header_value,
    truncations,
)
from modelfleet_worker.validation import RequestError


@pytest.mark.parametrize(
    ("counts", "expected"),
    [
        ([], []),
        ([("clip", 77, 77)], []),  # exactly the limit: nothing cut
        ([("clip", 77, 78)], [Truncation("clip", 77, 78)]),
        (
            [("clip_l", 77, 120), ("clip_g", 77, 120), ("t5", 256, 130)],
            [Truncation("clip_l", 77, 120), Truncation("clip_g", 77, 120)],
        ),
        (
            [("clip", 77, 600), ("t5", 512, 600)],
            [Truncation("clip", 77, 600), Truncation("t5", 512, 600)],
        ),
        ([("clip", 77, 10), ("t5", 256, 300)], [Truncation("t5", 256, 300)]),
    ],
)
def test_truncations(counts: list[tuple[str, int, int]], expected: list[Truncation]) -> None:
    assert truncations(counts) == expected


@pytest.mark.parametrize(
    ("cuts", "header"),
    [
        ([Truncation("clip", 77, 90)], "clip:77/90"),
        ([Truncation("clip_l", 77, 300), Truncation("t5", 256, 300)], "clip_l:77/300,t5:256/300"),
    ],
)
def test_header_value(cuts: list[Truncation], header: str) -> None:
    assert header_value(cuts) == header


def _words(limit: int) -> Encoder:
    return Encoder("clip", limit, lambda p: len(p.split()) + 2)  # + BOS/EOS


def test_guard_header_metric_and_refusal() -> None:
    seen: list[str] = []
    guard = PromptGuard(
        [_words(5), Encoder("t5", 8, lambda p: len(p.split()) + 1)], True, seen.append
    )
    assert guard.headers("a b c") == {}
    assert seen == []
    assert guard.headers("a b c d e f") == {TRUNCATED_HEADER: "clip:5/8"}
    assert seen == ["clip"]
    assert guard.headers(" ".join("x" * 9)) == {TRUNCATED_HEADER: "clip:5/11,t5:8/10"}
    assert seen == ["clip", "clip", "t5"]

    strict = PromptGuard([_words(5)], False, seen.append)
    assert strict.headers("a b c") == {}
    with pytest.raises(RequestError) as exc:
        strict.headers("a b c d e f")
    body = exc.value.body()["error"]
    assert exc.value.status == 400 and body["param"] == "prompt"
    assert "clip takes 5 tokens, the prompt needs 8" in body["message"]
    assert "truncate: false" in body["message"]
    assert seen == ["clip", "clip", "t5"]  # a refusal is not a truncation


class _Sd3Like:
    """Tokenizer slots and __call__ signature as StableDiffusion3Pipeline has them."""

    def __init__(self, clip: Any, t5: Any) -> None:
        self.tokenizer, self.tokenizer_2, self.tokenizer_3 = clip, clip, t5

    def __call__(self, prompt: str, max_sequence_length: int = 256) -> None:
        pass


class _ClipOnly:
    """StableDiffusionPipeline's one tokenizer."""

    def __init__(self, clip: Any) -> None:
        self.tokenizer = clip

    def __call__(self, prompt: str) -> None:
        pass


class _FluxLike:
    def __init__(self, clip: Any, t5: Any) -> None:
        self.tokenizer, self.tokenizer_2 = clip, t5

    def __call__(self, prompt: str, max_sequence_length: int = 512) -> None:
        pass


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    from transformers import CLIPTokenizer

    from modelfleet_worker.tiny import write_clip_tokenizer_files
    from modelfleet_worker.tiny_families import t5_tokenizer

    root: Path = tmp_path_factory.mktemp("tok")
    write_clip_tokenizer_files(root / "clip")
    clip = CLIPTokenizer.from_pretrained(str(root / "clip"), model_max_length=77)
    return clip, t5_tokenizer(root / "t5")


def test_encoders_of_real_tokenizers(tokenizers: tuple[Any, Any]) -> None:
    clip, t5 = tokenizers
    sd3 = encoders_of(_Sd3Like(clip, t5))
    assert [(e.name, e.max_tokens) for e in sd3] == [("clip_l", 77), ("clip_g", 77), ("t5", 256)]
    flux = encoders_of(_FluxLike(clip, t5))
    assert [(e.name, e.max_tokens) for e in flux] == [("clip", 77), ("t5", 512)]
    assert encoders_of(None) == []

    prompt = "A poster that reads GRAND OPENING " * 12
    full_clip = len(clip(prompt)["input_ids"])
    full_t5 = len(t5(prompt)["input_ids"])
    assert full_clip > 77 and full_t5 > 256  # the counts are not the truncated length
    guard = PromptGuard(sd3, True)
    assert guard.headers(prompt) == {
        TRUNCATED_HEADER: f"clip_l:77/{full_clip},clip_g:77/{full_clip},t5:256/{full_t5}"
    }
    assert guard.headers("a red cube") == {}


def test_counting_beside_the_pipeline_leaves_its_padding_alone(tokenizers: tuple[Any, Any]) -> None:
    """Counting runs on a request thread while the inference thread encodes a batch with
    the same tokenizer. A fast tokenizer's padding and truncation settings are one shared
    object that each call sets; counting must not reset the pipeline's padding (seen as
    a failed batch: negative prompts of 2 tokens beside prompts of 77)."""
    clip, _t5 = tokenizers
    [encoder] = encoders_of(_ClipOnly(clip))
    stop = threading.Event()
    lengths: list[list[int]] = []

    def count() -> None:
        while not stop.is_set():
            encoder.count("a poster that reads GRAND OPENING " * 5)

    counter = threading.Thread(target=count)
    counter.start()
    try:
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            ids = clip([""] * 4, padding="max_length", max_length=77, truncation=True)
            lengths.append([len(i) for i in ids["input_ids"]])
            if lengths[-1] != [77] * 4:
                break
    finally:
        stop.set()
        counter.join()
    assert len(lengths) > 100, "too few encodings to have raced"
    assert all(n == [77] * 4 for n in lengths), lengths[-1]
