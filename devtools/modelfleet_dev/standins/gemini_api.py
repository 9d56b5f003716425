"""A strict local stand-in for the Gemini API's image generation
(https://generativelanguage.googleapis.com), as published at
https://ai.google.dev/gemini-api/docs/imagen and .../docs/image-generation:

- `POST /v1beta/models/{imagen model}:predict` (Imagen): `{"instances": [{"prompt"}],
  "parameters": {"sampleCount" 1-4, "aspectRatio", "sampleImageSize" 1K|2K (not on the Fast
  model), "personGeneration", ...}}` -> `{"predictions": [{"bytesBase64Encoded",
  "mimeType"}]}`; filtered images are `{"raiFilteredReason"}` entries when
  `includeRaiReason` is set, else left out. The Gemini API takes no seed, negativePrompt
  or addWatermark for Imagen 4 (400 here, as from the service).
- `POST /v1beta/models/{gemini image model}:generateContent`: `contents` of `parts`,
  `generationConfig.responseModalities` with IMAGE and `imageConfig {aspectRatio,
  imageSize}` -> candidates whose parts hold `inlineData {mimeType, data}` (after a
  text part; the 3 Pro model also sends a thought image, `"thought": true`, first).
  A blocked prompt answers `promptFeedback.blockReason` and no candidates; a filtered
  image a candidate with `finishReason: IMAGE_SAFETY` and no content.

Auth: header `x-goog-api-key` (or `?key=`); none: 403 PERMISSION_DENIED, a wrong one:
400 INVALID_ARGUMENT API_KEY_INVALID. Unknown fields: 400 INVALID_ARGUMENT naming them
(generateContent bodies are protos: camelCase and snake_case names both parse).
Errors are `{"error": {"code", "message", "status", "details"}}`; a per-minute limit
(fault `rate_limit`) and a daily quota (fault `quota`) are both 429 RESOURCE_EXHAUSTED,
told apart by the QuotaFailure's quotaId, with a RetryInfo retryDelay.

Run: `python -m modelfleet_dev.standins.gemini_api --port 8091 --key-file KEY`."""

from __future__ import annotations

import base64
import json
import re
import uuid
from typing import Any

from aiohttp import web

from modelfleet_dev.standins.common import Call, Fault, StandIn, main, png, random_seed

