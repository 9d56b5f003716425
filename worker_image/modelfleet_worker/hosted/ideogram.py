"""Backend `ideogram`: Ideogram 3.0 (provider model `V_3`, `POST /v1/ideogram-v3/generate`,
multipart) and the legacy models V_2, V_2_TURBO, V_2A, V_2A_TURBO (`POST /generate`,
JSON `{"image_request": {...}}`); V_3 edits go to `POST /v1/ideogram-v3/edit`.

Wire format (https://developer.ideogram.ai/api-reference): header `Api-Key: KEY`; base
URL https://api.ideogram.ai. The size goes as `resolution` (WxH for V3,
RESOLUTION_W_H legacy), which names every size Ideogram renders exactly; up to 8
images a call; `seed` 0-2147483647. Answers `{"created", "data": [{"url", "seed",
"is_image_safe", "resolution", ...}]}`: the URLs are time-limited (the server downloads
them), an image with is_image_safe=false has none. 422 is the safety check refusing
the prompt, 429 a rate limit (Retry-After). Translation tables: docs/providers.md.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from .backend import (
    Capabilities,
    EditsUnsupported,
    HostedRequest,
    ProviderContext,
    ProviderError,
    ProviderImage,
    ProviderRateLimited,
    ProviderRefused,
    ProviderResult,
    Size,
)
from .limits import retry_after_s
from .registry import BackendSettings

DEFAULT_ENDPOINT = "https://api.ideogram.ai"
SEED_MAX = 2147483647
_RESOLUTION_TEXT = (
    "512x1536 576x1408 576x1472 576x1536 640x1344 640x1408 640x1472 640x1536 704x1152 "
    "704x1216 704x1280 704x1344 704x1408 704x1472 736x1312 768x1088 768x1216 768x1280 "
    "768x1344 800x1280 832x960 832x1024 832x1088 832x1152 832x1216 832x1248 864x1152 "
    "896x960 896x1024 896x1088 896x1120 896x1152 960x832 960x896 960x1024 960x1088 "
    "1024x832 1024x896 1024x960 1024x1024 1088x768 1088x832 1088x896 1088x960 1120x896 "
    "1152x704 1152x832 1152x864 1152x896 1216x704 1216x768 1216x832 1248x832 1280x704 "
    "1280x768 1280x800 1312x736 1344x640 1344x704 1344x768 1408x576 1408x640 1408x704 "
    "1472x576 1472x640 1472x704 1536x512 1536x576 1536x640"
)


def _size(text: str) -> Size:
    w, h = text.split("x")
    return Size(int(w), int(h))


# Every resolution Ideogram 3.0 renders (the V3 reference's resolution enum).
RESOLUTIONS: tuple[Size, ...] = tuple(_size(r) for r in _RESOLUTION_TEXT.split())
# The legacy endpoint's RESOLUTION_W_H enum: a list of its own (e.g. 1280x720, no 800x1280).
_LEGACY_RESOLUTION_TEXT = (
    "512x1536 576x1408 576x1472 576x1536 640x1024 640x1344 640x1408 640x1472 640x1536 "
    "704x1152 704x1216 704x1280 704x1344 704x1408 704x1472 720x1280 736x1312 768x1024 "
    "768x1088 768x1152 768x1216 768x1232 768x1280 768x1344 832x960 832x1024 832x1088 "
    "832x1152 832x1216 832x1248 864x1152 896x960 896x1024 896x1088 896x1120 896x1152 "
    "960x832 960x896 960x1024 960x1088 1024x640 1024x768 1024x832 1024x896 1024x960 "
    "1024x1024 1088x768 1088x832 1088x896 1088x960 1120x896 1152x704 1152x768 1152x832 "
    "1152x864 1152x896 1216x704 1216x768 1216x832 1232x768 1248x832 1280x704 1280x720 "
    "1280x768 1280x800 1312x736 1344x640 1344x704 1344x768 1408x576 1408x640 1408x704 "
    "1472x576 1472x640 1472x704 1536x512 1536x576 1536x640"
)
LEGACY_RESOLUTIONS: tuple[Size, ...] = tuple(_size(r) for r in _LEGACY_RESOLUTION_TEXT.split())
V3 = "V_3"
LEGACY_MODELS = ("V_2", "V_2_TURBO", "V_2A", "V_2A_TURBO")
MODELS = (V3, *LEGACY_MODELS)
RENDERING_SPEEDS = ("FLASH", "TURBO", "DEFAULT", "QUALITY")
# OpenAI's `quality` values, for clients that send them, as V3 rendering speeds.
QUALITY_SPEED = {"low": "TURBO", "medium": "DEFAULT", "high": "QUALITY", "auto": "DEFAULT"}
MAGIC = ("AUTO", "ON", "OFF")
V3_STYLES = ("AUTO", "GENERAL", "REALISTIC", "DESIGN", "FICTION")
LEGACY_STYLES = ("AUTO", "GENERAL", "REALISTIC", "DESIGN", "RENDER_3D", "ANIME")


def _enum(extra: Mapping[str, Any], key: str, allowed: tuple[str, ...]) -> str | None:
    value = extra.get(key)
    if value is None:
        return None
    if value not in allowed:
        raise ProviderError(400, f"{key} must be one of {', '.join(allowed)}", key)
    return str(value)


def _seed(seed: int | None) -> int | None:
    if seed is not None and not 0 <= seed <= SEED_MAX:
        raise ProviderError(400, f"seed must be from 0 to {SEED_MAX} for Ideogram", "seed")
    return seed


def rendering_speed(req: HostedRequest) -> str:
    """V3's speed: the client's `quality` (low/medium/high/auto) if given, else
    `rendering_speed` (the client's or the pool default's), else DEFAULT."""
    if req.quality is not None:
        return QUALITY_SPEED[req.quality]
    return _enum(req.extra, "rendering_speed", RENDERING_SPEEDS) or "DEFAULT"


def v3_fields(req: HostedRequest) -> list[tuple[str, str]]:
    """Pure: the multipart fields of one V3 call."""
    fields = [
        ("prompt", req.prompt),
        ("num_images", str(req.n)),
        ("resolution", str(req.size)),
        ("rendering_speed", rendering_speed(req)),
    ]
    seed = _seed(req.seed)
    if seed is not None:
        fields.append(("seed", str(seed)))
    magic = _enum(req.extra, "magic_prompt", MAGIC)
    if magic is not None:
        fields.append(("magic_prompt", magic))
    style = _enum(req.extra, "style_type", V3_STYLES)
    if style is not None:
        fields.append(("style_type", style))
    if req.negative_prompt:
        fields.append(("negative_prompt", req.negative_prompt))
    return fields


def legacy_body(model: str, req: HostedRequest) -> dict[str, Any]:
    """Pure: the JSON body of one legacy /generate call."""
    ir: dict[str, Any] = {
        "prompt": req.prompt,
        "model": model,
        "num_images": req.n,
        "resolution": f"RESOLUTION_{req.size.width}_{req.size.height}",
    }
    seed = _seed(req.seed)
    if seed is not None:
        ir["seed"] = seed
    magic = _enum(req.extra, "magic_prompt", MAGIC)
    if magic is not None:
        ir["magic_prompt_option"] = magic
    style = _enum(req.extra, "style_type", LEGACY_STYLES)
    if style is not None:
        ir["style_type"] = style
    if req.negative_prompt:
        if model.startswith("V_2A"):
            raise ProviderError(400, f"{model} takes no negative prompt", "negative_prompt")
        ir["negative_prompt"] = req.negative_prompt
    return {"image_request": ir}


def ideogram_mask(mask: bytes, image: bytes) -> bytes:
    """Pure: an Images API mask (fully transparent pixels are the ones to edit) as the
    black-and-white PNG Ideogram takes (black = edit, white = keep), checked to be the
    image's size. ProviderError 400 naming `mask` otherwise."""
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(image)) as img:
            size = img.size
        with Image.open(io.BytesIO(mask)) as m:
            m.load()
            if m.size != size:
                raise ProviderError(
                    400,
                    f"mask is {m.size[0]}x{m.size[1]}, the image {size[0]}x{size[1]}: "
                    "they must be the same size",
                    "mask",
                )
            if "A" not in m.getbands():
                raise ProviderError(
                    400, "mask must have an alpha channel (transparent = edit)", "mask"
                )
            alpha = m.getchannel("A")
    except UnidentifiedImageError:
        raise ProviderError(400, "image and mask must be PNG, JPEG or WebP", "mask") from None
    bw = alpha.point(lambda a: 0 if a == 0 else 255)
    out = io.BytesIO()
    bw.save(out, format="PNG")
    return out.getvalue()


