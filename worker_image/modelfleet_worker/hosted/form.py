"""An edit's multipart form for a provider: the worker's streaming reader
(modelfleet_worker.multipart, shared with the diffusers worker) plus what forwarding
needs — each file's name and Content-Type, and a magic-byte check so a file that is
no image is refused before a provider call is spent on it."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..edits import sniff_format
from ..multipart import read_edit_form
from ..validation import RequestError, form_to_body
from .answers import Reject
from .backend import EditInput

MAX_UPLOAD_BYTES = 25 * 1024 * 1024  # the whole form (the Images API's image limit)
_TYPES = {
    "PNG": ("image/png", "png"),
    "JPEG": ("image/jpeg", "jpg"),
    "WEBP": ("image/webp", "webp"),
}


def _reject(exc: RequestError) -> Reject:
    outcome = "too_large" if exc.status == 413 else "invalid"
    return Reject(exc.status, exc.code, exc.message, exc.param, outcome)


async def read_edit(request: web.Request) -> tuple[dict[str, Any], EditInput]:
    """(the form's text fields as a JSON-typed body, the uploads). Raises Reject."""
    try:
        form = await read_edit_form(request, MAX_UPLOAD_BYTES)
        body = form_to_body(form.fields)
    except RequestError as exc:
        raise _reject(exc) from exc
    uploads: dict[str, list[tuple[str, bytes, str]]] = {}
    for param in ("image", "mask"):
        for i, (data, (filename, _)) in enumerate(
            zip(form.files.get(param, []), form.file_info.get(param, []), strict=True)
        ):
            raw = data.getvalue()
            fmt = sniff_format(raw[:16])
            if fmt is None:
                raise Reject(400, "invalid_request", f"{param} must be a PNG, JPEG or WebP", param)
            ctype, ext = _TYPES[fmt]
            uploads.setdefault(param, []).append((filename or f"{param}{i}.{ext}", raw, ctype))
    if not uploads.get("image"):
        raise Reject(400, "invalid_request", "image is required", "image")
    if len(uploads.get("mask", [])) > 1:
        raise Reject(400, "invalid_request", "mask must be given once", "mask")
    mask = uploads["mask"][0] if uploads.get("mask") else None
    return body, EditInput(tuple(uploads["image"]), mask)
