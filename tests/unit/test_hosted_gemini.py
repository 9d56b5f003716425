"""Gemini API backends (gemini-imagen, gemini): translation, answers and errors, pure."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from modelfleet_dev.standins import gemini_api as standin
from modelfleet_worker.hosted import gemini
from modelfleet_worker.hosted.backend import (
    EditInput,
    HostedRequest,
    ProviderError,
    ProviderQuotaExhausted,
    ProviderRateLimited,
    ProviderRefused,
    Size,
)
from modelfleet_worker.hosted.registry import BackendSettings, make_backend
from modelfleet_worker.hosted.translate import TranslationError, plan_calls


def imagen(model: str = "imagen-4.0-generate-001") -> gemini.GeminiImagen:
    return gemini.make_imagen(BackendSettings(model))


def gem(model: str = "gemini-3-pro-image-preview") -> gemini.GeminiImage:
    return gemini.make_gemini(BackendSettings(model))


def req(size: Size, n: int = 1, **kw: Any) -> HostedRequest:
    return HostedRequest(prompt="a lighthouse", n=n, size=size, **kw)


def ts(text: str) -> float:
    return dt.datetime.fromisoformat(text).timestamp()


# -- translation ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "size", "ratio", "image_size"),
    [
        ("imagen-4.0-generate-001", Size(1024, 1024), "1:1", "1K"),
        ("imagen-4.0-generate-001", Size(1408, 768), "16:9", "1K"),
        ("imagen-4.0-generate-001", Size(768, 1408), "9:16", "1K"),
        ("imagen-4.0-generate-001", Size(896, 1280), "3:4", "1K"),
        ("imagen-4.0-ultra-generate-001", Size(2560, 1792), "4:3", "2K"),
        ("imagen-4.0-ultra-generate-001", Size(2048, 2048), "1:1", "2K"),
        ("imagen-4.0-fast-generate-001", Size(1280, 896), "4:3", None),  # Fast: no size param
    ],
)
def test_imagen_size_becomes_aspect_ratio_and_image_size(
    model: str, size: Size, ratio: str, image_size: str | None
) -> None:
    body = imagen(model).predict_body(req(size, n=3))
    assert body["instances"] == [{"prompt": "a lighthouse"}]
    params = body["parameters"]
    assert params["sampleCount"] == 3
    assert params["aspectRatio"] == ratio
    assert params.get("sampleImageSize") == image_size  # :predict's name for it
    assert "imageSize" not in params
    assert params["includeRaiReason"] is True  # so a filtered image says why
    assert "seed" not in params  # the Gemini API takes no seed for Imagen


def test_imagen_fast_makes_no_2k_size() -> None:
    caps = imagen("imagen-4.0-fast-generate-001").capabilities
    assert Size(2048, 2048) not in caps.sizes
    with pytest.raises(TranslationError) as err:
        plan_calls(1, "2048x2048", None, caps, "reject")
    assert err.value.param == "size"
    assert "1408x768" in err.value.message  # lists what is allowed


@pytest.mark.parametrize(("n", "counts"), [(1, (1,)), (4, (4,)), (5, (4, 1)), (10, (4, 4, 2))])
def test_imagen_n_above_four_is_split_and_takes_no_seed(n: int, counts: tuple[int, ...]) -> None:
    plan = plan_calls(n, "1408x768", 42, imagen().capabilities, "reject")
    assert plan.counts == counts
    assert set(plan.seeds) == {None}


@pytest.mark.parametrize(
    ("asked", "chosen"),
    [
        ("1024x1024", Size(1024, 1024)),
        ("1920x1080", Size(1408, 768)),
        ("1000x1500", Size(896, 1280)),
    ],
)
def test_imagen_nearest_size(asked: str, chosen: Size) -> None:
    assert plan_calls(1, asked, None, imagen().capabilities, "nearest").size == chosen


def test_imagen_person_generation_and_negative_prompt() -> None:
    body = imagen().predict_body(req(Size(1024, 1024), extra={"person_generation": "dont_allow"}))
    assert body["parameters"]["personGeneration"] == "dont_allow"
    with pytest.raises(ProviderError) as err:
        imagen().predict_body(req(Size(1024, 1024), extra={"person_generation": "everyone"}))
    assert (err.value.status, err.value.param) == (400, "person_generation")
    with pytest.raises(ProviderError) as err:
        imagen().predict_body(req(Size(1024, 1024), negative_prompt="fog"))
    assert (err.value.status, err.value.param) == (400, "negative_prompt")


@pytest.mark.parametrize(
    ("model", "size", "ratio", "image_size"),
    [
        ("gemini-3-pro-image-preview", Size(1024, 1024), "1:1", "1K"),
        ("gemini-3-pro-image-preview", Size(2752, 1536), "16:9", "2K"),
        ("gemini-3-pro-image-preview", Size(6336, 2688), "21:9", "4K"),
        ("gemini-3-pro-image-preview", Size(1856, 2304), "4:5", "2K"),
        ("gemini-2.5-flash-image", Size(1344, 768), "16:9", None),
        ("gemini-2.5-flash-image", Size(832, 1248), "2:3", None),
    ],
)
def test_gemini_size_becomes_image_config(
    model: str, size: Size, ratio: str, image_size: str | None
) -> None:
    body = gem(model).content_body(req(size, seed=7))
    config = body["generationConfig"]
    assert config["responseModalities"] == ["TEXT", "IMAGE"]
    assert config["imageConfig"] == {
        "aspectRatio": ratio,
        **({"imageSize": image_size} if image_size else {}),
    }
    assert config["seed"] == 7
    assert body["contents"] == [{"role": "user", "parts": [{"text": "a lighthouse"}]}]


def test_gemini_one_image_per_call_with_consecutive_seeds() -> None:
    plan = plan_calls(3, "1024x1024", 100, gem().capabilities, "reject")
    assert plan.counts == (1, 1, 1)
    assert plan.seeds == (100, 101, 102)


def test_gemini_edit_sends_the_images_inline_and_refuses_a_mask() -> None:
    edit = EditInput(images=(("a.png", b"\x89PNGdata", "image/png"),))
    body = gem().content_body(req(Size(1024, 1024), edit=edit))
    parts = body["contents"][0]["parts"]
    assert parts[0] == {"text": "a lighthouse"}
    assert parts[1]["inlineData"]["mimeType"] == "image/png"
    masked = EditInput(images=edit.images, mask=("m.png", b"x", "image/png"))
    with pytest.raises(ProviderError) as err:
        gem().content_body(req(Size(1024, 1024), edit=masked))
    assert err.value.param == "mask"


@pytest.mark.parametrize(
    ("table", "served"),
    [
        (gemini.IMAGEN_MODELS["imagen-4.0-generate-001"], standin.IMAGEN_SIZES),
        (
            gemini.GEMINI_MODELS["gemini-3-pro-image-preview"],
            standin.GEMINI_SIZES["gemini-3-pro-image-preview"],
        ),
        (
            gemini.GEMINI_MODELS["gemini-2.5-flash-image"],
            standin.GEMINI_SIZES["gemini-2.5-flash-image"],
        ),
    ],
)
def test_every_size_is_what_the_provider_renders_for_its_parameters(
    table: dict[Size, tuple[str, str | None]], served: dict[tuple[str, str], tuple[int, int]]
) -> None:
    # Two tables written apart (the adapter's, the stand-in's from the provider docs).
    for size, (ratio, image_size) in table.items():
        assert served[(ratio, image_size or "1K")] == (size.width, size.height)
    assert len(table) == len(served)


@pytest.mark.parametrize(
    ("backend", "model", "image_size", "default"),
    [
        ("gemini-imagen", "imagen-4.0-generate-001", None, Size(1024, 1024)),
        ("gemini-imagen", "imagen-4.0-generate-001", "2K", Size(2048, 2048)),
        ("gemini", "gemini-3-pro-image-preview", "4K", Size(4096, 4096)),
        ("gemini", "gemini-2.5-flash-image", "1K", Size(1024, 1024)),
    ],
)
def test_pool_default_image_size_sets_the_default_size(
    backend: str, model: str, image_size: str | None, default: Size
) -> None:
    defaults = {"image_size": image_size} if image_size else {}
    caps = make_backend(backend, BackendSettings(model, defaults=defaults)).capabilities
    assert caps.default_size == default
    assert plan_calls(1, None, None, caps, "reject").size == default


@pytest.mark.parametrize(
    ("backend", "model", "image_size"),
    [
        ("gemini-imagen", "imagen-4.0-fast-generate-001", "2K"),
        ("gemini-imagen", "imagen-4.0-ultra-generate-001", "4K"),
        ("gemini", "gemini-2.5-flash-image", "2K"),
    ],
)
def test_a_default_image_size_the_model_cannot_make_stops_the_adapter(
    backend: str, model: str, image_size: str
) -> None:
    with pytest.raises(ValueError, match="image_size"):
        make_backend(backend, BackendSettings(model, defaults={"image_size": image_size}))


def test_registry_builds_both_and_rejects_unknown_models() -> None:
    assert make_backend("gemini-imagen", BackendSettings("imagen-4.0-ultra-generate-001")).name == (
        "gemini-imagen"
    )
    b = make_backend("gemini", BackendSettings("gemini-2.5-flash-image"))
    assert (b.provider, b.default_endpoint) == (
        "google",
        "https://generativelanguage.googleapis.com",
    )
    with pytest.raises(ValueError, match=r"imagen-4\.0-generate-001"):
        make_backend("gemini-imagen", BackendSettings("imagen-9"))
    with pytest.raises(ValueError, match=r"gemini-3-pro-image-preview"):
        make_backend("gemini", BackendSettings("gemini-2.5-flash"))


# -- answers -------------------------------------------------------------------------


def test_predict_answers() -> None:
    ok = gemini.parse_predict(
        {"predictions": [{"bytesBase64Encoded": "QUJD", "mimeType": "image/png"}] * 2}
    )
    assert [i.b64_json for i in ok.images] == ["QUJD", "QUJD"]
    partial = gemini.parse_predict(
        {"predictions": [{"raiFilteredReason": "filtered"}, {"bytesBase64Encoded": "QUJD"}]}
    )
    assert len(partial.images) == 1
    with pytest.raises(ProviderRefused, match="Responsible"):
        gemini.parse_predict({"predictions": [{"raiFilteredReason": "Responsible AI"}]})
    with pytest.raises(ProviderRefused):
        gemini.parse_predict({})  # everything filtered, no reason asked for


def test_generate_answers() -> None:
    parts = [
        {"inlineData": {"mimeType": "image/png", "data": "VEhPVUdIVA=="}, "thought": True},
        {"text": "Here it is"},
        {"inlineData": {"mimeType": "image/png", "data": "RklOQUw="}},
    ]
    got = gemini.parse_generate(
        {"candidates": [{"content": {"parts": parts}, "finishReason": "STOP"}]}, seed=5
    )
    assert [(i.b64_json, i.seed) for i in got.images] == [("RklOQUw=", 5)]  # thought skipped
    with pytest.raises(ProviderRefused, match="PROHIBITED_CONTENT"):
        gemini.parse_generate({"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}}, None)
    with pytest.raises(ProviderRefused, match="IMAGE_SAFETY"):
        gemini.parse_generate({"candidates": [{"finishReason": "IMAGE_SAFETY"}]}, None)
    with pytest.raises(ProviderError) as err:
        text_only = {"content": {"parts": [{"text": "no"}]}, "finishReason": "STOP"}
        gemini.parse_generate({"candidates": [text_only]}, None)
    assert err.value.status == 502


def _exhausted(quota_id: str, delay: str | None = "17s") -> dict[str, Any]:
    details: list[dict[str, Any]] = [
        {
            "@type": "type.googleapis.com/google.rpc.QuotaFailure",
            "violations": [{"quotaId": quota_id, "quotaMetric": "m"}],
        }
    ]
    if delay:
        details.append({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay})
    return {
        "error": {
            "code": 429,
            "status": "RESOURCE_EXHAUSTED",
            "message": "quota",
            "details": details,
        }
    }


def test_daily_quota_is_exhausted_until_midnight_pacific() -> None:
    now = ts("2026-12-01T20:00:00+00:00")  # 12:00 PST
    with pytest.raises(ProviderQuotaExhausted) as err:
        gemini.raise_for_error(429, {}, _exhausted("GenerateRequestsPerDayPerProjectPerModel"), now)
    assert err.value.until == ts("2026-12-02T08:00:00+00:00")


@pytest.mark.parametrize(
    ("doc", "headers", "wait"),
    [
        (_exhausted("PredictRequestsPerMinutePerProjectPerModel", "17s"), {}, 17.0),
        (_exhausted("PredictRequestsPerMinutePerProjectPerModel", "1.5s"), {}, 1.5),
        (_exhausted("PredictRequestsPerMinutePerProjectPerModel", None), {"Retry-After": "9"}, 9.0),
        (_exhausted("PredictRequestsPerMinutePerProjectPerModel", None), {}, 5.0),
    ],
)
def test_per_minute_limit_is_a_rate_limit(doc: Any, headers: dict[str, str], wait: float) -> None:
    with pytest.raises(ProviderRateLimited) as err:
        gemini.raise_for_error(429, headers, doc, 0.0)
    assert err.value.retry_after_s == wait


@pytest.mark.parametrize(
    ("now", "reset"),
    [
        ("2026-12-01T20:00:00+00:00", "2026-12-02T08:00:00+00:00"),  # PST
        ("2026-12-02T07:59:59+00:00", "2026-12-02T08:00:00+00:00"),  # 23:59:59 PST
        ("2026-12-02T08:00:00+00:00", "2026-12-03T08:00:00+00:00"),  # just reset
        ("2026-07-01T12:00:00+00:00", "2026-07-02T07:00:00+00:00"),  # PDT
        ("2026-03-08T09:00:00+00:00", "2026-03-09T07:00:00+00:00"),  # DST starts that day
        ("2026-03-08T07:30:00+00:00", "2026-03-08T08:00:00+00:00"),  # 23:30 PST the eve
        ("2026-11-01T06:30:00+00:00", "2026-11-01T07:00:00+00:00"),  # 23:30 PDT the eve
        ("2026-11-01T12:00:00+00:00", "2026-11-02T08:00:00+00:00"),  # DST ended that day
    ],
)
def test_next_pacific_midnight(now: str, reset: str) -> None:
    assert gemini.next_pacific_midnight(ts(now)) == ts(reset)


def test_bad_key_is_a_credentials_error_without_the_providers_message() -> None:
    doc = {
        "error": {
            "code": 400,
            "status": "INVALID_ARGUMENT",
            "message": "API key not valid: AIza-secret-123",
            "details": [
                {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}
            ],
        }
    }
    with pytest.raises(ProviderError) as err:
        gemini.raise_for_error(400, {}, doc, 0.0)
    assert err.value.status == 401  # not the client's fault: 502 to the client
    assert "secret" not in err.value.message
    with pytest.raises(ProviderError) as err:
        gemini.raise_for_error(403, {}, {"error": {"status": "PERMISSION_DENIED"}}, 0.0)
    assert err.value.status == 403


@pytest.mark.parametrize(
    ("status", "field", "out_status", "param"),
    [
        (400, "sampleCount", 400, "n"),
        (400, "imageConfig.aspectRatio", 400, "size"),
        (400, "parameters.whatever", 400, None),
        (404, "", 404, None),  # unknown model: the pool's mistake, 502 to the client
        (500, "", 500, None),
        (503, "", 503, None),
    ],
)
def test_other_errors(status: int, field: str, out_status: int, param: str | None) -> None:
    doc = {
        "error": {
            "code": status,
            "message": "bad",
            "details": [
                {
                    "@type": "type.googleapis.com/google.rpc.BadRequest",
                    "fieldViolations": [{"field": field}],
                }
            ],
        }
    }
    with pytest.raises(ProviderError) as err:
        gemini.raise_for_error(status, {}, doc, 0.0)
    assert (err.value.status, err.value.param) == (out_status, param)
