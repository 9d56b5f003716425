"""Scoring: normalisation, word accuracy (multisets, spacing-tolerant), NED, pass."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelfleet_common.textscore import (
    levenshtein,
    ned,
    normalise,
    score,
    word_accuracy,
    words,
)


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ("SALE  NOW", "sale now"),
        ("  Sale\n\tNow ", "sale now"),
        ("\uff33\uff21\uff2c\uff25", "sale"),  # full-width letters (NFKC)
        ("STRASSE", "strasse"),
        ("Stra\u00dfe", "strasse"),  # case-fold, not lower()
        ("\ufb01ne", "fine"),  # ligature
        ("", ""),
    ],
)
def test_normalise(raw: str, want: str) -> None:
    assert normalise(raw) == want


def test_words_strip_edge_punctuation_only() -> None:
    assert words('"SALE NOW!" -- 50% off, Joe\'s') == ["sale", "now", "50%", "off", "joe's"]


def _dp(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


@pytest.mark.parametrize(
    ("a", "b", "d"),
    [
        ("", "", 0),
        ("abc", "", 3),
        ("", "abc", 3),
        ("kitten", "sitting", 3),
        ("sale now", "slae n0w", 3),
        ("flaw", "lawn", 2),
        ("a" * 200, "a" * 199 + "b", 1),
    ],
)
def test_levenshtein_table(a: str, b: str, d: int) -> None:
    assert levenshtein(a, b) == d == levenshtein(b, a)


@given(st.text(alphabet="abcd ", max_size=40), st.text(alphabet="abcd ", max_size=40))
def test_levenshtein_matches_the_textbook_table(a: str, b: str) -> None:
    assert levenshtein(a, b) == _dp(a, b)


ACCURACY: list[tuple[str, str, float]] = [
    ("SALE NOW", "SALE NOW", 1.0),
    ("SALE NOW", "sale now!", 1.0),
    ("SALE NOW", "SLAE NOW", 0.5),
    ("SALE NOW", "SALE N0W", 0.5),
    ("SALE NOW", "NOW SALE", 1.0),  # multiset: order does not matter
    ("SALE NOW", "", 0.0),
    ("SALE NOW", "SALE NOW 50% OFF", 1.0),  # extra words read do not lower it
    ("SALE SALE NOW", "SALE NOW", 2 / 3),  # each read word counts once
    ("SALE SALE NOW", "SALE NOW SALE", 1.0),
    # spacing: merged or split display words still count, every letter right
    ("SALE NOW", "SALENOW", 1.0),
    ("BIG SALE NOW", "BIGSALE NOW", 1.0),
    ("SALE NOW", "SA LE NOW", 1.0),
    ("SALE NOW", "SLAENOW", 0.0),
    ("SALE NOW", "SALENOWW", 0.0),
    ("SALE NOW", "SA LF NOW", 0.5),
    ("50% BIRTHDAY OFFER BIRTHDAY", "50%BIRTHDAY OFFER BIRTHDAY", 1.0),
    ("SALE SALE", "SALESALE", 1.0),
    ("SALE NOW", "SALE SALENOW", 1.0),  # the merged word still gives NOW
    ("NOW", "N O W", 1.0),
    ("NOW", "N O", 0.0),
    ("", "anything", 1.0),
]


@pytest.mark.parametrize(("expected", "read", "acc"), ACCURACY)
def test_word_accuracy(expected: str, read: str, acc: float) -> None:
    assert word_accuracy(expected, read) == pytest.approx(acc)


@pytest.mark.parametrize(
    ("expected", "read", "want"),
    [
        ("SALE NOW", "sale  now", 1.0),
        ("SALE NOW", "SLAE NOW", 1 - 2 / 8),
        ("SALE NOW", "", 0.0),
        ("", "", 1.0),
        ("ab", "abcd", 0.5),
    ],
)
def test_ned(expected: str, read: str, want: float) -> None:
    assert ned(expected, read) == pytest.approx(want)


def test_score_passed_against_threshold() -> None:
    s = score(["SALE", "NOW"], "SALE N0W", 0.5)
    assert (s.word_accuracy, s.passed, s.exact) == (0.5, True, False)
    assert s.ned == pytest.approx(1 - 1 / 8)
    assert not score(["SALE", "NOW"], "SALE N0W", 0.51).passed
    exact = score(["Sale now"], "SALE\nNOW", 1.0)
    assert exact.exact and exact.passed and exact.expected == ("Sale now",)
    assert exact.read == "SALE\nNOW"
