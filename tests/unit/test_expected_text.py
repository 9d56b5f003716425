"""Expected text: the `text` field, else quoted spans and `text:` forms in the prompt."""

from __future__ import annotations

import re

import pytest

from modelfleet_common.expected_text import (
    MAX_TEXT_CHARS,
    MAX_TEXTS,
    ExpectedTextError,
    expected_text,
    extract_from_prompt,
    parse_text_field,
)

PROMPTS: list[tuple[str, tuple[str, ...]]] = [
    ("a red cube", ()),
    ('a banner saying "SALE NOW" in red', ("SALE NOW",)),
    ("a banner saying 'SALE NOW' in red", ("SALE NOW",)),
    ("a banner saying \u201cSALE NOW\u201d in red", ("SALE NOW",)),
    ("a banner saying \u2018SALE NOW\u2019 in red", ("SALE NOW",)),
    ('two lines: "SALE" and "50% OFF"', ("SALE", "50% OFF")),
    ('"OPEN"', ("OPEN",)),
    # apostrophes are not quotes
    ("Joe's diner at night", ()),
    ("the kids' toys, neon sign 'OPEN'", ("OPEN",)),
    ("a neon sign reading 'Joe's Diner' at night", ("Joe's Diner",)),
    ("\u2018Joe\u2019s Diner\u2019 neon", ("Joe\u2019s Diner",)),
    # unterminated and empty quotes are ignored
    ('a sign saying "SALE', ()),
    ('empty "" quotes and "  " blanks', ()),
    # whitespace inside a span collapses
    ('"SALE\n   NOW"', ("SALE NOW",)),
    # text: forms end at a comma, semicolon, bar, line end or sentence end
    ("poster, text: SALE NOW, red background", ("SALE NOW",)),
    ("poster; Text: Grand Opening", ("Grand Opening",)),
    ("poster\ntext: SUMMER SALE\nwarm colours", ("SUMMER SALE",)),
    ("text: 50.5% OFF. Bright colours", ("50.5% OFF",)),
    ("text = HELLO | flat design", ("HELLO",)),
    ("TEXT:WELCOME", ("WELCOME",)),
    # text: followed by a quote is read as the quoted span (once)
    ('poster, text: "SALE, NOW", red', ("SALE, NOW",)),
    # `text:` inside a quote belongs to the quote; "context:" is not a text form
    ("'text: hi' on a mug", ("text: hi",)),
    ("context: a kitchen", ()),
    ("text:   , nothing", ()),
    # prompt order, duplicates once
    ('"B" then text: A, then "B" again', ("B", "A")),
]


@pytest.mark.parametrize(("prompt", "want"), PROMPTS)
def test_extract_from_prompt(prompt: str, want: tuple[str, ...]) -> None:
    assert extract_from_prompt(prompt) == want


def test_extracted_count_and_length_are_capped() -> None:
    many = " ".join(f'"w{i}"' for i in range(MAX_TEXTS + 5))
    assert len(extract_from_prompt(many)) == MAX_TEXTS
    long = '"' + "x" * (MAX_TEXT_CHARS + 10) + '"'
    assert extract_from_prompt(long) == ("x" * MAX_TEXT_CHARS,)


FIELDS: list[tuple[object, tuple[str, ...] | None]] = [
    (None, None),
    ([], ()),
    (["SALE NOW"], ("SALE NOW",)),
    (["  SALE ", "50% OFF"], ("SALE", "50% OFF")),
]


@pytest.mark.parametrize(("value", "want"), FIELDS)
def test_parse_text_field(value: object, want: tuple[str, ...] | None) -> None:
    assert parse_text_field(value) == want


BAD_FIELDS: list[tuple[object, str]] = [
    ("SALE NOW", "not a string"),
    ({"a": 1}, "list of strings"),
    (5, "list of strings"),
    ([1], "text[0] must be a string"),
    (["ok", None], "text[1] must be a string"),
    (["ok", "  "], "text[1] must not be empty"),
    (["x" * (MAX_TEXT_CHARS + 1)], "longer than"),
    (["a"] * (MAX_TEXTS + 1), f"at most {MAX_TEXTS}"),
]


@pytest.mark.parametrize(("value", "message"), BAD_FIELDS)
def test_bad_text_field_names_text(value: object, message: str) -> None:
    with pytest.raises(ExpectedTextError, match=re.escape(message)) as err:
        parse_text_field(value)
    assert err.value.param == "text"
    assert str(err.value).startswith("text")


@pytest.mark.parametrize(
    ("prompt", "field", "want"),
    [
        ('a sign "OPEN"', None, ("OPEN",)),
        ('a sign "OPEN"', ["CLOSED"], ("CLOSED",)),  # the field wins
        ('a sign "OPEN"', [], ()),  # an empty list opts out
        ("a red cube", None, ()),
    ],
)
def test_field_wins_over_prompt(prompt: str, field: object, want: tuple[str, ...]) -> None:
    assert expected_text(prompt, field) == want
