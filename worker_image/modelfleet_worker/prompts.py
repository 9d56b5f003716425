"""Prompt length per text encoder: diffusers cuts a prompt at each encoder's limit
(77 CLIP tokens; T5's max_sequence_length for SD3/Flux) without a word, and the
text a user asked to be rendered is often what falls off. The worker counts with
the pipeline's own tokenizers and says so, or refuses (truncate: false)."""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

TRUNCATED_HEADER = "X-ModelFleet-Prompt-Truncated"
# Pipeline attribute -> the tokenizer feeding text_encoder, text_encoder_2, _3.
TOKENIZER_ATTRS = ("tokenizer", "tokenizer_2", "tokenizer_3")
CLIP_NAMES = {1: ("clip",), 2: ("clip_l", "clip_g")}


@dataclass(frozen=True)
class Encoder:
    """One text encoder's tokenizer: `count(prompt)` is the tokens it would need,
    special tokens included; `max_tokens` what the pipeline feeds it."""

    name: str  # clip | clip_l | clip_g | t5
    max_tokens: int
    count: Callable[[str], int]


@dataclass(frozen=True)
class Truncation:
    encoder: str
    kept: int
    total: int


def truncations(counts: Sequence[tuple[str, int, int]]) -> list[Truncation]:
    """(encoder, max_tokens, tokens) -> the encoders whose limit the prompt exceeds."""
    return [Truncation(name, limit, total) for name, limit, total in counts if total > limit]


def header_value(cuts: Sequence[Truncation]) -> str:
    return ",".join(f"{c.encoder}:{c.kept}/{c.total}" for c in cuts)


def refusal_message(cuts: Sequence[Truncation]) -> str:
    where = ", ".join(
        f"{c.encoder} takes {c.kept} tokens, the prompt needs {c.total}" for c in cuts
    )
    return (
        f"prompt is longer than the model's text encoders take ({where}); this pool does not "
        "truncate prompts (truncate: false): shorten the prompt"
    )


def _count_with(pipeline_tokenizer: Any) -> Callable[[str], int]:
    # A private copy: a fast tokenizer keeps its padding and truncation settings in one
    # shared Rust object that every call sets, so counting on a request thread while the
    # pipeline encodes a batch left the batch's negative prompts unpadded (2 tokens
    # instead of 77) and failed it.
    tokenizer = copy.deepcopy(pipeline_tokenizer)

    def count(prompt: str) -> int:
        # No truncation here: the full length is what we want to know.
        return len(tokenizer(prompt, add_special_tokens=True, truncation=False)["input_ids"])

    return count


def _t5_limit(pipe: Any) -> int:
    """The T5 length the pipeline uses when a request does not set one (SD3 256, Flux 512)."""
    param = inspect.signature(pipe.__call__).parameters.get("max_sequence_length")
    if param is not None and isinstance(param.default, int):
        return int(param.default)
    return 256


def encoders_of(pipe: Any) -> list[Encoder]:
    """The pipeline's text encoders in order; [] for a backend without tokenizers."""
    if pipe is None:
        return []
    toks = [(a, getattr(pipe, a, None)) for a in TOKENIZER_ATTRS]
    present = [(a, t) for a, t in toks if t is not None]
    clips = [t for _, t in present if "T5" not in type(t).__name__]
    clip_names = CLIP_NAMES.get(len(clips), tuple(f"clip_{i + 1}" for i in range(len(clips))))
    out: list[Encoder] = []
    for _, tok in present:
        if "T5" in type(tok).__name__:
            out.append(Encoder("t5", _t5_limit(pipe), _count_with(tok)))
        else:
            name = clip_names[len([e for e in out if e.name != "t5"])]
            out.append(Encoder(name, int(tok.model_max_length), _count_with(tok)))
    return out


def check_prompt(encoders: Sequence[Encoder], prompt: str) -> list[Truncation]:
    return truncations([(e.name, e.max_tokens, e.count(prompt)) for e in encoders])


class PromptGuard:
    """The server's view: header for a truncated prompt, or a 400 naming `prompt`."""

    def __init__(
        self,
        encoders: Sequence[Encoder],
        truncate: bool,
        on_truncated: Callable[[str], None] = lambda encoder: None,
    ) -> None:
        self.encoders = list(encoders)
        self.truncate = truncate
        self._on_truncated = on_truncated

    def headers(self, prompt: str) -> dict[str, str]:
        """{} when every encoder takes the whole prompt; raises RequestError when the
        pool refuses to truncate."""
        from .validation import RequestError

        cuts = check_prompt(self.encoders, prompt)
        if not cuts:
            return {}
        if not self.truncate:
            raise RequestError(400, "prompt_too_long", refusal_message(cuts), "prompt")
        for c in cuts:
            self._on_truncated(c.encoder)
        return {TRUNCATED_HEADER: header_value(cuts)}
