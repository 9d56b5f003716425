"""Backends `gemini-imagen` (Imagen through the Gemini API, `models/{model}:predict`) and
`gemini` (Gemini image models, `models/{model}:generateContent` with image output).

Wire format (https://ai.google.dev/gemini-api/docs/imagen, .../docs/image-generation):
header `x-goog-api-key: KEY`; base URL https://generativelanguage.googleapis.com, API
version v1beta. Imagen: `{"instances": [{"prompt"}], "parameters": {"sampleCount",
"aspectRatio", "sampleImageSize"?, "personGeneration"?, "includeRaiReason": true}}` ->
`{"predictions": [{"bytesBase64Encoded", "mimeType"} | {"raiFilteredReason"}]}`.
Gemini: `{"contents": [{"role": "user", "parts": [{"text"}, {"inlineData"}...]}],
"generationConfig": {"responseModalities": ["TEXT", "IMAGE"], "imageConfig":
{"aspectRatio", "imageSize"?}, "seed"?}}` -> candidates[0].content.parts with
`inlineData` (thought parts skipped). Errors: `{"error": {"code", "message", "status",
"details"}}`; 429 RESOURCE_EXHAUSTED is a daily quota when its QuotaFailure's quotaId
says PerDay (unready until midnight Pacific, when the Gemini API resets daily quotas),
else a rate limit (RetryInfo.retryDelay). Translation tables: docs/providers.md.
"""

from __future__ import annotations

import base64
import datetime as dt
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
    ProviderQuotaExhausted,
    ProviderRateLimited,
    ProviderRefused,
    ProviderResult,
    Size,
)
from .limits import parse_duration, retry_after_s
from .registry import BackendSettings

DEFAULT_ENDPOINT = "https://generativelanguage.googleapis.com"
API_VERSION = "v1beta"
PERSON_GENERATION = ("dont_allow", "allow_adult", "allow_all")

# Imagen 4: Size -> (aspectRatio, sampleImageSize). The Fast model renders 1K only.
_IMAGEN_1K = {
    Size(1024, 1024): ("1:1", "1K"),
    Size(896, 1280): ("3:4", "1K"),
    Size(1280, 896): ("4:3", "1K"),
    Size(768, 1408): ("9:16", "1K"),
    Size(1408, 768): ("16:9", "1K"),
}
_IMAGEN_2K = {
    Size(2048, 2048): ("1:1", "2K"),
    Size(1792, 2560): ("3:4", "2K"),
    Size(2560, 1792): ("4:3", "2K"),
    Size(1536, 2816): ("9:16", "2K"),
    Size(2816, 1536): ("16:9", "2K"),
}
IMAGEN_MODELS: dict[str, dict[Size, tuple[str, str]]] = {
    "imagen-4.0-generate-001": {**_IMAGEN_1K, **_IMAGEN_2K},
    "imagen-4.0-ultra-generate-001": {**_IMAGEN_1K, **_IMAGEN_2K},
    "imagen-4.0-fast-generate-001": dict(_IMAGEN_1K),
}
IMAGEN_SIZE_PARAM = {"imagen-4.0-fast-generate-001": False}  # others take sampleImageSize

_PRO_1K = {
    "1:1": (1024, 1024),
    "2:3": (848, 1264),
    "3:2": (1264, 848),
    "3:4": (896, 1200),
    "4:3": (1200, 896),
    "4:5": (928, 1152),
    "5:4": (1152, 928),
    "9:16": (768, 1376),
    "16:9": (1376, 768),
    "21:9": (1584, 672),
}
_FLASH = {
    "1:1": (1024, 1024),
    "2:3": (832, 1248),
    "3:2": (1248, 832),
    "3:4": (864, 1184),
    "4:3": (1184, 864),
    "4:5": (896, 1152),
    "5:4": (1152, 896),
    "9:16": (768, 1344),
    "16:9": (1344, 768),
    "21:9": (1536, 672),
}
# Gemini image models: Size -> (aspectRatio, imageSize or None where the model takes none).
GEMINI_MODELS: dict[str, dict[Size, tuple[str, str | None]]] = {
    "gemini-3-pro-image-preview": {
        Size(w * k, h * k): (ratio, f"{k}K") for k in (1, 2, 4) for ratio, (w, h) in _PRO_1K.items()
    },
    "gemini-2.5-flash-image": {Size(w, h): (ratio, None) for ratio, (w, h) in _FLASH.items()},
}

