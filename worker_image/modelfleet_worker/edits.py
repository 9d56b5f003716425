"""Edit requests (POST /v1/images/edits): pure checks on the uploaded files and fields.

OpenAI's semantics: the mask's fully transparent pixels (alpha 0) mark where the
image is edited. Diffusers' inpainting masks are the other way round: white
repaints, black keeps. `repaint_mask` converts one into the other.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageOps, UnidentifiedImageError

from .validation import (
    GenerationRequest,
    Limits,
    RequestError,
    form_to_body,
    validate_request,
)

# Pillow format by file signature; the decoded format must agree with it.
_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", 0, "PNG"),
    (b"\xff\xd8\xff", 0, "JPEG"),
    (b"WEBP", 8, "WEBP"),  # RIFF....WEBP
)
MAX_UPLOAD_PIXELS = 8192 * 8192  # refuse decompression bombs before decoding
_ORIENTATION = 0x0112  # EXIF tag
DEFAULT_STRENGTH = 0.8  # image-to-image: how far from the input the result may go
DEFAULT_INPAINT_STRENGTH = 1.0  # inpainting: the masked area is repainted fully


@dataclass(frozen=True)
class EditRequest:
    gen: GenerationRequest  # prompt, n, size (the output's), seed, steps, ... as for generations
    image: Any  # PIL RGB image, already at (gen.width, gen.height)
    mask: Any | None  # PIL "L" image at the same size, 255 = repaint; None = image-to-image
    strength: float


def _invalid(param: str, message: str) -> RequestError:
    return RequestError(400, "invalid_request", message, param)


def sniff_format(head: bytes) -> str | None:
    """PNG, JPEG or WEBP from the first bytes; None for anything else."""
    for magic, offset, fmt in _MAGIC:
        if head[offset : offset + len(magic)] == magic:
            if fmt == "WEBP" and head[:4] != b"RIFF":
                continue
            return fmt
    return None


def decode_upload(data: io.BytesIO, param: str) -> Any:
    """Decode an uploaded PNG/JPEG/WebP; 400 naming `param` for anything else."""
    return decode_upload_scaled(data, param, None)[0]


def decode_upload_scaled(
    data: io.BytesIO, param: str, max_side: int | None
) -> tuple[Any, tuple[int, int]]:
    """(image, its upright full size). With `max_side`, a JPEG is decoded at the
    smallest 1/2^k scale still at least max_side on both sides (libjpeg's draft
    mode: a 12 MP photo for a 1024 px model decodes at a quarter of the pixels)."""
    head = data.getbuffer()[:16].tobytes()
    fmt = sniff_format(head)
    if fmt is None:
        raise _invalid(param, f"{param} must be a PNG, JPEG or WebP file")
    try:
        img = Image.open(data, formats=[fmt])
        w, h = img.size
        if w * h > MAX_UPLOAD_PIXELS:
            raise _invalid(param, f"{param} is {w}x{h}: more than {MAX_UPLOAD_PIXELS} pixels")
        if img.getexif().get(_ORIENTATION) in (5, 6, 7, 8):  # stored sideways
            w, h = h, w
        if fmt == "JPEG" and max_side is not None and img.mode in ("RGB", "L"):
            img.draft(img.mode, (max_side, max_side))
        img.load()
        # Phone JPEGs store rotation as EXIF: edit what the user sees.
        upright = ImageOps.exif_transpose(img)
    except RequestError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise _invalid(param, f"{param} is not a decodable {fmt} file: {exc}") from exc
    return (upright if upright is not None else img), (w, h)


def has_alpha(img: Any) -> bool:
    return img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
        img.mode == "P" and "transparency" in img.info
    )


def repaint_mask(mask: Any) -> Any:
    """OpenAI mask (alpha 0 = edit) -> diffusers mask (255 = repaint): 255 - alpha."""
    if not has_alpha(mask):
        raise _invalid("mask", "mask must have an alpha channel: transparent pixels mark the edit")
    alpha = mask.convert("RGBA").getchannel("A")
    return alpha.point(lambda a: 255 - a)


def _round_down(v: int, multiple: int) -> int:
    return max(multiple, v // multiple * multiple)


def output_size(image_size: tuple[int, int], limits: Limits) -> tuple[int, int]:
    """Without `size`: the input's size, scaled to fit max_resolution, rounded down to
    the size multiple (aspect ratio kept as far as the rounding allows)."""
    w, h = image_size
    scale = min(1.0, limits.max_resolution / max(w, h))
    w, h = round(w * scale), round(h * scale)
    return _round_down(w, limits.size_multiple), _round_down(h, limits.size_multiple)


def _strength(body: Mapping[str, Any], steps: int, masked: bool) -> float:
    v = body.get("strength")
    if v is None:
        s = DEFAULT_INPAINT_STRENGTH if masked else DEFAULT_STRENGTH
    elif isinstance(v, bool) or not isinstance(v, int | float) or not 0.0 < v <= 1.0:
        raise _invalid("strength", "strength must be a number above 0 and at most 1")
    else:
        s = float(v)
    if int(steps * s) < 1:
        # Diffusers runs int(steps * strength) steps: zero would return the input.
        raise _invalid("strength", f"steps x strength must be at least 1 (steps {steps}, {s})")
    return s


def validate_edit(
    fields: dict[str, list[str]], files: Mapping[str, Sequence[io.BytesIO]], limits: Limits
) -> EditRequest:
    """The whole edit request, checked; raises RequestError naming the field."""
    images = files.get("image", [])
    if not images:
        raise _invalid("image", "image is required (one PNG, JPEG or WebP file)")
    if len(images) > 1:
        raise _invalid("image", f"this backend edits one image per request, got {len(images)}")
    masks = files.get("mask", [])
    if len(masks) > 1:
        raise _invalid("mask", f"mask must be given once, got {len(masks)}")
    body = form_to_body(fields)
    image, size = decode_upload_scaled(images[0], "image", limits.max_resolution)
    mask = decode_upload(masks[0], "mask") if masks else None
    if mask is not None and mask.size != size:
        raise _invalid(
            "mask",
            f"mask is {mask.size[0]}x{mask.size[1]} but image is {size[0]}x{size[1]}"
            "; they must be the same size",
        )
    repaint = repaint_mask(mask) if mask is not None else None
    if body.get("size") in (None, "auto"):
        w, h = output_size(size, limits)
        body["size"] = f"{w}x{h}"
    gen = validate_request(body, limits)
    strength = _strength(body, gen.steps, repaint is not None)
    target = (gen.width, gen.height)
    rgb = image.convert("RGB")
    if rgb.size != target:
        rgb = rgb.resize(target, Image.Resampling.LANCZOS)
    if repaint is not None and repaint.size != target:
        repaint = repaint.resize(target, Image.Resampling.NEAREST)
    return EditRequest(gen=gen, image=rgb, mask=repaint, strength=strength)
