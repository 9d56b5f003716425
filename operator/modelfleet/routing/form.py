"""The router's view of a multipart/form-data edit: the text fields routing needs, and how
many files of each name, found in the body bytes without copying the files. Pure.

The body is forwarded to the worker unchanged (a text gate's re-render replaces a few text
fields: replace_text_fields); only text parts are decoded (they are short: prompt, model,
tier...). The worker parses the whole form again, files included."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

MAX_TEXT_PART_BYTES = 64 * 1024  # a longer "text" part is a file sent without a filename
MAX_PARTS = 64
_BOUNDARY = re.compile(r'boundary="?([^";]{1,200})"?', re.IGNORECASE)
_PARAM = re.compile(r';\s*(name|filename)\*?="((?:[^"\\]|\\.)*)"', re.IGNORECASE)
_PARAM_BARE = re.compile(r";\s*(name|filename)=([^;\s\"]+)", re.IGNORECASE)


class FormError(Exception):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


@dataclass
class FormScan:
    fields: dict[str, list[str]] = field(default_factory=dict)
    files: dict[str, int] = field(default_factory=dict)  # name -> how many parts
    file_bytes: int = 0


def boundary_of(content_type: str) -> bytes:
    if not content_type.lower().startswith("multipart/form-data"):
        raise FormError(
            f"edits take multipart/form-data (as the OpenAI SDK sends), got {content_type[:64]!r}"
        )
    m = _BOUNDARY.search(content_type)
    if m is None:
        raise FormError("multipart/form-data without a boundary parameter")
    return m.group(1).encode("latin-1")


def _disposition(head: bytes) -> tuple[str | None, str | None]:
    """(name, filename) of a part's Content-Disposition; filename None for a text field."""
    for line in head.split(b"\r\n"):
        k, _, v = line.partition(b":")
        if k.strip().lower() != b"content-disposition":
            continue
        text = v.decode("utf-8", "replace")
        params: dict[str, str] = {}
        for m in _PARAM.finditer(text):
            params.setdefault(m.group(1).lower(), re.sub(r"\\(.)", r"\1", m.group(2)))
        for m in _PARAM_BARE.finditer(text):
            params.setdefault(m.group(1).lower(), m.group(2))
        return params.get("name"), params.get("filename")
    return None, None


def scan_form(body: bytes, boundary: bytes) -> FormScan:
    """Raises FormError (a malformed body, a text part too long) naming the part."""
    delim = b"--" + boundary
    sep = b"\r\n" + delim
    pos = body.find(delim)
    if pos < 0:
        raise FormError("multipart body does not contain its boundary")
    pos += len(delim)
    out = FormScan()
    parts = 0
    while True:
        if body.startswith(b"--", pos):
            return out
        if not body.startswith(b"\r\n", pos):
            raise FormError("malformed multipart body: boundary not followed by CRLF")
        parts += 1
        if parts > MAX_PARTS:
            raise FormError(f"multipart body has more than {MAX_PARTS} parts")
        head_end = body.find(b"\r\n\r\n", pos + 2, pos + 2 + 16 * 1024)
        if head_end < 0:
            raise FormError("malformed multipart body: part headers not terminated")
        name, filename = _disposition(body[pos + 2 : head_end])
        start = head_end + 4
        end = body.find(sep, start)
        if end < 0:
            raise FormError("multipart body is truncated (no closing boundary)", name)
        if name is None:
            raise FormError("multipart part without Content-Disposition name")
        if filename is not None:
            out.files[name] = out.files.get(name, 0) + 1
            out.file_bytes += end - start
        else:
            if end - start > MAX_TEXT_PART_BYTES:
                raise FormError(
                    f"text field {name!r} is over {MAX_TEXT_PART_BYTES} bytes "
                    "(files need a filename)",
                    name,
                )
            try:
                value = body[start:end].decode("utf-8")
            except UnicodeDecodeError:
                raise FormError(f"text field {name!r} is not UTF-8", name) from None
            out.fields.setdefault(name, []).append(value)
        pos = end + len(sep)


def part_being_read(head: bytes, boundary: bytes) -> str | None:
    """The name of the last part started in `head` (a body cut short): which field an
    upload over the limit was in."""
    i = head.rfind(b"--" + boundary)
    if i < 0:
        return None
    end = head.find(b"\r\n\r\n", i)
    if end < 0:
        return None
    return _disposition(head[i:end])[0]


def replace_text_fields(body: bytes, boundary: bytes, fields: Mapping[str, str]) -> bytes:
    """The same multipart body with every text part named in `fields` (or `name[]`)
    dropped and one part per entry of `fields` appended; file parts and the other text
    parts are kept byte for byte, in order. How the text gate re-sends an edit with other
    settings. Raises FormError on a malformed body (scan_form refused those already)."""
    delim = b"--" + boundary
    sep = b"\r\n" + delim
    pos = body.find(delim)
    if pos < 0:
        raise FormError("multipart body does not contain its boundary")
    pos += len(delim)
    kept: list[bytes] = []
    while not body.startswith(b"--", pos):
        if not body.startswith(b"\r\n", pos):
            raise FormError("malformed multipart body: boundary not followed by CRLF")
        head_end = body.find(b"\r\n\r\n", pos + 2)
        end = body.find(sep, max(head_end, pos))
        if head_end < 0 or end < 0:
            raise FormError("multipart body is truncated (no closing boundary)")
        name, filename = _disposition(body[pos + 2 : head_end])
        if filename is not None or name is None or name.removesuffix("[]") not in fields:
            kept.append(body[pos + 2 : end])
        pos = end + len(sep)
    for name, value in fields.items():
        head = f'Content-Disposition: form-data; name="{name}"\r\n\r\n'
        kept.append(head.encode("utf-8") + value.encode("utf-8"))
    return b"".join(delim + b"\r\n" + part + b"\r\n" for part in kept) + delim + b"--\r\n"
