"""A strict local stand-in for the OpenAI Images API (https://api.openai.com/v1), as
published at https://platform.openai.com/docs/api-reference/images:

- `POST /v1/images/generations` (JSON): `prompt` (required), `model` (gpt-image-1,
  gpt-image-1-mini, dall-e-3, dall-e-2), `n` (1-10; dall-e-3 only 1), `size` (per model,
  or `auto` on gpt-image-*), `quality` (gpt-image-*: low|medium|high|auto; dall-e-3:
  standard|hd; dall-e-2: standard), `response_format` (url|b64_json, dall-e-* only;
  default url; gpt-image-* always answer b64_json), `style` (dall-e-3), `user`, and on
  gpt-image-* `background`, `moderation`, `output_format`, `output_compression`.
- `POST /v1/images/edits` (multipart): `image` (or `image[]` repeated, gpt-image-*),
  `mask`, `prompt`, `model` (gpt-image-*, dall-e-2), `n`, `size`, `quality`,
  `response_format` (dall-e-2), `user`, `background`, `output_format`.
- Answer: `{"created", "data": [{"b64_json" | "url", "revised_prompt"? (dall-e-3)}]}`,
  gpt-image-* adding `background`, `output_format`, `quality`, `size`, `usage`.
  URLs are served by the stand-in itself under `/_standin/images/`.

Auth: `Authorization: Bearer KEY`; none or a wrong one: 401 (a wrong key's message
quotes it masked, as the service does). Unknown fields: 400 `unknown_parameter`,
mistyped: `invalid_type`, a value out of range: `invalid_value`, all
`{"error": {"message", "type", "param", "code"}}`. Faults (see `common`): `rate_limit`
429 `rate_limit_exceeded` with `retry-after` and exhausted `x-ratelimit-*` headers,
`quota` 429 `insufficient_quota`, `refuse` 400 `content_policy_violation` (dall-e) or
`moderation_blocked` (gpt-image), `error` 5xx `server_error`, `slow`, `slow_url`.

Run: `python -m modelfleet_dev.standins.openai_images --port 8090 --key-file KEY`."""

from __future__ import annotations

import asyncio
import base64
import functools
import time
import uuid
from typing import Any

from aiohttp import BodyPartReader, web

from modelfleet_dev.standins.common import Call, Fault, StandIn, main, png, random_seed

_GPT_SIZES = ("1024x1024", "1536x1024", "1024x1536", "auto")
MODELS: dict[str, dict[str, Any]] = {
    "gpt-image-1": {"sizes": _GPT_SIZES, "qualities": ("low", "medium", "high", "auto")},
    "gpt-image-1-mini": {"sizes": _GPT_SIZES, "qualities": ("low", "medium", "high", "auto")},
    "dall-e-3": {"sizes": ("1024x1024", "1792x1024", "1024x1792"), "qualities": ("standard", "hd")},
    "dall-e-2": {"sizes": ("256x256", "512x512", "1024x1024"), "qualities": ("standard",)},
}
_COMMON = {"prompt": str, "model": str, "n": int, "size": str, "quality": str, "user": str}
_GPT_ONLY = {
    "background": str,
    "moderation": str,
    "output_format": str,
    "output_compression": int,
    "partial_images": int,
    "stream": bool,
}
_ENUMS = {
    "background": ("transparent", "opaque", "auto"),
    "moderation": ("low", "auto"),
    "output_format": ("png", "jpeg", "webp"),
    "style": ("vivid", "natural"),
    "response_format": ("url", "b64_json"),
}
_TYPE_NAMES = {str: "a string", int: "an integer", bool: "a boolean"}


class InvalidRequest(Exception):
    def __init__(self, message: str, param: str | None, code: str) -> None:
        super().__init__(message)
        self.message, self.param, self.code = message, param, code


@functools.lru_cache(maxsize=64)
def _image(width: int, height: int, seed: int) -> bytes:
    return png(width, height, seed)


def allowed_fields(model: str, edit: bool) -> dict[str, type]:
    fields = dict(_COMMON)
    if model.startswith("gpt-image-"):
        fields.update(_GPT_ONLY)
        if edit:
            fields["input_fidelity"] = str
    else:
        fields["response_format"] = str
        if model == "dall-e-3":
            fields["style"] = str
    return fields


