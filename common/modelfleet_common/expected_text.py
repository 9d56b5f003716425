"""The text a render was asked to show: pure, shared by the router and the worker.

A request names it in the ModelFleet extension field `text` (a list of strings;
the OpenAI SDK sends it through `extra_body`). Without that field it is read
from the prompt the way text-rendering benchmarks (MARIO-Eval, Type-R) do:
quoted spans (straight or curly, double or single quotes) and `text: ...` forms. No expected
text means the render is not verified at all.
"""

from __future__ import annotations

import re

MAX_TEXTS = 16
MAX_TEXT_CHARS = 500

# Opening quote -> closing quote. Straight quotes close themselves.
_PAIRS = {'"': '"', "'": "'", "\u201c": "\u201d", "\u2018": "\u2019"}
# Quotes that double as apostrophes: they open and close only at word edges,
# so "Joe's" and "kids' toys" are not spans.
_APOSTROPHES = {"'", "\u2019"}
_TEXT_FORM = re.compile(r"\btext\s*[:=]\s*", re.IGNORECASE)
# A `text:` value ends at a line end, ';', ',', '|' or a sentence-ending '.'.
_TEXT_END = re.compile(r"[\n\r;,|]|\.(?=\s|$)")


class ExpectedTextError(ValueError):
    """A malformed `text` field; `param` is the field a 400 names."""

    param = "text"


def parse_text_field(value: object) -> tuple[str, ...] | None:
    """The `text` extension field: None when absent, else its strings (stripped).

    An empty list is an explicit "nothing to verify" and wins over the prompt.
    """
    if value is None:
        return None
    if isinstance(value, str):
        raise ExpectedTextError('text must be a list of strings, not a string: use ["..."]')
    if not isinstance(value, list):
        raise ExpectedTextError("text must be a list of strings")
    if len(value) > MAX_TEXTS:
        raise ExpectedTextError(f"text holds {len(value)} strings; at most {MAX_TEXTS}")
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise ExpectedTextError(f"text[{i}] must be a string")
        item = item.strip()
        if not item:
            raise ExpectedTextError(f"text[{i}] must not be empty")
        if len(item) > MAX_TEXT_CHARS:
            raise ExpectedTextError(f"text[{i}] is longer than {MAX_TEXT_CHARS} characters")
        out.append(item)
    return tuple(out)


def _word_char(s: str, i: int) -> bool:
    return 0 <= i < len(s) and s[i].isalnum()


def _closing(prompt: str, opener: int) -> int:
    """Index of the quote closing the one at `opener`, or -1."""
    close = _PAIRS[prompt[opener]]
    j = opener + 1
    while True:
        j = prompt.find(close, j)
        if j < 0:
            return -1
        # An apostrophe inside or at the end of a word ("Joe's", "kids'") does not close.
        if close not in _APOSTROPHES or not _word_char(prompt, j + 1):
            return j
        j += 1


def _quoted_spans(prompt: str) -> list[tuple[int, int, str]]:
    spans = []
    i = 0
    while i < len(prompt):
        c = prompt[i]
        if c in _PAIRS and not (c in _APOSTROPHES and _word_char(prompt, i - 1)):
            j = _closing(prompt, i)
            if j > i:
                spans.append((i, j + 1, prompt[i + 1 : j]))
                i = j + 1
                continue
        i += 1
    return spans


def _text_forms(prompt: str, covered: list[tuple[int, int]]) -> list[tuple[int, int, str]]:
    forms = []
    for m in _TEXT_FORM.finditer(prompt):
        start = m.end()
        if any(a <= m.start() < b for a, b in covered):
            continue  # `text:` inside a quoted span is part of that span
        if start < len(prompt) and prompt[start] in _PAIRS:
            continue  # text: "..." is read as the quoted span
        end_m = _TEXT_END.search(prompt, start)
        end = end_m.start() if end_m else len(prompt)
        forms.append((m.start(), end, prompt[start:end]))
    return forms


def extract_from_prompt(prompt: str) -> tuple[str, ...]:
    """Quoted spans and `text:` values, in prompt order, first occurrence of each."""
    quoted = _quoted_spans(prompt)
    found = sorted(quoted + _text_forms(prompt, [(a, b) for a, b, _ in quoted]))
    out: list[str] = []
    for _, _, raw in found:
        text = " ".join(raw.split())[:MAX_TEXT_CHARS]
        if text and text not in out:
            out.append(text)
    return tuple(out[:MAX_TEXTS])


def expected_text(prompt: str, text_field: object = None) -> tuple[str, ...]:
    """The `text` field when given, else what the prompt quotes. Raises ExpectedTextError."""
    given = parse_text_field(text_field)
    return given if given is not None else extract_from_prompt(prompt)