def edit_fields(req: HostedRequest) -> list[tuple[str, str]]:
    """Pure: the text fields of a V3 edit (its files go alongside)."""
    fields = [
        ("prompt", req.prompt),
        ("num_images", str(req.n)),
        ("rendering_speed", rendering_speed(req)),
    ]
    seed = _seed(req.seed)
    if seed is not None:
        fields.append(("seed", str(seed)))
    magic = _enum(req.extra, "magic_prompt", MAGIC)
    if magic is not None:
        fields.append(("magic_prompt", magic))
    return fields


def parse_answer(
    status: int, headers: Mapping[str, str], doc: Any, now: float, quality: str | None
) -> ProviderResult:
    """Pure: an Ideogram answer -> images (URLs), or the ProviderFailure it means."""
    if status == 200:
        data = doc.get("data") if isinstance(doc, dict) else None
        if not isinstance(data, list) or not data:
            raise ProviderError(502, "provider answered 200 without a data list")
        images = []
        for item in data:
            if not isinstance(item, dict):
                raise ProviderError(502, "provider answered a data item that is not an object")
            if item.get("is_image_safe") is False or not item.get("url"):
                continue  # flagged by Ideogram's filter: no URL is given for it
            seed = item.get("seed")
            images.append(
                ProviderImage(
                    url=str(item["url"]),
                    seed=seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
                )
            )
        if not images:
            raise ProviderRefused("the provider's safety check flagged every image (is_image_safe)")
        return ProviderResult(tuple(images), quality=quality)
    if isinstance(doc, dict):
        raw = doc.get("error", doc.get("detail", doc.get("message", "")))
    else:
        raw = ""
    message = str(raw)[:300]
    if status == 422:
        raise ProviderRefused("the provider's safety check refused the prompt")
    if status == 429:
        wait = retry_after_s(headers, now)
        raise ProviderRateLimited("provider rate limit reached", wait if wait is not None else 5.0)
    if status in (401, 403):
        raise ProviderError(status, f"provider rejected the adapter's credentials (HTTP {status})")
    if 400 <= status < 500:
        raise ProviderError(400, f"provider rejected the request: {message}")
    raise ProviderError(status, f"provider error HTTP {status}: {message[:200]}")


