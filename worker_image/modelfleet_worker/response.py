"""The pieces of a 200 answer: image encoding, per-image items, provenance (brief
contract 1: what made the images, and what they cost) and the summary headers."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import Any

from .validation import OUTPUT_FORMATS
from .verify import Verification


def encode_png(image: Any) -> str:
    return encode_image(image, "png", None)


def encode_image(image: Any, fmt: str, compression: int | None) -> str:
    """base64 of the image as OpenAI's output_format; compression 0-100 (jpeg/webp)."""
    buf = io.BytesIO()
    kwargs: dict[str, Any] = {}
    if compression is not None:
        kwargs["quality"] = 100 - compression
    image.save(buf, format=OUTPUT_FORMATS[fmt], **kwargs)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def service_cost_usd(
    per_image_s: float, images: int, gpu_hour_price: float, gpus: int = 1
) -> float:
    """GPU-seconds (the images' service seconds x the pod's GPUs, which it holds
    all the while) x the price per GPU-hour."""
    return per_image_s * images * gpus * gpu_hour_price / 3600.0


def provenance(
    model: str, revision: str | None, seeds: Sequence[int | None], cost_usd: float
) -> dict[str, Any]:
    """The `modelfleet` object of a response; OpenAI clients ignore it. A seed is
    None where the backend takes none (hosted providers)."""
    return {
        "model": model,
        "revision": revision,
        "seeds": list(seeds),
        "cost_usd": round(cost_usd, 9),
        "images": len(seeds),
    }


def model_revision(model: str, revision: str) -> str | None:
    """The revision provenance reports: hf://org/name@REV, else REVISION, else None."""
    from .fetch import FetchError, parse_uri

    try:
        return parse_uri(model, revision).revision or revision or None
    except FetchError:  # no model URI (dev backends): only an explicit REVISION
        return revision or None


def provenance_headers(prov: dict[str, Any]) -> dict[str, str]:
    """The provenance object's headers; X-ModelFleet-Revision only when one is known."""
    headers = {
        "X-ModelFleet-Model": _header_safe(str(prov["model"])),
        "X-ModelFleet-Cost-USD": f"{prov['cost_usd']:.9f}",
    }
    if prov.get("revision"):
        headers["X-ModelFleet-Revision"] = _header_safe(str(prov["revision"]))
    return headers


def _header_safe(value: str) -> str:
    # Header values are latin-1 without control characters; a model URI may hold others.
    return "".join(c if 0x20 <= ord(c) < 0x7F else "?" for c in value)


def text_summary_headers(checks: Sequence[Verification | None]) -> dict[str, str]:
    """Verification in three headers, so the router can count it per pool for canaries
    without parsing the body (it reads bodies only on verify routes). Verified renders
    are those the OCR read and scored; unreadable ones count in neither."""
    scored = [c.score for c in checks if c is not None and c.score is not None]
    if not scored:
        return {}
    return {
        "X-ModelFleet-Text-Verified": str(len(scored)),
        "X-ModelFleet-Text-Passed": str(sum(1 for s in scored if s.passed)),
        "X-ModelFleet-Text-Accuracy-Sum": f"{sum(s.word_accuracy for s in scored):.6f}",
    }


def image_item(png: str, seed: int, check: Verification | None) -> dict[str, Any]:
    item: dict[str, Any] = {"b64_json": png, "seed": seed}
    if check is not None:
        item["modelfleet"] = check.block()
    return item
