"""Backends `openai` (OpenAI Images API; Azure OpenAI via its base URL) and
`openai-compatible` (any server speaking the Images API).

Wire format: POST {base}/images/generations (JSON) and {base}/images/edits (multipart),
`Authorization: Bearer KEY` (Azure: `api-key: KEY` and `?api-version=`); answers
{"created", "data": [{"b64_json" | "url", "revised_prompt"?}], ...}; errors
{"error": {"message", "type", "param", "code"}}. See docs/providers.md.
"""

from __future__ import annotations

import asyncio
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
from .limits import exhausted_wait, retry_after_s
from .registry import BackendSettings

DEFAULT_ENDPOINT = "https://api.openai.com/v1"
AZURE_API_VERSION = "2025-04-01-preview"
_SQ = Size(1024, 1024)
_GPT_IMAGE = Capabilities(
    sizes=(_SQ, Size(1536, 1024), Size(1024, 1536)),
    default_size=_SQ,
    max_n=10,
    seed=False,
    edits=True,
    qualities=("low", "medium", "high", "auto"),
    max_prompt_chars=32000,
)
_DALLE3 = Capabilities(
    sizes=(_SQ, Size(1792, 1024), Size(1024, 1792)),
    default_size=_SQ,
    max_n=1,
    seed=False,
    edits=False,
    qualities=("standard", "hd"),
    max_prompt_chars=4000,
)
_DALLE2 = Capabilities(
    sizes=(Size(256, 256), Size(512, 512), _SQ),
    default_size=_SQ,
    max_n=10,
    seed=False,
    edits=True,
    qualities=("standard",),
    max_prompt_chars=1000,
)
# Any Images API server: the sizes OpenAI's models make between them.
_COMPATIBLE = Capabilities(
    sizes=(
        Size(256, 256),
        Size(512, 512),
        _SQ,
        Size(1536, 1024),
        Size(1024, 1536),
        Size(1792, 1024),
        Size(1024, 1792),
    ),
    default_size=_SQ,
    max_n=10,
    seed=False,
    edits=True,
    qualities=("standard", "hd", "low", "medium", "high", "auto"),
)

# Optional Images API fields each model takes, forwarded from HostedRequest.extra.
_GPT_IMAGE_FIELDS = ("background", "moderation", "output_format", "output_compression", "user")
_DALLE3_FIELDS = ("style", "user")
_DALLE2_FIELDS = ("user",)
_REFUSAL_CODES = ("content_policy_violation", "moderation_blocked")


def capabilities_for(model: str) -> tuple[Capabilities, tuple[str, ...], bool]:
    """(capabilities, forwarded fields, takes response_format) for a provider model."""
    if model.startswith("gpt-image-"):
        return _GPT_IMAGE, _GPT_IMAGE_FIELDS, False
    if model == "dall-e-3":
        return _DALLE3, _DALLE3_FIELDS, True
    if model == "dall-e-2":
        return _DALLE2, _DALLE2_FIELDS, True
    raise ValueError(
        f"openai backend: unknown provider model {model!r} "
        "(gpt-image-1, gpt-image-1-mini, dall-e-3, dall-e-2; use openai-compatible for others)"
    )


