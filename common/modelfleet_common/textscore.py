"""Scoring what an OCR engine read against the expected text: pure, no dependencies.

Normalised as the text-rendering literature does (Unicode NFKC, case-fold,
whitespace collapsed). Word accuracy is the share of expected words found in
what was read, as multisets; NED is 1 - Levenshtein / max length (AnyText);
exact is equality of the normalised texts.
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

DEFAULT_MIN_WORD_ACCURACY = 1.0


def normalise(s: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", s).casefold().split())


# Sentence punctuation around a word; signs that change meaning (%, $, #, &) stay.
_EDGE = frozenset(
    ".,!?;:'\"()[]{}<>\u00ab\u00bb\u2018\u2019\u201a\u201c\u201d\u201e\u2026-\u2013\u2014"
)


def _is_punct(c: str) -> bool:
    return c in _EDGE


def _strip_punct(w: str) -> str:
    i, j = 0, len(w)
    while i < j and _is_punct(w[i]):
        i += 1
    while j > i and _is_punct(w[j - 1]):
        j -= 1
    return w[i:j]


def words(s: str) -> list[str]:
    """Normalised words; sentence punctuation at a word's edges is not part of it ("NOW!" is "now")."""
    out = []
    for w in normalise(s).split(" "):
        w = _strip_punct(w)
        if w:
            out.append(w)
    return out


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insert, delete, substitute) by Myers' bit-parallel algorithm:
    one pass over the longer string with big-int masks, so a long OCR read costs
    milliseconds in pure Python rather than a quadratic table."""
    if len(a) < len(b):
        a, b = b, a
    m = len(b)
    if m == 0:
        return len(a)
    peq: dict[str, int] = {}
    for i, c in enumerate(b):
        peq[c] = peq.get(c, 0) | (1 << i)
    mask = (1 << m) - 1
    last = 1 << (m - 1)
    pv, mv, dist = mask, 0, m
    for c in a:
        eq = peq.get(c, 0)
        xv = eq | mv
        xh = (((eq & pv) + pv) ^ pv) | eq
        ph = (mv | ~(xh | pv)) & mask
        mh = pv & xh
        if ph & last:
            dist += 1
        elif mh & last:
            dist -= 1
        ph = ((ph << 1) | 1) & mask
        mh = (mh << 1) & mask
        pv = (mh | ~(xv | ph)) & mask
        mv = ph & xv
    return dist


def ned(expected: str, read: str) -> float:
    """1 - Levenshtein / max length of the normalised texts; 1.0 when both are empty."""
    a, b = normalise(expected), normalise(read)
    longest = max(len(a), len(b))
    if longest == 0:
        return 1.0
    return 1.0 - levenshtein(a, b) / longest


def matched_words(expected: Sequence[str], read: Sequence[str]) -> int:
    """How many expected words were read, each read word used once (multisets).

    OCR engines often drop or add the space between large display words
    ("SALENOW", "SA LE"). Before counting, a read word that is exactly a run
    of adjacent expected words is split into them, and a run of adjacent read
    words that are not expected words but join into one is joined. Every
    letter must still be right: only spacing is forgiven.
    """
    vocab = set(expected)
    split: list[str] = []
    for r in read:
        run = None if r in vocab else _run(expected, r)
        split.extend(expected[run[0] : run[1] + 1] if run else [r])
    joined: list[str] = []
    i = 0
    while i < len(split):
        j = _join(split, i, vocab)
        joined.append("".join(split[i : j + 1]))
        i = j + 1
    pool = Counter(joined)
    found = 0
    for w in expected:
        if pool[w] > 0:
            pool[w] -= 1
            found += 1
    return found


def _run(parts: Sequence[str], target: str) -> tuple[int, int] | None:
    """First run parts[i..j] of two or more whose concatenation is target."""
    for i in range(len(parts)):
        acc = ""
        for j in range(i, len(parts)):
            acc += parts[j]
            if not target.startswith(acc):
                break
            if acc == target and j > i:
                return i, j
    return None


def _join(words: Sequence[str], i: int, vocab: set[str]) -> int:
    """Last index of a run from i of non-vocabulary words that joins into a vocabulary word."""
    acc = ""
    for j in range(i, len(words)):
        if words[j] in vocab:
            break
        acc += words[j]
        if acc in vocab and j > i:
            return j
    return i


def word_accuracy(expected: str, read: str) -> float:
    exp = words(expected)
    if not exp:
        return 1.0
    return matched_words(exp, words(read)) / len(exp)


@dataclass(frozen=True)
class TextScore:
    expected: tuple[str, ...]
    read: str
    word_accuracy: float
    ned: float
    exact: bool
    passed: bool
    min_word_accuracy: float


def score(expected: Sequence[str], read: str, min_word_accuracy: float) -> TextScore:
    """Score one image: `expected` as the request named it, `read` as the OCR gave it."""
    joined = " ".join(expected)
    acc = word_accuracy(joined, read)
    return TextScore(
        expected=tuple(expected),
        read=read,
        word_accuracy=acc,
        ned=ned(joined, read),
        exact=normalise(joined) == normalise(read),
        passed=acc >= min_word_accuracy,
        min_word_accuracy=min_word_accuracy,
    )
