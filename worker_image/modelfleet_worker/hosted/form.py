"""The edit's multipart form, streamed part by part with limits (aiohttp shell)."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from .answers import Reject
from .backend import EditInput

MAX_UPLOAD_BYTES = 25 * 1024 * 1024  # an edit's files together (the Images API's limit)
MAX_FIELD_BYTES = 64 * 1024  # one text part


async def read_edit_form(request: web.Request) -> tuple[dict[str, str], EditInput]:
    """The edit's multipart form: text fields, image (or image[] repeated) and mask.
    Files together may hold MAX_UPLOAD_BYTES; the first over it is named in the 413."""
    if not request.content_type.startswith("multipart/"):
        raise Reject(400, "invalid_request", "edits take multipart/form-data", "image")
    reader = await request.multipart()
    fields: dict[str, str] = {}
    images: list[tuple[str, bytes, str]] = []
    mask: tuple[str, bytes, str] | None = None
    total = 0
    while True:
        part = await reader.next()
        if part is None:
            break
        if not isinstance(part, aiohttp.BodyPartReader):
            continue
        name = part.name or ""
        data = bytearray()
        if part.filename is None:
            while chunk := await part.read_chunk(64 * 1024):
                data.extend(chunk)
                if len(data) > MAX_FIELD_BYTES:
                    raise Reject(400, "invalid_request", f"{name} is over 64 KiB", name or None)
            fields[name] = data.decode("utf-8", "replace")
            continue
        while chunk := await part.read_chunk(256 * 1024):
            data.extend(chunk)
            if total + len(data) > MAX_UPLOAD_BYTES:
                field = "mask" if name == "mask" else "image"
                raise Reject(
                    413,
                    "body_too_large",
                    f"uploads exceed {MAX_UPLOAD_BYTES} bytes",
                    field,
                    "too_large",
                )
        total += len(data)
        entry = (part.filename, bytes(data), part.headers.get("Content-Type", "image/png"))
        if name == "mask":
            mask = entry
        elif name in ("image", "image[]"):
            images.append(entry)
    if not images:
        raise Reject(400, "invalid_request", "image is required", "image")
    return fields, EditInput(tuple(images), mask)