# The provider's field names, as the client knows them (for `param` in a 400).
_CLIENT_PARAM = {
    "sampleCount": "n",
    "aspectRatio": "size",
    "imageSize": "size",
    "sampleImageSize": "size",
    "imageConfig.aspectRatio": "size",
    "imageConfig.imageSize": "size",
    "personGeneration": "person_generation",
    "seed": "seed",
    "prompt": "prompt",
}
_SAFETY_FINISH = {
    "SAFETY",
    "IMAGE_SAFETY",
    "PROHIBITED_CONTENT",
    "IMAGE_PROHIBITED_CONTENT",
    "BLOCKLIST",
    "SPII",
    "RECITATION",
    "IMAGE_RECITATION",
}


def next_pacific_midnight(now: float) -> float:
    """When the Gemini API's daily quotas reset: the next midnight in America/Los_Angeles
    (PST/PDT by the US rule, so no tz database is needed in the image)."""
    utc = dt.datetime.fromtimestamp(now, dt.UTC)
    local_day = (utc + dt.timedelta(hours=-7 if _us_dst(utc) else -8)).date()
    nxt = local_day + dt.timedelta(days=1)
    midnight = dt.datetime(nxt.year, nxt.month, nxt.day, tzinfo=dt.UTC)
    # Transitions happen at 2 a.m., so midnight has one offset: the one in force then.
    pdt = midnight + dt.timedelta(hours=7)
    return (pdt if _us_dst(pdt) else midnight + dt.timedelta(hours=8)).timestamp()


def _us_dst(utc: dt.datetime) -> bool:
    """US daylight time: from the second Sunday of March 2:00 PST (10:00 UTC) to the
    first Sunday of November 2:00 PDT (09:00 UTC)."""
    year = utc.year

    def sunday(month: int, nth: int) -> dt.datetime:
        first = dt.datetime(year, month, 1, tzinfo=dt.UTC)
        days = (6 - first.weekday()) % 7 + 7 * (nth - 1)
        return first + dt.timedelta(days=days)

    start = sunday(3, 2) + dt.timedelta(hours=10)
    end = sunday(11, 1) + dt.timedelta(hours=9)
    return start <= utc < end


def _error(doc: Any) -> dict[str, Any]:
    err = doc.get("error") if isinstance(doc, dict) else None
    return err if isinstance(err, dict) else {}


def _details(err: Mapping[str, Any], kind: str) -> list[dict[str, Any]]:
    details = err.get("details")
    if not isinstance(details, list):
        return []
    return [d for d in details if isinstance(d, dict) and str(d.get("@type", "")).endswith(kind)]


def raise_for_error(status: int, headers: Mapping[str, str], doc: Any, now: float) -> None:
    """Pure: a Gemini API error answer -> the ProviderFailure it means."""
    err = _error(doc)
    message = str(err.get("message") or "")[:300]
    reasons = {d.get("reason") for d in _details(err, "google.rpc.ErrorInfo")}
    if status in (401, 403) or "API_KEY_INVALID" in reasons:
        # Never pass the provider's message on: it may quote the credential.
        raise ProviderError(
            401 if status == 400 else status,
            f"provider rejected the adapter's credentials ({err.get('status') or status})",
        )
    if status == 429:
        quota_ids = [
            str(v.get("quotaId", ""))
            for d in _details(err, "google.rpc.QuotaFailure")
            for v in d.get("violations", [])
            if isinstance(v, dict)
        ]
        if any("PerDay" in q for q in quota_ids):
            raise ProviderQuotaExhausted(
                "provider daily quota exhausted (RESOURCE_EXHAUSTED)", next_pacific_midnight(now)
            )
        wait: float | None = None
        for d in _details(err, "google.rpc.RetryInfo"):
            wait = parse_duration(str(d.get("retryDelay", "")))
        if wait is None:
            wait = retry_after_s(headers, now)
        raise ProviderRateLimited("provider rate limit reached (RESOURCE_EXHAUSTED)", wait or 5.0)
    if 400 <= status < 500 and status != 404:
        fields = [
            str(v.get("field", ""))
            for d in _details(err, "google.rpc.BadRequest")
            for v in d.get("fieldViolations", [])
            if isinstance(v, dict)
        ]
        param = next((_CLIENT_PARAM[f] for f in fields if f in _CLIENT_PARAM), None)
        raise ProviderError(400, f"provider rejected the request: {message}", param)
    raise ProviderError(status, f"provider error HTTP {status}: {message[:200]}")