@dataclass
class Ideogram:
    model: str
    capabilities: Capabilities
    name: str = "ideogram"
    provider: str = "ideogram"
    default_endpoint: str = DEFAULT_ENDPOINT

    async def generate(self, req: HostedRequest, ctx: ProviderContext) -> ProviderResult:
        base = ctx.endpoint or self.default_endpoint
        headers = {"Api-Key": ctx.api_key}
        if self.model == V3:
            # V3 takes multipart/form-data only (FormData without files would go urlencoded).
            form = aiohttp.MultipartWriter("form-data")
            for key, value in v3_fields(req):
                form.append(value).set_content_disposition("form-data", name=key)
            url = f"{base}/v1/ideogram-v3/generate"
            return await self._call(ctx, url, headers, rendering_speed(req), data=form)
        body = legacy_body(self.model, req)
        return await self._call(ctx, f"{base}/generate", headers, None, json_body=body)

    async def edit(self, req: HostedRequest, ctx: ProviderContext) -> ProviderResult:
        """V3 only: `POST /v1/ideogram-v3/edit` with the image and its mask as Ideogram
        reads masks (black = edit)."""
        if self.model != V3 or req.edit is None:
            raise EditsUnsupported(f"ideogram {self.model}: edits need V_3")
        if len(req.edit.images) != 1:
            raise ProviderError(400, "Ideogram edits one image at a time", "image")
        if req.edit.mask is None:
            raise ProviderError(
                400, "Ideogram edits need a mask (transparent pixels = the part to edit)", "mask"
            )
        name, image, ctype = req.edit.images[0]
        mask = ideogram_mask(req.edit.mask[1], image)
        form = aiohttp.MultipartWriter("form-data")
        form.append(image, {"Content-Type": ctype}).set_content_disposition(
            "form-data", name="image", filename=name
        )
        form.append(mask, {"Content-Type": "image/png"}).set_content_disposition(
            "form-data", name="mask", filename="mask.png"
        )
        for key, value in edit_fields(req):
            form.append(value).set_content_disposition("form-data", name=key)
        base = ctx.endpoint or self.default_endpoint
        url = f"{base}/v1/ideogram-v3/edit"
        return await self._call(ctx, url, {"Api-Key": ctx.api_key}, rendering_speed(req), form)

    async def _call(
        self,
        ctx: ProviderContext,
        url: str,
        headers: dict[str, str],
        quality: str | None,
        data: aiohttp.MultipartWriter | None = None,
        json_body: dict[str, Any] | None = None,
    ) -> ProviderResult:
        timeout = aiohttp.ClientTimeout(total=ctx.timeout_s)
        try:
            async with ctx.session.post(
                url, data=data, json=json_body, headers=headers, timeout=timeout
            ) as resp:
                try:
                    doc = await resp.json(content_type=None)
                except ValueError:
                    doc = None
                return parse_answer(resp.status, resp.headers, doc, time.time(), quality)
        except TimeoutError as exc:
            raise ProviderError(0, f"provider did not answer within {ctx.timeout_s:g}s") from exc
        except aiohttp.ClientError as exc:
            raise ProviderError(0, f"cannot reach provider: {type(exc).__name__}") from exc


def capabilities(model: str) -> Capabilities:
    return Capabilities(
        sizes=RESOLUTIONS if model == V3 else LEGACY_RESOLUTIONS,
        default_size=Size(1024, 1024),
        max_n=8,
        seed=True,
        edits=model == V3,
        qualities=tuple(QUALITY_SPEED) if model == V3 else (),
    )


def make_ideogram(settings: BackendSettings) -> Ideogram:
    model = settings.provider_model
    if model not in MODELS:
        raise ValueError(
            f"ideogram backend: unknown provider model {model!r} (one of {', '.join(MODELS)})"
        )
    return Ideogram(model, capabilities(model))
