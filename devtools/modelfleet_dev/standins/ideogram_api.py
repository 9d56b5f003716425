"""A strict local stand-in for the Ideogram API (https://api.ideogram.ai), as published at
https://developer.ideogram.ai/api-reference:

- `POST /v1/ideogram-v3/generate` (Ideogram 3.0), multipart/form-data: `prompt`, `seed`
  (0-2147483647), `resolution` (WxH, one of RESOLUTIONS) or `aspect_ratio` (1x1, 16x9,
  ..., never both), `rendering_speed` (FLASH|TURBO|DEFAULT|QUALITY), `magic_prompt`,
  `negative_prompt`, `num_images` (1-8), `style_type`, `color_palette`, `style_codes`.
- `POST /generate` (legacy, JSON `{"image_request": {...}}`) for V_2, V_2_TURBO, V_2A,
  V_2A_TURBO (and V_1*): `aspect_ratio` ASPECT_W_H or `resolution` RESOLUTION_W_H,
  `magic_prompt_option`, `num_images`, `seed`, `style_type`, `negative_prompt` (not on
  V_2A*), `color_palette` (not on V_1* / V_2A*).
- `POST /v1/ideogram-v3/edit`, multipart/form-data: `image` and `mask` files (JPEG,
  PNG or WebP, at most 10MB, the same size; the mask black and white, black = edit),
  `prompt`, `num_images`, `seed`, `rendering_speed`, `magic_prompt`; the edits are
  drawn at the image's size.

Both answer `{"created", "data": [{"url", "prompt", "resolution", "is_image_safe",
"seed", "style_type"}]}`; the URLs are this server's own
`/api/images/ephemeral/<id>.png` (time-limited, as the real ones: download them). An
image the filter flags has `is_image_safe: false` and no url. Auth: header `Api-Key`
(401 without). A prompt the safety check refuses: 422 `{"error": ...}`; rate limit:
429 with Retry-After; unknown or mistyped fields: 400 naming the field (stricter
than documented, so an adapter sending an undocumented field fails here first).

Run: `python -m modelfleet_dev.standins.ideogram_api --port 8092 --key-file KEY`."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
import time
import uuid
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from aiohttp import web

from modelfleet_dev.standins.common import Call, Fault, StandIn, main, png, random_seed

# The resolutions Ideogram renders (the API reference's resolution enum).
_RESOLUTION_TEXT = (
    "512x1536 576x1408 576x1472 576x1536 640x1344 640x1408 640x1472 640x1536 "
    "704x1152 704x1216 704x1280 704x1344 704x1408 704x1472 736x1312 768x1088 "
    "768x1216 768x1280 768x1344 800x1280 832x960 832x1024 832x1088 832x1152 "
    "832x1216 832x1248 864x1152 896x960 896x1024 896x1088 896x1120 896x1152 "
    "960x832 960x896 960x1024 960x1088 1024x832 1024x896 1024x960 1024x1024 "
    "1088x768 1088x832 1088x896 1088x960 1120x896 1152x704 1152x832 1152x864 "
    "1152x896 1216x704 1216x768 1216x832 1248x832 1280x704 1280x768 1280x800 "
    "1312x736 1344x640 1344x704 1344x768 1408x576 1408x640 1408x704 1472x576 "
    "1472x640 1472x704 1536x512 1536x576 1536x640"
)
RESOLUTIONS: tuple[tuple[int, int], ...] = tuple(
    (int(r.split("x")[0]), int(r.split("x")[1])) for r in _RESOLUTION_TEXT.split()
)
# The legacy endpoint's RESOLUTION_W_H enum, a list of its own.
_LEGACY_TEXT = (
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
LEGACY_RESOLUTIONS: tuple[tuple[int, int], ...] = tuple(
    (int(r.split("x")[0]), int(r.split("x")[1])) for r in _LEGACY_TEXT.split()
)
# What an aspect ratio renders at (V3 names; legacy ASPECT_W_H are the same ratios).
ASPECT_SIZES: dict[str, tuple[int, int]] = {
    "1x1": (1024, 1024),
    "16x9": (1312, 736),
    "9x16": (736, 1312),
    "4x3": (1152, 864),
    "3x4": (864, 1152),
    "3x2": (1248, 832),
    "2x3": (832, 1248),
    "16x10": (1280, 800),
    "10x16": (800, 1280),
    "3x1": (1536, 512),
    "1x3": (512, 1536),
    "2x1": (1408, 704),
    "1x2": (704, 1408),
    "5x4": (1120, 896),
    "4x5": (896, 1120),
}
LEGACY_ASPECTS = {f"ASPECT_{r.replace('x', '_')}": r for r in ASPECT_SIZES}
LEGACY_MODELS = ("V_1", "V_1_TURBO", "V_2", "V_2_TURBO", "V_2A", "V_2A_TURBO")
RENDERING_SPEEDS = ("FLASH", "TURBO", "DEFAULT", "QUALITY")
MAGIC = ("AUTO", "ON", "OFF")
V3_STYLES = ("AUTO", "GENERAL", "REALISTIC", "DESIGN", "FICTION")
LEGACY_STYLES = ("AUTO", "GENERAL", "REALISTIC", "DESIGN", "RENDER_3D", "ANIME")
SEED_MAX = 2147483647
URL_TTL_S = 3600.0
SAFETY_MESSAGE = "Prompt or provided image failed the safety checks"


class Invalid(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def _enum(field: str, value: Any, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise Invalid(field, f"{field} must be one of {', '.join(allowed)}")
    return value


def _int(field: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            raise Invalid(field, f"{field} must be an integer") from None
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise Invalid(field, f"{field} must be an integer from {lo} to {hi}")
    return value


def _size(
    field: str, value: str, allowed: tuple[tuple[int, int], ...] = RESOLUTIONS
) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in value.split("x"))
    except ValueError:
        raise Invalid(field, f"{field} must be one of the supported resolutions") from None
    if (w, h) not in allowed:
        raise Invalid(field, f"{field} {value} is not a supported resolution")
    return w, h


if TYPE_CHECKING:
    from PIL import Image


def _decode(field: str, data: bytes) -> Image.Image:
    """An upload as Ideogram takes it: JPEG, PNG or WebP, decodable. (Pillow comes with
    the worker extra; only edits need it.)"""
    from PIL import Image

    if not (
        data[:8] == b"\x89PNG\r\n\x1a\n" or data[:3] == b"\xff\xd8\xff" or data[8:12] == b"WEBP"
    ):
        raise Invalid(field, f"{field}: only JPEG, WebP and PNG are supported")
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except (OSError, ValueError):
        raise Invalid(field, f"{field} cannot be decoded") from None
    return img


class IdeogramStandIn(StandIn):
    def __init__(self, api_key: str, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(api_key, host, port)
        self.images: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self.max_images = 512
        self.downloads = 0
        self.download_headers: list[dict[str, str]] = []  # what each URL fetch sent

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/ideogram-v3/generate", self._v3)
        app.router.add_post("/v1/ideogram-v3/edit", self._v3_edit)
        app.router.add_post("/generate", self._legacy)
        app.router.add_get("/api/images/ephemeral/{name}", self._image)

    @staticmethod
    def error(status: int, message: str) -> web.Response:
        return web.json_response({"error": message}, status=status)

    def _denied(self, request: web.Request) -> web.Response | None:
        if request.headers.get("Api-Key") != self.api_key:
            return self.error(401, "Unauthorized: a valid Api-Key header is required")
        return None

    # -- requests ---------------------------------------------------------------

    async def _v3(self, request: web.Request) -> web.StreamResponse:
        call = Call(path=request.path, fields={})

        async def answer() -> web.StreamResponse:
            denied = self._denied(request)
            if denied is not None:
                return denied
            if not request.content_type.startswith("multipart/form-data"):
                return self.error(415, "Content-Type must be multipart/form-data")
            form: dict[str, str] = {}
            try:
                reader = await request.multipart()
                async for part in reader:
                    name = getattr(part, "name", None) or ""
                    if name == "style_reference_images":
                        await part.read()  # type: ignore[union-attr]
                        continue
                    if name in form:
                        return self.error(400, f"{name}: given more than once")
                    form[name] = await part.text()  # type: ignore[union-attr]
                req = self._parse_v3(form)
            except Invalid as exc:
                call.fields = {"invalid": exc.field}
                return self.error(400, f"Invalid input: {exc.message}")
            call.fields = req
            return await self._render(req, "V_3")

        return await self.tracked(call, answer)

    async def _v3_edit(self, request: web.Request) -> web.StreamResponse:
        call = Call(path=request.path, fields={})

        async def answer() -> web.StreamResponse:
            denied = self._denied(request)
            if denied is not None:
                return denied
            if not request.content_type.startswith("multipart/form-data"):
                return self.error(415, "Content-Type must be multipart/form-data")
            form: dict[str, str] = {}
            files: dict[str, bytes] = {}
            try:
                reader = await request.multipart()
                async for part in reader:
                    name = getattr(part, "name", None) or ""
                    if name in form or name in files:
                        return self.error(400, f"{name}: given more than once")
                    if name in ("image", "mask", "style_reference_images"):
                        files[name] = bytes(await part.read())  # type: ignore[union-attr]
                    else:
                        form[name] = await part.text()  # type: ignore[union-attr]
                req = self._parse_edit(form, files)
            except Invalid as exc:
                call.fields = {"invalid": exc.field}
                return self.error(400, f"Invalid input: {exc.message}")
            call.fields = req
            return await self._render(req, "V_3")

        return await self.tracked(call, answer)

    def _parse_edit(self, form: dict[str, str], files: dict[str, bytes]) -> dict[str, Any]:
        known = {
            "prompt",
            "magic_prompt",
            "num_images",
            "seed",
            "rendering_speed",
            "color_palette",
            "style_codes",
        }
        for name in form:
            if name not in known:
                raise Invalid(name, f"unknown field {name!r}")
        for name in ("image", "mask"):
            if name not in files:
                raise Invalid(name, f"{name} is required")
            if len(files[name]) > 10 * 1024 * 1024:
                raise Invalid(name, f"{name} is larger than 10MB")
        image, mask = _decode("image", files["image"]), _decode("mask", files["mask"])
        if image.size != mask.size:
            raise Invalid("mask", "mask must be the same size as the image")
        gray = mask.convert("L")
        hist = gray.histogram()
        if sum(hist[1:255]):
            raise Invalid("mask", "mask must be black and white")
        black = hist[0] / (gray.size[0] * gray.size[1])
        if not black:
            raise Invalid("mask", "mask has no black region to edit")
        prompt = form.get("prompt", "")
        if not prompt.strip():
            raise Invalid("prompt", "prompt is required")
        return {
            "prompt": prompt,
            "size": image.size,
            "black_fraction": round(black, 4),
            "num_images": _int("num_images", form.get("num_images", "1"), 1, 8),
            "seed": _int("seed", form["seed"], 0, SEED_MAX) if "seed" in form else None,
            "rendering_speed": _enum(
                "rendering_speed", form.get("rendering_speed", "DEFAULT"), RENDERING_SPEEDS
            ),
            "magic_prompt": _enum("magic_prompt", form.get("magic_prompt", "AUTO"), MAGIC),
            "style_type": "GENERAL",
            "negative_prompt": None,
        }

    def _parse_v3(self, form: dict[str, str]) -> dict[str, Any]:
        known = {
            "prompt",
            "seed",
            "resolution",
            "aspect_ratio",
            "rendering_speed",
            "magic_prompt",
            "negative_prompt",
            "num_images",
            "color_palette",
            "style_codes",
            "style_type",
        }
        for name in form:
            if name not in known:
                raise Invalid(name, f"unknown field {name!r}")
        prompt = form.get("prompt", "")
        if not prompt.strip():
            raise Invalid("prompt", "prompt is required")
        if "resolution" in form and "aspect_ratio" in form:
            raise Invalid("resolution", "resolution cannot be used with aspect_ratio")
        if "resolution" in form:
            size = _size("resolution", form["resolution"])
        else:
            ratio = _enum("aspect_ratio", form.get("aspect_ratio", "1x1"), tuple(ASPECT_SIZES))
            size = ASPECT_SIZES[ratio]
        if "color_palette" in form:
            try:
                json.loads(form["color_palette"])
            except json.JSONDecodeError:
                raise Invalid("color_palette", "color_palette must be a JSON object") from None
        return {
            "prompt": prompt,
            "size": size,
            "num_images": _int("num_images", form.get("num_images", "1"), 1, 8),
            "seed": _int("seed", form["seed"], 0, SEED_MAX) if "seed" in form else None,
            "rendering_speed": _enum(
                "rendering_speed", form.get("rendering_speed", "DEFAULT"), RENDERING_SPEEDS
            ),
            "magic_prompt": _enum("magic_prompt", form.get("magic_prompt", "AUTO"), MAGIC),
            "style_type": _enum("style_type", form.get("style_type", "GENERAL"), V3_STYLES),
            "negative_prompt": form.get("negative_prompt"),
        }

    async def _legacy(self, request: web.Request) -> web.StreamResponse:
        call = Call(path=request.path, fields={})

        async def answer() -> web.StreamResponse:
            denied = self._denied(request)
            if denied is not None:
                return denied
            try:
                body = await request.json()
            except (json.JSONDecodeError, UnicodeDecodeError):
                return self.error(400, "Invalid input: the body must be JSON")
            try:
                req = self._parse_legacy(body)
            except Invalid as exc:
                call.fields = {"invalid": exc.field}
                return self.error(400, f"Invalid input: {exc.message}")
            call.fields = req
            return await self._render(req, req["model"])

        return await self.tracked(call, answer)

    def _parse_legacy(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict) or set(body) != {"image_request"}:
            raise Invalid("image_request", 'the body must be {"image_request": {...}}')
        ir = body["image_request"]
        if not isinstance(ir, dict):
            raise Invalid("image_request", "image_request must be an object")
        known = {
            "prompt",
            "model",
            "aspect_ratio",
            "resolution",
            "magic_prompt_option",
            "seed",
            "style_type",
            "negative_prompt",
            "num_images",
            "color_palette",
        }
        for name in ir:
            if name not in known:
                raise Invalid(name, f"unknown field {name!r} in image_request")
        prompt = ir.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise Invalid("prompt", "prompt is required and must be a string")
        model = _enum("model", ir.get("model", "V_2"), LEGACY_MODELS)
        if "resolution" in ir and "aspect_ratio" in ir:
            raise Invalid("resolution", "resolution cannot be used with aspect_ratio")
        if "resolution" in ir:
            res = ir["resolution"]
            if not isinstance(res, str) or not res.startswith("RESOLUTION_"):
                raise Invalid("resolution", "resolution must be RESOLUTION_W_H")
            if model.startswith("V_1"):
                raise Invalid("resolution", f"resolution is not supported by {model}")
            wh = res.removeprefix("RESOLUTION_").replace("_", "x")
            size = _size("resolution", wh, LEGACY_RESOLUTIONS)
        else:
            aspect = _enum(
                "aspect_ratio", ir.get("aspect_ratio", "ASPECT_1_1"), tuple(LEGACY_ASPECTS)
            )
            size = ASPECT_SIZES[LEGACY_ASPECTS[aspect]]
        if "negative_prompt" in ir:
            if model.startswith("V_2A"):
                raise Invalid("negative_prompt", f"negative_prompt is not supported by {model}")
            if not isinstance(ir["negative_prompt"], str):
                raise Invalid("negative_prompt", "negative_prompt must be a string")
        if "color_palette" in ir and (model.startswith("V_1") or model.startswith("V_2A")):
            raise Invalid("color_palette", f"color_palette is not supported by {model}")
        if "style_type" in ir and model.startswith("V_1"):
            raise Invalid("style_type", f"style_type is not supported by {model}")
        return {
            "prompt": prompt,
            "model": model,
            "size": size,
            "num_images": _int("num_images", ir.get("num_images", 1), 1, 8),
            "seed": _int("seed", ir["seed"], 0, SEED_MAX) if "seed" in ir else None,
            "magic_prompt_option": _enum(
                "magic_prompt_option", ir.get("magic_prompt_option", "AUTO"), MAGIC
            ),
            "style_type": _enum("style_type", ir.get("style_type", "GENERAL"), LEGACY_STYLES),
            "negative_prompt": ir.get("negative_prompt"),
        }

    # -- answers ------------------------------------------------------------------

    async def _render(self, req: dict[str, Any], model: str) -> web.Response:
        fault: Fault | None = self.take_fault(model=model)
        await self.delay(fault)
        if fault is not None and fault.kind in ("rate_limit", "quota"):
            resp = self.error(429, "Too many requests")
            resp.headers["Retry-After"] = f"{fault.retry_after_s:g}"
            return resp
        if fault is not None and fault.kind == "error":
            return self.error(fault.status, "Internal server error")
        if (fault is not None and fault.kind == "refuse") or self.blocked(req["prompt"]):
            return self.error(422, SAFETY_MESSAGE)
        width, height = req["size"]
        first_seed = req["seed"] if req["seed"] is not None else random_seed()
        data = []
        for i in range(req["num_images"]):
            seed = (first_seed + i) % (SEED_MAX + 1)
            safe = not (i == 0 and fault is not None and fault.kind == "unsafe")
            item: dict[str, Any] = {
                "prompt": req["prompt"],
                "resolution": f"{width}x{height}",
                "is_image_safe": safe,
                "seed": seed,
                "style_type": req["style_type"],
            }
            if safe:
                item["url"] = self._store(png(width, height, seed))
            data.append(item)
        created = dt.datetime.now(dt.UTC).isoformat()
        return web.json_response({"created": created, "data": data})

    def _store(self, image: bytes) -> str:
        name = f"{uuid.uuid4().hex}.png"
        self.images[name] = (image, time.time() + URL_TTL_S)
        while len(self.images) > self.max_images:
            self.images.popitem(last=False)
        return f"{self.url}/api/images/ephemeral/{name}?exp={int(time.time() + URL_TTL_S)}"

    async def _image(self, request: web.Request) -> web.StreamResponse:
        self.download_headers.append(dict(request.headers))
        fault = self.take_fault(("slow_url",))
        if fault is not None:
            await asyncio.sleep(fault.delay_s)
        got = self.images.get(request.match_info["name"])
        if got is None or got[1] < time.time():
            return web.Response(status=404, text="Not Found")
        self.downloads += 1
        return web.Response(body=got[0], content_type="image/png")


if __name__ == "__main__":
    main(IdeogramStandIn, "Ideogram API stand-in (v3 /v1/ideogram-v3/generate, legacy /generate)")
