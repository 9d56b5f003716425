"""Strict rendering of PromQL query templates.

`{{key}}` (spaces inside the braces allowed) is replaced; an unknown key, an empty
`{{}}` or a stray `{{` / `}}` is an error naming the problem: a typo must never turn
into an empty string and a query that silently matches nothing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

TEMPLATE_KEYS = ("namespace", "pool", "stablePool", "candidatePool", "interval")

_PLACEHOLDER = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")


class TemplateError(ValueError):
    """The template cannot be rendered; the message names the key or position."""


def render_query(template: str, values: Mapping[str, str]) -> str:
    """Fill `{{key}}` placeholders from `values`; every key must be known and present."""

    def fill(m: re.Match[str]) -> str:
        key = m.group(1)
        if not key:
            raise TemplateError(f"empty placeholder {{{{}}}} at position {m.start()}")
        if key not in TEMPLATE_KEYS:
            raise TemplateError(
                f"unknown template key {key!r} at position {m.start()}; "
                f"known keys: {', '.join(TEMPLATE_KEYS)}"
            )
        if key not in values:
            raise TemplateError(f"no value for template key {key!r}")
        return values[key]

    # Check for stray braces on the template with placeholders blanked out, so a value
    # can never trigger (or hide) the check.
    blanked = _PLACEHOLDER.sub(lambda m: " " * len(m.group(0)), template)
    for token in ("{{", "}}"):
        pos = blanked.find(token)
        if pos >= 0:
            raise TemplateError(f"unbalanced template braces: {token!r} at position {pos}")
    return _PLACEHOLDER.sub(fill, template)


def duration_text(seconds: int) -> str:
    """A PromQL range duration for a window in seconds."""
    return f"{max(1, seconds)}s"
