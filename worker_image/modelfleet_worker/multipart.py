"""Streaming read of a multipart/form-data edit request (the shell around edits.py).

Parts are read chunk by chunk, counting against one limit for the whole body, so
an oversized upload is refused naming the part that crossed it, without holding
more than the limit. File parts are written straight into one BytesIO each, which
Pillow decodes in place (no second copy of an upload).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

from aiohttp import BodyPartReader, MultipartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from .validation import RequestError

# Text fields are short; a longer one is an upload in the wrong part.
MAX_TEXT_FIELD_BYTES = 64 * 1024
MAX_PARTS = 64
_CHUNK = 64 * 1024
FILE_FIELDS = ("image", "image[]", "mask", "markup")


@dataclass
class EditForm:
    fields: dict[str, list[str]] = field(default_factory=dict)
    files: dict[str, list[io.BytesIO]] = field(default_factory=dict)  # "image[]" -> "image"
    # Parallel to `files`: (filename, Content-Type) as sent, for adapters that forward them.
    file_info: dict[str, list[tuple[str | None, str | None]]] = field(default_factory=dict)


def _too_large(param: str, limit: int) -> RequestError:
    return RequestError(
        413, "body_too_large", f"upload exceeds {limit} bytes while reading {param!r}", param
    )


async def read_edit_form(request: web.Request, limit: int) -> EditForm:
    """Reads every part; raises RequestError (400 not multipart, 413 over `limit`)."""
    ctype = request.headers.get("Content-Type", "")
    if not ctype.lower().startswith("multipart/form-data"):
        raise RequestError(
            400,
            "invalid_request",
            f"edits take multipart/form-data (as the OpenAI SDK sends), got {ctype[:64]!r}",
            None,
        )
    try:
        reader = await request.multipart()
        return await _read_parts(reader, limit)
    except RequestError:
        raise
    except (ValueError, AssertionError, RuntimeError, HttpProcessingError) as exc:
        # aiohttp's parser: bad boundary, truncated body, malformed part headers.
        raise RequestError(
            400, "invalid_request", f"malformed multipart body: {exc}", None
        ) from exc


async def _read_parts(reader: MultipartReader, limit: int) -> EditForm:
    form = EditForm()
    total = 0
    parts = 0
    while True:
        part = await reader.next()
        if part is None:
            return form
        if not isinstance(part, BodyPartReader):
            raise RequestError(400, "invalid_request", "nested multipart is not accepted", None)
        name = part.name
        if not name:
            raise RequestError(400, "invalid_request", "a form part has no name", None)
        parts += 1
        if parts > MAX_PARTS:
            raise RequestError(400, "invalid_request", f"more than {MAX_PARTS} form parts", name)
        is_file = name in FILE_FIELDS or part.filename is not None
        cap = limit - total if is_file else min(MAX_TEXT_FIELD_BYTES, limit - total)
        data = io.BytesIO()
        size = 0
        while chunk := await part.read_chunk(_CHUNK):
            size += len(chunk)
            if size > cap:
                if not is_file and limit - total > MAX_TEXT_FIELD_BYTES:
                    raise RequestError(
                        400,
                        "invalid_request",
                        f"{name} is longer than {MAX_TEXT_FIELD_BYTES} bytes",
                        name,
                    )
                raise _too_large(name, limit)
            data.write(chunk)
        total += size
        if is_file:
            data.seek(0)
            key = name.removesuffix("[]")
            form.files.setdefault(key, []).append(data)
            info = (part.filename, part.headers.get("Content-Type"))
            form.file_info.setdefault(key, []).append(info)
        else:
            try:
                text = data.getvalue().decode(part.get_charset("utf-8"))
            except (UnicodeDecodeError, LookupError) as exc:
                raise RequestError(400, "invalid_request", f"{name} is not UTF-8", name) from exc
            form.fields.setdefault(name, []).append(text)