@dataclass
class OpenAIImages:
    name: str
    model: str
    capabilities: Capabilities
    fields: tuple[str, ...]
    response_format: bool  # send response_format=b64_json (dall-e-*; gpt-image-* always b64)
    endpoint_override: str = ""
    provider: str = "openai"
    default_endpoint: str = DEFAULT_ENDPOINT

    # ----- request building (pure) --------------------------------------------

    def generation_body(self, req: HostedRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "prompt": req.prompt,
            "n": req.n,
            "size": str(req.size),
        }
        if req.quality is not None:
            body["quality"] = req.quality
        if self.response_format:
            body["response_format"] = "b64_json"
        for k in self.fields:
            if req.extra.get(k) is not None:
                body[k] = req.extra[k]
        return body

    @staticmethod
    def is_azure(endpoint: str) -> bool:
        return ".openai.azure.com" in endpoint

    def _url_and_headers(self, ctx: ProviderContext, path: str) -> tuple[str, dict[str, str]]:
        if self.is_azure(ctx.endpoint):
            return (
                f"{ctx.endpoint}/images/{path}?api-version={AZURE_API_VERSION}",
                {"api-key": ctx.api_key},
            )
        return f"{ctx.endpoint}/images/{path}", {"Authorization": f"Bearer {ctx.api_key}"}

    # ----- calls ----------------------------------------------------------------

    async def generate(self, req: HostedRequest, ctx: ProviderContext) -> ProviderResult:
        url, headers = self._url_and_headers(ctx, "generations")
        return await self._call(ctx, url, headers, json_body=self.generation_body(req))

    async def edit(self, req: HostedRequest, ctx: ProviderContext) -> ProviderResult:
        if not self.capabilities.edits or req.edit is None:
            raise EditsUnsupported(f"{self.model} does not support image edits")
        form = aiohttp.FormData()
        body = self.generation_body(req)
        for k, v in body.items():
            form.add_field(k, str(v))
        many = len(req.edit.images) > 1
        for filename, data, ctype in req.edit.images:
            form.add_field(
                "image[]" if many else "image", data, filename=filename, content_type=ctype
            )
        if req.edit.mask is not None:
            filename, data, ctype = req.edit.mask
            form.add_field("mask", data, filename=filename, content_type=ctype)
        url, headers = self._url_and_headers(ctx, "edits")
        return await self._call(ctx, url, headers, form=form)

    async def _call(
        self,
        ctx: ProviderContext,
        url: str,
        headers: dict[str, str],
        json_body: dict[str, Any] | None = None,
        form: aiohttp.FormData | None = None,
    ) -> ProviderResult:
        timeout = aiohttp.ClientTimeout(total=ctx.timeout_s)
        try:
            async with ctx.session.post(
                url, json=json_body, data=form, headers=headers, timeout=timeout
            ) as resp:
                try:
                    doc = await resp.json(content_type=None)
                except ValueError:
                    doc = None
                return parse_response(resp.status, resp.headers, doc, time.time())
        except TimeoutError as exc:
            raise ProviderError(0, f"provider did not answer within {ctx.timeout_s:g}s") from exc
        except (aiohttp.ClientError, asyncio.CancelledError) as exc:
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise ProviderError(0, f"cannot reach provider: {type(exc).__name__}") from exc


def _error_fields(doc: Any) -> tuple[str, str, str | None]:
    err = doc.get("error") if isinstance(doc, dict) else None
    if not isinstance(err, dict):
        return "", "", None
    code = err.get("code") or err.get("type") or ""
    param = err.get("param")
    return str(code), str(err.get("message") or ""), param if isinstance(param, str) else None


def parse_response(status: int, headers: Mapping[str, str], doc: Any, now: float) -> ProviderResult:
    """Pure: one Images API answer -> a result, or the ProviderFailure it means."""
    if status == 200:
        data = doc.get("data") if isinstance(doc, dict) else None
        if not isinstance(data, list) or not data:
            raise ProviderError(502, "provider answered 200 without a data list")
        images = []
        for item in data:
            if not isinstance(item, dict) or not (item.get("b64_json") or item.get("url")):
                raise ProviderError(502, "provider image has neither b64_json nor url")
            rp = item.get("revised_prompt")
            images.append(
                ProviderImage(
                    b64_json=item.get("b64_json") or None,
                    url=None if item.get("b64_json") else item.get("url"),
                    revised_prompt=rp if isinstance(rp, str) else None,
                )
            )
        quality = doc.get("quality") if isinstance(doc.get("quality"), str) else None
        return ProviderResult(tuple(images), quality=quality, pause_s=exhausted_wait(headers))
    code, message, param = _error_fields(doc)
    if status == 429:
        wait = retry_after_s(headers, now)
        if code == "insufficient_quota":
            # Billing quota: no reset time is published; probe again after an hour.
            raise ProviderQuotaExhausted(
                "provider quota exhausted (insufficient_quota)", now + (wait or 3600.0)
            )
        raise ProviderRateLimited("provider rate limit reached", wait if wait is not None else 5.0)
    if status == 400 and code in _REFUSAL_CODES:
        raise ProviderRefused(f"the provider's safety system refused the request ({code})")
    if status in (401, 403):
        # The provider's own message may quote part of the key: never pass it on.
        raise ProviderError(status, f"provider rejected the adapter's credentials (HTTP {status})")
    if 400 <= status < 500:
        raise ProviderError(400, f"provider rejected the request: {message[:300]}", param)
    raise ProviderError(status, f"provider error HTTP {status}: {message[:200]}")


def make_openai(settings: BackendSettings) -> OpenAIImages:
    caps, fields, rf = capabilities_for(settings.provider_model)
    return OpenAIImages("openai", settings.provider_model, caps, fields, rf, settings.endpoint)


def make_openai_compatible(settings: BackendSettings) -> OpenAIImages:
    if not settings.provider_model:
        raise ValueError("openai-compatible backend needs a provider model")
    return OpenAIImages(
        "openai-compatible",
        settings.provider_model,
        _COMPATIBLE,
        ("user",),
        False,  # servers differ on response_format; either answer form is taken
        settings.endpoint,
        provider="openai-compatible",
    )