def validate(body: Any, edit: bool = False) -> dict[str, Any]:
    """The request's fields, checked as the service checks them (pure)."""
    if not isinstance(body, dict):
        raise InvalidRequest("We could not parse the JSON body of your request.", None, "")
    model = body.get("model", "dall-e-2")
    if not isinstance(model, str) or model not in MODELS or (edit and model == "dall-e-3"):
        raise InvalidRequest(f"Invalid value for 'model' = {model}.", "model", "invalid_value")
    fields = allowed_fields(model, edit)
    for name, value in body.items():
        if name not in fields:
            raise InvalidRequest(f"Unknown parameter: '{name}'.", name, "unknown_parameter")
        want = fields[name]
        ok = isinstance(value, want) and (want is bool or not isinstance(value, bool))
        if value is not None and not ok:
            got = type(value).__name__.replace("str", "string").replace("int", "integer")
            raise InvalidRequest(
                f"Invalid type for '{name}': expected {_TYPE_NAMES[want]}, but got {got} instead.",
                name,
                "invalid_type",
            )
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise InvalidRequest(
            "Missing required parameter: 'prompt'.", "prompt", "missing_required_parameter"
        )
    spec = MODELS[model]
    n = body.get("n", 1)
    top = 1 if model == "dall-e-3" else 10
    if n is not None and not 1 <= n <= top:
        raise InvalidRequest(
            f"Invalid 'n': integer {'must be 1 for dall-e-3' if top == 1 else 'between 1 and 10'}.",
            "n",
            "invalid_value",
        )
    size = body.get("size") or ("auto" if model.startswith("gpt-image-") else "1024x1024")
    if size not in spec["sizes"]:
        supported = ", ".join(f"'{s}'" for s in spec["sizes"])
        raise InvalidRequest(
            f"Invalid value: '{size}'. Supported values are: {supported}.", "size", "invalid_value"
        )
    quality = body.get("quality")
    if quality is not None and quality not in spec["qualities"]:
        supported = ", ".join(f"'{q}'" for q in spec["qualities"])
        raise InvalidRequest(
            f"Invalid value: '{quality}'. Supported values are: {supported}.",
            "quality",
            "invalid_value",
        )
    for name, values in _ENUMS.items():
        if body.get(name) is not None and body[name] not in values:
            supported = ", ".join(f"'{v}'" for v in values)
            raise InvalidRequest(
                f"Invalid value: '{body[name]}'. Supported values are: {supported}.",
                name,
                "invalid_value",
            )
    return {**body, "model": model, "n": n or 1, "size": size}