def parse_predict(doc: Any) -> ProviderResult:
    """Pure: an Imagen :predict answer -> images; all filtered -> ProviderRefused."""
    if not isinstance(doc, dict):
        raise ProviderError(502, "provider answered 200 without a JSON object")
    predictions = doc.get("predictions", [])
    if not isinstance(predictions, list):
        raise ProviderError(502, "provider answered 200 with predictions not a list")
    images: list[ProviderImage] = []
    reasons: list[str] = []
    for p in predictions:
        if not isinstance(p, dict):
            continue
        if p.get("bytesBase64Encoded"):
            images.append(ProviderImage(b64_json=str(p["bytesBase64Encoded"])))
        elif p.get("raiFilteredReason"):
            reasons.append(str(p["raiFilteredReason"]))
    if not images:
        # No predictions at all is how the service answers when its filters removed
        # every image and the reason was not asked for.
        why = f": {reasons[0][:200]}" if reasons else ""
        raise ProviderRefused(f"the provider's safety filter removed every image{why}")
    return ProviderResult(tuple(images))


def parse_generate(doc: Any, seed: int | None) -> ProviderResult:
    """Pure: a :generateContent answer -> its final (non-thought) images."""
    if not isinstance(doc, dict):
        raise ProviderError(502, "provider answered 200 without a JSON object")
    feedback = doc.get("promptFeedback")
    if isinstance(feedback, dict) and feedback.get("blockReason"):
        raise ProviderRefused(
            f"the provider's safety system blocked the prompt ({feedback['blockReason']})"
        )
    candidates = doc.get("candidates")
    if not isinstance(candidates, list) or not candidates or not isinstance(candidates[0], dict):
        raise ProviderError(502, "provider answered 200 without candidates")
    cand = candidates[0]
    finish = str(cand.get("finishReason") or "")
    content = cand.get("content")
    parts = content.get("parts") if isinstance(content, dict) else None
    images: list[ProviderImage] = []
    for part in parts if isinstance(parts, list) else []:
        if not isinstance(part, dict) or part.get("thought"):
            continue
        blob = part.get("inlineData") or part.get("inline_data")
        if isinstance(blob, dict) and str(
            blob.get("mimeType", blob.get("mime_type", ""))
        ).startswith("image/"):
            images.append(ProviderImage(b64_json=str(blob.get("data", "")), seed=seed))
    if images:
        return ProviderResult(tuple(images))
    if finish in _SAFETY_FINISH:
        raise ProviderRefused(f"the provider's safety system withheld the image ({finish})")
    raise ProviderError(
        502, f"provider answered without an image (finishReason {finish or 'none'})"
    )


@dataclass
class _GoogleBackend:
    name: str
    model: str
    capabilities: Capabilities
    provider: str = "google"
    default_endpoint: str = DEFAULT_ENDPOINT

    def _url(self, ctx: ProviderContext, method: str) -> str:
        return f"{ctx.endpoint or self.default_endpoint}/{API_VERSION}/models/{self.model}:{method}"

    async def _post(
        self, ctx: ProviderContext, method: str, body: dict[str, Any]
    ) -> tuple[int, Mapping[str, str], Any]:
        timeout = aiohttp.ClientTimeout(total=ctx.timeout_s)
        try:
            async with ctx.session.post(
                self._url(ctx, method),
                json=body,
                headers={"x-goog-api-key": ctx.api_key},
                timeout=timeout,
            ) as resp:
                try:
                    doc = await resp.json(content_type=None)
                except ValueError:
                    doc = None
                return resp.status, resp.headers, doc
        except TimeoutError as exc:
            raise ProviderError(0, f"provider did not answer within {ctx.timeout_s:g}s") from exc
        except aiohttp.ClientError as exc:
            raise ProviderError(0, f"cannot reach provider: {type(exc).__name__}") from exc


def _no_negative_prompt(req: HostedRequest, model: str) -> None:
    if req.negative_prompt:
        raise ProviderError(
            400, f"{model} takes no negative prompt through the Gemini API", "negative_prompt"
        )


@dataclass
class GeminiImagen(_GoogleBackend):
    """Imagen 4 through `:predict`: up to 4 images a call, no seed (the Gemini API
    takes none for Imagen), no edits."""

    def predict_body(self, req: HostedRequest) -> dict[str, Any]:
        _no_negative_prompt(req, self.model)
        ratio, image_size = IMAGEN_MODELS[self.model][req.size]
        params: dict[str, Any] = {
            "sampleCount": req.n,
            "aspectRatio": ratio,
            "includeRaiReason": True,
        }
        if IMAGEN_SIZE_PARAM.get(self.model, True):
            # :predict names it sampleImageSize (the SDKs' image_size maps to it).
            params["sampleImageSize"] = image_size
        person = req.extra.get("person_generation")
        if person is not None:
            if person not in PERSON_GENERATION:
                raise ProviderError(
                    400,
                    f"person_generation must be one of {', '.join(PERSON_GENERATION)}",
                    "person_generation",
                )
            params["personGeneration"] = person
        return {"instances": [{"prompt": req.prompt}], "parameters": params}

    async def generate(self, req: HostedRequest, ctx: ProviderContext) -> ProviderResult:
        status, headers, doc = await self._post(ctx, "predict", self.predict_body(req))
        if status != 200:
            raise_for_error(status, headers, doc, time.time())
        return parse_predict(doc)

    async def edit(self, req: HostedRequest, ctx: ProviderContext) -> ProviderResult:
        raise EditsUnsupported(f"{self.model} does not support image edits through the Gemini API")