# Imagen 4 output pixels per (aspectRatio, sampleImageSize) (Vertex AI Imagen model docs).
IMAGEN_SIZES: dict[tuple[str, str], tuple[int, int]] = {
    ("1:1", "1K"): (1024, 1024),
    ("3:4", "1K"): (896, 1280),
    ("4:3", "1K"): (1280, 896),
    ("9:16", "1K"): (768, 1408),
    ("16:9", "1K"): (1408, 768),
    ("1:1", "2K"): (2048, 2048),
    ("3:4", "2K"): (1792, 2560),
    ("4:3", "2K"): (2560, 1792),
    ("9:16", "2K"): (1536, 2816),
    ("16:9", "2K"): (2816, 1536),
}
IMAGEN_MODELS = {  # model -> takes sampleImageSize
    "imagen-4.0-generate-001": True,
    "imagen-4.0-ultra-generate-001": True,
    "imagen-4.0-fast-generate-001": False,
}
_RATIOS_1K = {  # Gemini 3 Pro Image at 1K; 2K and 4K are 2x and 4x
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
GEMINI_SIZES: dict[str, dict[tuple[str, str], tuple[int, int]]] = {
    "gemini-3-pro-image-preview": {
        (ratio, f"{k}K"): (w * k, h * k) for ratio, (w, h) in _RATIOS_1K.items() for k in (1, 2, 4)
    },
    "gemini-2.5-flash-image": {  # 1K only: imageSize is not taken
        (ratio, "1K"): size
        for ratio, size in {
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
        }.items()
    },
}
PERSON_GENERATION = ("dont_allow", "allow_adult", "allow_all")
RAI_REASON = (
    "Unable to show generated images. All images were filtered out because they violated "
    "Google's Responsible AI practices. Try rephrasing the prompt."
)


class GeminiBadRequest(Exception):
    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _fields(obj: Any, where: str, allowed: dict[str, type | tuple[type, ...]]) -> dict[str, Any]:
    """A proto message's fields by their camelCase name, rejecting unknown names and
    wrong JSON types as the service's JSON parser does."""
    if not isinstance(obj, dict):
        raise GeminiBadRequest(
            f"Invalid JSON payload received. Expected an object at '{where}'.", where
        )
    by_snake = {_snake(k): k for k in allowed}
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = key if key in allowed else by_snake.get(key)
        if name is None:
            at = f" at '{where}'" if where else ""
            raise GeminiBadRequest(
                f'Invalid JSON payload received. Unknown name "{key}"{at}: Cannot find field.',
                f"{where}.{key}" if where else key,
            )
        kind = allowed[name]
        ok = isinstance(value, kind) and not (
            isinstance(value, bool) and kind in (int, float, (int, float))
        )
        if not ok:
            raise GeminiBadRequest(
                f"Invalid value at '{where + '.' if where else ''}{_snake(name)}' "
                f"({type(value).__name__}): {json.dumps(value)}",
                name,
            )
        out[name] = value
    return out


class GeminiStandIn(StandIn):
    def __init__(self, api_key: str, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(api_key, host, port)
        self.model_version_suffix = ""

    def routes(self, app: web.Application) -> None:
        for version in ("v1beta", "v1"):
            app.router.add_post(f"/{version}/models/{{target}}", self._handle)

    # -- shared --------------------------------------------------------------------

    @staticmethod
    def error(
        code: int, status: str, message: str, details: list[dict[str, Any]] | None = None
    ) -> web.Response:
        err: dict[str, Any] = {"code": code, "message": message, "status": status}
        if details:
            err["details"] = details
        return web.json_response({"error": err}, status=code)

    def _auth_error(self, request: web.Request) -> web.Response | None:
        key = request.headers.get("x-goog-api-key") or request.query.get("key")
        if not key:
            return self.error(
                403,
                "PERMISSION_DENIED",
                "Method doesn't allow unregistered callers (callers without established "
                "identity). Please use API Key or other form of API consumer identity to "
                "call this API.",
            )
        if key != self.api_key:
            return self.error(
                400,
                "INVALID_ARGUMENT",
                "API key not valid. Please pass a valid API key.",
                [
                    {
                        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": "API_KEY_INVALID",
                        "domain": "googleapis.com",
                        "metadata": {"service": "generativelanguage.googleapis.com"},
                    }
                ],
            )
        return None

    def _limit(self, fault: Fault, method: str) -> web.Response:
        """429 RESOURCE_EXHAUSTED: per minute (`rate_limit`) or per day (`quota`)."""
        daily = fault.kind == "quota"
        # The service's quota ids, e.g. GenerateRequestsPerDayPerProjectPerModel-FreeTier.
        prefix = "Predict" if method == "predict" else "Generate"
        per = "Day" if daily else "Minute"
        quota_id = f"{prefix}RequestsPer{per}PerProjectPerModel-FreeTier"
        message = (
            "You exceeded your current quota, please check your plan and billing details. "
            f"Quota exceeded for metric: {quota_id}. Please retry in "
            f"{fault.retry_after_s:.3f}s."
        )
        return self.error(
            429,
            "RESOURCE_EXHAUSTED",
            message,
            [
                {
                    "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                    "violations": [
                        {
                            "quotaMetric": "generativelanguage.googleapis.com/"
                            + (
                                "generate_requests_per_model_per_day"
                                if daily
                                else "generate_requests_per_model"
                            ),
                            "quotaId": quota_id,
                            "quotaDimensions": {"location": "global"},
                        }
                    ],
                },
                {
                    "@type": "type.googleapis.com/google.rpc.RetryInfo",
                    "retryDelay": f"{fault.retry_after_s:g}s",
                },
            ],
        )

    def _server_error(self, fault: Fault) -> web.Response:
        if fault.status == 503:
            return self.error(
                503, "UNAVAILABLE", "The model is overloaded. Please try again later."
            )
        return self.error(
            fault.status,
            "INTERNAL",
            "An internal error has occurred. Please retry or report in "
            "https://developers.generativeai.google/guide/troubleshooting",
        )

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        target = request.match_info["target"]
        model, _, method = target.partition(":")
        call = Call(path=request.path, fields={})

        async def answer() -> web.StreamResponse:
            denied = self._auth_error(request)
            if denied is not None:
                return denied
            if method not in ("predict", "generateContent"):
                return self.error(404, "NOT_FOUND", f"Method {method!r} not found.")
            known = IMAGEN_MODELS if method == "predict" else GEMINI_SIZES
            if model not in known:
                return self.error(
                    404,
                    "NOT_FOUND",
                    f"models/{model} is not found for API version "
                    f"{request.path.split('/')[1]}, or is not supported for {method}. "
                    "Call ListModels to see the list of available models and their "
                    "supported methods.",
                )
            try:
                body = await request.json()
            except (json.JSONDecodeError, UnicodeDecodeError):
                return self.error(
                    400, "INVALID_ARGUMENT", "Invalid JSON payload received. Unexpected token."
                )
            try:
                if method == "predict":
                    parsed = self._parse_predict(model, body)
                else:
                    parsed = self._parse_generate(model, body)
            except GeminiBadRequest as exc:
                call.fields = {"invalid": exc.field}
                return self.error(
                    400,
                    "INVALID_ARGUMENT",
                    exc.message,
                    [
                        {
                            "@type": "type.googleapis.com/google.rpc.BadRequest",
                            "fieldViolations": [
                                {"field": exc.field or "", "description": exc.message}
                            ],
                        }
                    ],
                )
            call.fields = parsed
            fault = self.take_fault(model=model)
            await self.delay(fault)
            if fault is not None and fault.kind in ("rate_limit", "quota"):
                return self._limit(fault, method)
            if fault is not None and fault.kind == "error":
                return self._server_error(fault)
            if method == "predict":
                return self._predict(model, parsed, fault)
            return self._generate(model, parsed, fault)

        return await self.tracked(call, answer)

    # -- Imagen :predict ----------------------------------------------------------

    def _parse_predict(self, model: str, body: Any) -> dict[str, Any]:
        top = _fields(body, "", {"instances": list, "parameters": dict})
        instances = top.get("instances")
        if not instances:
            raise GeminiBadRequest("* instances: field is required.", "instances")
        if len(instances) != 1:
            raise GeminiBadRequest("Only one instance is supported per request.", "instances")
        inst = _fields(instances[0], "instances[0]", {"prompt": str})
        prompt = inst.get("prompt", "")
        if not prompt.strip():
            raise GeminiBadRequest("* instances[0].prompt: field is required.", "prompt")
        params = _fields(
            top.get("parameters", {}),
            "parameters",
            {
                "sampleCount": int,
                "aspectRatio": str,
                "sampleImageSize": str,
                "personGeneration": str,
                "includeRaiReason": bool,
                "includeSafetyAttributes": bool,
                "outputOptions": dict,
                "language": str,
                "safetySetting": str,
            },
        )
        n = params.get("sampleCount", 4)
        if not 1 <= n <= 4:
            raise GeminiBadRequest(
                f"sampleCount must be between 1 and 4 (inclusive), got {n}.", "sampleCount"
            )
        ratio = params.get("aspectRatio", "1:1")
        ratios = sorted({r for r, _ in IMAGEN_SIZES})
        if ratio not in ratios:
            raise GeminiBadRequest(
                f"Unsupported aspect ratio {ratio!r}; supported: {', '.join(ratios)}.",
                "aspectRatio",
            )
        size = params.get("sampleImageSize")
        if size is not None:
            if not IMAGEN_MODELS[model]:
                raise GeminiBadRequest(
                    f"sampleImageSize is not supported for {model}.", "sampleImageSize"
                )
            if size not in ("1K", "2K"):
                raise GeminiBadRequest(
                    f"Unsupported image size {size!r}; supported: 1K, 2K.", "sampleImageSize"
                )
        person = params.get("personGeneration")
        if person is not None and person not in PERSON_GENERATION:
            raise GeminiBadRequest(
                f"personGeneration must be one of {', '.join(PERSON_GENERATION)}.",
                "personGeneration",
            )
        mime = _fields(
            params.get("outputOptions", {}),
            "parameters.outputOptions",
            {"mimeType": str, "compressionQuality": int},
        ).get("mimeType", "image/png")
        if mime != "image/png":
            raise GeminiBadRequest("This stand-in draws image/png only.", "outputOptions")
        return {
            "prompt": prompt,
            "sampleCount": n,
            "aspectRatio": ratio,
            "sampleImageSize": size or "1K",
            "personGeneration": person,
            "includeRaiReason": params.get("includeRaiReason", False),
        }

    def _predict(self, model: str, req: dict[str, Any], fault: Fault | None) -> web.Response:
        width, height = IMAGEN_SIZES[(req["aspectRatio"], req["sampleImageSize"])]
        refused = (fault is not None and fault.kind == "refuse") or self.blocked(req["prompt"])
        predictions: list[dict[str, Any]] = []
        for i in range(req["sampleCount"]):
            filtered = refused or (i == 0 and fault is not None and fault.kind == "unsafe")
            if filtered:
                if req["includeRaiReason"]:
                    predictions.append({"raiFilteredReason": RAI_REASON})
                continue
            data = png(width, height, random_seed())
            predictions.append(
                {"mimeType": "image/png", "bytesBase64Encoded": base64.b64encode(data).decode()}
            )
        # With everything filtered and no includeRaiReason the service answers `{}`.
        return web.json_response({"predictions": predictions} if predictions else {})

    # -- Gemini :generateContent --------------------------------------------------

    def _parse_generate(self, model: str, body: Any) -> dict[str, Any]:
        top = _fields(
            body,
            "",
            {
                "contents": list,
                "generationConfig": dict,
                "safetySettings": list,
                "systemInstruction": dict,
                "tools": list,
                "toolConfig": dict,
                "cachedContent": str,
            },
        )
        contents = top.get("contents")
        if not contents:
            raise GeminiBadRequest(
                "* GenerateContentRequest.contents: contents is not specified", "contents"
            )
        texts: list[str] = []
        images_in = 0
        for i, content in enumerate(contents):
            c = _fields(content, f"contents[{i}]", {"role": str, "parts": list})
            if c.get("role", "user") not in ("user", "model"):
                raise GeminiBadRequest(
                    "Please use a valid role: user, model.", f"contents[{i}].role"
                )
            if not c.get("parts"):
                raise GeminiBadRequest(
                    f"* GenerateContentRequest.contents[{i}].parts: contents.parts must not be empty.",
                    f"contents[{i}].parts",
                )
            for j, part in enumerate(c["parts"]):
                p = _fields(
                    part,
                    f"contents[{i}].parts[{j}]",
                    {"text": str, "inlineData": dict, "fileData": dict, "thoughtSignature": str},
                )
                if "text" in p:
                    texts.append(p["text"])
                if "inlineData" in p:
                    images_in += 1
                    blob = _fields(
                        p["inlineData"],
                        f"contents[{i}].parts[{j}].inline_data",
                        {"mimeType": str, "data": str},
                    )
                    try:
                        base64.b64decode(blob.get("data", ""), validate=True)
                    except ValueError as exc:
                        raise GeminiBadRequest(
                            "Invalid value at 'contents.parts.inline_data.data' (TYPE_BYTES), "
                            "Base64 decoding failed",
                            "inlineData.data",
                        ) from exc
        config = _fields(
            top.get("generationConfig", {}),
            "generation_config",
            {
                "responseModalities": list,
                "imageConfig": dict,
                "candidateCount": int,
                "seed": int,
                "temperature": (int, float),
                "topP": (int, float),
                "topK": int,
                "maxOutputTokens": int,
                "stopSequences": list,
                "responseMimeType": str,
                "thinkingConfig": dict,
            },
        )
        modalities = config.get("responseModalities", ["TEXT"])
        for m in modalities:
            if m not in ("TEXT", "IMAGE"):
                raise GeminiBadRequest(
                    f"Invalid value at 'generation_config.response_modalities' (type.googleapis.com/"
                    f"google.ai.generativelanguage.v1beta.GenerationConfig.Modality), {json.dumps(m)}",
                    "responseModalities",
                )
        if config.get("candidateCount", 1) != 1:
            raise GeminiBadRequest(
                f"Multiple candidates is not enabled for models/{model}", "candidateCount"
            )
        image = _fields(
            config.get("imageConfig", {}),
            "generation_config.image_config",
            {"aspectRatio": str, "imageSize": str},
        )
        sizes = GEMINI_SIZES[model]
        ratio = image.get("aspectRatio", "1:1")
        ratios = sorted({r for r, _ in sizes})
        if ratio not in ratios:
            raise GeminiBadRequest(
                f"Unsupported aspect ratio {ratio!r}; supported: {', '.join(ratios)}.",
                "imageConfig.aspectRatio",
            )
        size = image.get("imageSize")
        allowed = sorted({s for _, s in sizes})
        if size is not None and (len(allowed) == 1 or size not in allowed):
            raise GeminiBadRequest(
                f"imageSize {size!r} is not supported for {model}"
                + (f"; supported: {', '.join(allowed)}." if len(allowed) > 1 else "."),
                "imageConfig.imageSize",
            )
        seed = config.get("seed")
        return {
            "prompt": "\n".join(texts),
            "responseModalities": modalities,
            "aspectRatio": ratio,
            "imageSize": size or "1K",
            "seed": seed,
            "imagesIn": images_in,  # input images: an edit
        }

    def _generate(self, model: str, req: dict[str, Any], fault: Fault | None) -> web.Response:
        usage = {"promptTokenCount": 12, "candidatesTokenCount": 1290, "totalTokenCount": 1302}
        base: dict[str, Any] = {
            "usageMetadata": usage,
            "modelVersion": model,
            "responseId": uuid.uuid4().hex[:22],
        }
        if self.blocked(req["prompt"]):
            return web.json_response(
                {"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}, **base}
            )
        if fault is not None and fault.kind in ("refuse", "unsafe"):
            return web.json_response(
                {"candidates": [{"finishReason": "IMAGE_SAFETY", "index": 0}], **base}
            )
        parts: list[dict[str, Any]] = []
        if "IMAGE" in req["responseModalities"]:
            width, height = GEMINI_SIZES[model][(req["aspectRatio"], req["imageSize"])]
            seed = req["seed"] if req["seed"] is not None else random_seed()
            if model.startswith("gemini-3"):
                # An interim thought image: clients must use only the final, non-thought one.
                parts.append(
                    {
                        "inlineData": {
                            "mimeType": "image/png",
                            "data": base64.b64encode(png(64, 64, seed + 1)).decode(),
                        },
                        "thought": True,
                    }
                )
            parts.append({"text": "Here is the image you asked for."})
            parts.append(
                {
                    "inlineData": {
                        "mimeType": "image/png",
                        "data": base64.b64encode(png(width, height, seed)).decode(),
                    },
                    **(
                        {"thoughtSignature": "c2lnbmF0dXJl"} if model.startswith("gemini-3") else {}
                    ),
                }
            )
        else:
            parts.append({"text": "I can describe it: " + req["prompt"][:80]})
        return web.json_response(
            {
                "candidates": [
                    {
                        "content": {"parts": parts, "role": "model"},
                        "finishReason": "STOP",
                        "index": 0,
                    }
                ],
                **base,
            }
        )


if __name__ == "__main__":
    main(GeminiStandIn, "Gemini API stand-in (Imagen :predict, Gemini :generateContent)")