class OpenAIImagesStandIn(StandIn):
    def __init__(self, api_key: str, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(api_key, host, port)
        self.images: dict[str, bytes] = {}  # URL id -> PNG
        # Requests left in the rate-limit window (None: unlimited); every answer then says
        # so in x-ratelimit-* headers, as the service's do, and 0 left answers 429.
        self.budget: int | None = None
        self.budget_reset_s = 60.0

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/images/generations", self._generations)
        app.router.add_post("/v1/images/edits", self._edits)
        app.router.add_get("/_standin/images/{id}", self._image)

    @staticmethod
    def error(
        status: int, message: str, kind: str, param: str | None = None, code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> web.Response:  # fmt: skip
        return web.json_response(
            {"error": {"message": message, "type": kind, "param": param, "code": code}},
            status=status,
            headers=headers,
        )

    def _auth_error(self, request: web.Request) -> web.Response | None:
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or not auth[7:].strip():
            return self.error(
                401,
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                "invalid_request_error",
            )
        key = auth[7:].strip()
        if key != self.api_key:
            masked = key[:3] + "*" * max(0, len(key) - 7) + key[-4:]
            return self.error(
                401,
                f"Incorrect API key provided: {masked}. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
                "invalid_request_error",
                code="invalid_api_key",
            )
        return None

    async def _generations(self, request: web.Request) -> web.StreamResponse:
        try:
            body: Any = await request.json()
        except ValueError:
            body = None
        call = Call(request.path, body if isinstance(body, dict) else {})

        async def answer() -> web.StreamResponse:
            return await self._answer(request, body, edit=False)

        return await self.tracked(call, answer)

    async def _edits(self, request: web.Request) -> web.StreamResponse:
        fields: dict[str, Any] = {}
        files: dict[str, list[bytes]] = {}
        bad: web.Response | None = None
        if not request.content_type.startswith("multipart/form-data"):
            bad = self.error(400, "Edits take multipart/form-data.", "invalid_request_error")
        else:
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                if not isinstance(part, BodyPartReader):
                    continue
                name = part.name or ""
                if part.filename is not None:
                    files.setdefault(name, []).append(bytes(await part.read()))
                elif name in ("n", "output_compression", "partial_images"):
                    text = (await part.text()).strip()
                    fields[name] = int(text) if text.lstrip("-").isdigit() else text
                else:
                    fields[name] = await part.text()
        call = Call(request.path, {**fields, "files": {k: len(v) for k, v in files.items()}})

        async def answer() -> web.StreamResponse:
            if bad is not None:
                return bad
            image = files.get("image") or files.get("image[]")
            if not image:
                return self.error(
                    400, "Missing required parameter: 'image'.", "invalid_request_error",
                    "image", "missing_required_parameter",
                )  # fmt: skip
            if any(name not in ("image", "image[]", "mask") for name in files):
                name = next(n for n in files if n not in ("image", "image[]", "mask"))
                return self.error(
                    400, f"Unknown parameter: '{name}'.", "invalid_request_error", name,
                    "unknown_parameter",
                )  # fmt: skip
            return await self._answer(request, fields, edit=True)

        return await self.tracked(call, answer)

    async def _answer(self, request: web.Request, body: Any, edit: bool) -> web.StreamResponse:
        denied = self._auth_error(request)
        if denied is not None:
            return denied
        try:
            req = validate(body, edit)
        except InvalidRequest as exc:
            return self.error(400, exc.message, "invalid_request_error", exc.param, exc.code)
        if self.budget is not None and self.budget <= 0:
            return self._fault_answer(Fault("rate_limit", retry_after_s=self.budget_reset_s))
        fault = self.take_fault()
        await self.delay(fault)
        if fault is not None and fault.kind in ("rate_limit", "quota", "error"):
            return self._fault_answer(fault)
        gpt = req["model"].startswith("gpt-image-")
        if (fault is not None and fault.kind in ("refuse", "unsafe")) or self.blocked(
            req["prompt"]
        ):
            if gpt:
                return self.error(
                    400,
                    "Your request was rejected by the safety system. If you believe this is "
                    "an error, contact us at help.openai.com and include the request ID.",
                    "image_generation_user_error",
                    code="moderation_blocked",
                )
            return self.error(
                400,
                "Your request was rejected as a result of our safety system. Your prompt may "
                "contain text that is not allowed by our safety system.",
                "invalid_request_error",
                code="content_policy_violation",
            )
        size = "1024x1024" if req["size"] == "auto" else req["size"]
        w, h = (int(v) for v in size.split("x"))
        as_url = not gpt and req.get("response_format", "url") == "url"
        data = []
        for _ in range(req["n"]):
            image = _image(w, h, random_seed() % 16)
            if as_url:
                key = uuid.uuid4().hex
                self.images[key] = image
                item: dict[str, Any] = {"url": f"{self.url}/_standin/images/{key}.png"}
            else:
                item = {"b64_json": base64.b64encode(image).decode("ascii")}
            if req["model"] == "dall-e-3":
                item["revised_prompt"] = f"A detailed rendering of: {req['prompt']}"
            data.append(item)
        doc: dict[str, Any] = {"created": int(time.time()), "data": data}
        if gpt:
            quality = req.get("quality") or "auto"
            doc.update(
                background=req.get("background") or "opaque",
                output_format=req.get("output_format") or "png",
                quality="high" if quality == "auto" else quality,
                size=size,
                usage={
                    "input_tokens": len(req["prompt"]) // 4 + 1,
                    "input_tokens_details": {
                        "image_tokens": 0,
                        "text_tokens": len(req["prompt"]) // 4 + 1,
                    },
                    "output_tokens": 4160 * req["n"],
                    "total_tokens": 4160 * req["n"] + len(req["prompt"]) // 4 + 1,
                },
            )
        headers = {}
        if self.budget is not None:
            self.budget -= 1
            headers = {
                "x-ratelimit-limit-requests": "5",
                "x-ratelimit-remaining-requests": str(self.budget),
                "x-ratelimit-reset-requests": f"{self.budget_reset_s:g}s",
            }
        return web.json_response(doc, headers=headers)

    def _fault_answer(self, fault: Fault) -> web.Response:
        wait = f"{fault.retry_after_s:g}"
        if fault.kind == "rate_limit":
            return self.error(
                429,
                f"Rate limit reached for images per minute. Please try again in {wait}s.",
                "requests",
                code="rate_limit_exceeded",
                headers={
                    "retry-after": str(max(1, round(fault.retry_after_s))),
                    "x-ratelimit-limit-requests": "5",
                    "x-ratelimit-remaining-requests": "0",
                    "x-ratelimit-reset-requests": f"{wait}s",
                },
            )
        if fault.kind == "quota":
            return self.error(
                429,
                "You exceeded your current quota, please check your plan and billing details.",
                "insufficient_quota",
                code="insufficient_quota",
            )
        return self.error(
            fault.status,
            "The server had an error while processing your request. Sorry about that!",
            "server_error",
        )

    async def _image(self, request: web.Request) -> web.StreamResponse:
        fault = self.take_fault(("slow_url",))
        if fault is not None:
            await asyncio.sleep(fault.delay_s)
        key = request.match_info["id"].removesuffix(".png")
        image = self.images.get(key)
        if image is None:
            return web.Response(status=404, text="not found")
        return web.Response(body=image, content_type="image/png")


if __name__ == "__main__":
    main(OpenAIImagesStandIn, "A strict local stand-in for the OpenAI Images API")