@dataclass
class GeminiImage(_GoogleBackend):
    """Gemini image models through `:generateContent`: one image a call, a seed in
    generationConfig, edits as input images in the same request (no mask)."""

    def content_body(self, req: HostedRequest) -> dict[str, Any]:
        _no_negative_prompt(req, self.model)
        ratio, image_size = GEMINI_MODELS[self.model][req.size]
        parts: list[dict[str, Any]] = [{"text": req.prompt}]
        if req.edit is not None:
            if req.edit.mask is not None:
                raise ProviderError(400, f"{self.model} takes no mask; describe the edit", "mask")
            for _name, data, ctype in req.edit.images:
                parts.append(
                    {"inlineData": {"mimeType": ctype, "data": base64.b64encode(data).decode()}}
                )
        image_config: dict[str, Any] = {"aspectRatio": ratio}
        if image_size is not None:
            image_config["imageSize"] = image_size
        config: dict[str, Any] = {
            "responseModalities": ["TEXT", "IMAGE"],
            "imageConfig": image_config,
        }
        if req.seed is not None:
            config["seed"] = req.seed
        return {"contents": [{"role": "user", "parts": parts}], "generationConfig": config}

    async def generate(self, req: HostedRequest, ctx: ProviderContext) -> ProviderResult:
        status, headers, doc = await self._post(ctx, "generateContent", self.content_body(req))
        if status != 200:
            raise_for_error(status, headers, doc, time.time())
        return parse_generate(doc, req.seed)

    async def edit(self, req: HostedRequest, ctx: ProviderContext) -> ProviderResult:
        if req.edit is None:
            raise EditsUnsupported("an edit needs an input image")
        return await self.generate(req, ctx)


def _sizes(table: Mapping[Size, Any]) -> tuple[Size, ...]:
    return tuple(sorted(table, key=lambda s: (s.width * s.height, s.width)))


def _default_size(table: Mapping[Size, tuple[str, str | None]], image_size: Any) -> Size:
    """The square at the pool's default `image_size` (PROVIDER_DEFAULTS), else 1024x1024:
    the size a request without one gets."""
    if image_size is None:
        return Size(1024, 1024)
    for size, (ratio, made) in table.items():
        if ratio == "1:1" and (made or "1K") == image_size:
            return size
    offered = sorted({made or "1K" for _, made in table.values()})
    raise ValueError(
        f"default image_size {image_size!r} is not one this model makes ({', '.join(offered)})"
    )


def imagen_capabilities(model: str, image_size: Any = None) -> Capabilities:
    table = IMAGEN_MODELS[model]
    return Capabilities(
        sizes=_sizes(table),
        default_size=_default_size(table, image_size),
        max_n=4,
        seed=False,
        edits=False,
        max_prompt_chars=1900,  # 480 tokens
    )


def gemini_capabilities(model: str, image_size: Any = None) -> Capabilities:
    table = GEMINI_MODELS[model]
    return Capabilities(
        sizes=_sizes(table),
        default_size=_default_size(table, image_size),
        max_n=1,
        seed=True,
        edits=True,
        max_prompt_chars=32000,
    )


def _known(model: str, table: Mapping[str, Any], backend: str) -> None:
    if model not in table:
        raise ValueError(
            f"{backend} backend: unknown provider model {model!r} (one of {', '.join(table)})"
        )


def make_imagen(settings: BackendSettings) -> GeminiImagen:
    _known(settings.provider_model, IMAGEN_MODELS, "gemini-imagen")
    model = settings.provider_model
    caps = imagen_capabilities(model, settings.defaults.get("image_size"))
    return GeminiImagen("gemini-imagen", model, caps)


def make_gemini(settings: BackendSettings) -> GeminiImage:
    _known(settings.provider_model, GEMINI_MODELS, "gemini")
    model = settings.provider_model
    caps = gemini_capabilities(model, settings.defaults.get("image_size"))
    return GeminiImage("gemini", model, caps)
