"""The real adapter process (`modelfleet-worker serve --backend gemini-imagen|gemini`)
against the strict Gemini API stand-in on loopback: generation, n split, sizes,
seeds, refusals, rate limits without hammering, the daily quota, errors, timeouts,
and the key never leaving the provider call."""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from modelfleet_dev.standins.adapter import Adapter
from modelfleet_dev.standins.common import in_thread, png, png_size
from modelfleet_dev.standins.gemini_api import GeminiStandIn
from modelfleet_worker.hosted.gemini import next_pacific_midnight

KEY = "AIzaSy-test-0123456789-secret"
IMAGEN = "imagen-4.0-generate-001"
PRO = "gemini-3-pro-image-preview"


@pytest.fixture(scope="module")
def google() -> Iterator[GeminiStandIn]:
    with in_thread(GeminiStandIn(KEY)) as s:
        yield s


@pytest.fixture
def fresh(google: GeminiStandIn) -> GeminiStandIn:
    google.clear()
    return google


def _adapter(google: GeminiStandIn, backend: str, model: str, **env: str) -> Adapter:
    settings = {"MODELFLEET_WORKER_REQUEST_TIMEOUT_S": "2", **env}
    return Adapter(backend, model, google.url, KEY, env=settings).start()


@pytest.fixture(scope="module")
def imagen(google: GeminiStandIn) -> Iterator[Adapter]:
    a = _adapter(google, "gemini-imagen", IMAGEN)
    yield a
    a.stop()


@pytest.fixture(scope="module")
def pro(google: GeminiStandIn) -> Iterator[Adapter]:
    a = _adapter(google, "gemini", PRO)
    yield a
    a.stop()


def images(body: dict[str, Any]) -> list[bytes]:
    return [base64.b64decode(d["b64_json"]) for d in body["data"]]


def metric(adapter: Adapter, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels` (others, e.g. an
    endpoint label, are summed over)."""
    _, _, text = adapter.get("/metrics")
    found = [
        float(s.value)
        for fam in text_string_to_metric_families(text.decode())
        for s in fam.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert found, f"no sample {name} {labels}"
    return sum(found)


def test_imagen_splits_n_above_four_and_answers_the_size_asked(
    imagen: Adapter, fresh: GeminiStandIn
) -> None:
    status, headers, body = imagen.generate({"prompt": "a harbour", "n": 6, "size": "1408x768"})
    assert status == 200, body
    assert [png_size(i) for i in images(body)] == [(1408, 768)] * 6
    calls = fresh.calls_to(":predict")
    assert sorted(c.fields["sampleCount"] for c in calls) == [2, 4]
    assert {(c.fields["aspectRatio"], c.fields["sampleImageSize"]) for c in calls} == {
        ("16:9", "1K")
    }
    mf = body["modelfleet"]
    assert (mf["model"], mf["images"], mf["seeds"]) == (IMAGEN, 6, [None] * 6)
    assert mf["cost_usd"] == pytest.approx(6 * 0.04)
    assert float(headers["X-ModelFleet-Cost-USD"]) == pytest.approx(0.24)


def test_a_size_imagen_cannot_make_is_400_naming_size_before_any_call(
    imagen: Adapter, fresh: GeminiStandIn
) -> None:
    status, _, body = imagen.generate({"prompt": "a harbour", "size": "1000x300"})
    assert status == 400
    assert body["error"]["param"] == "size"
    assert "1408x768" in body["error"]["message"] and "2816x1536" in body["error"]["message"]
    assert fresh.calls == []


def test_gemini_one_call_per_image_with_the_seed_passed(pro: Adapter, fresh: GeminiStandIn) -> None:
    ask = {"prompt": "a lighthouse", "n": 2, "size": "2752x1536", "seed": 40}
    status, _, body = pro.generate(ask)
    assert status == 200, body
    got = images(body)
    # The final images at 2K 16:9, not the small interim thought image the model sends first.
    assert [png_size(i) for i in got] == [(2752, 1536)] * 2
    assert sorted(c.fields["seed"] for c in fresh.calls) == [40, 41]
    assert {(c.fields["aspectRatio"], c.fields["imageSize"]) for c in fresh.calls} == {
        ("16:9", "2K")
    }
    assert body["modelfleet"]["seeds"] == [40, 41]
    assert body["modelfleet"]["cost_usd"] == pytest.approx(2 * 0.134)
    # The same seed draws the same image: the seed reached the provider.
    again = images(pro.generate({**ask, "n": 1, "seed": 41})[2])
    assert again == [got[1]] and got[0] != got[1]


def _edit(adapter: Adapter, fields: dict[str, str], files: dict[str, bytes]) -> tuple[int, Any]:
    boundary = "editboundary"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields.items()
    ]
    parts += [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"; filename="{k}.png"\r\n'
        f"Content-Type: image/png\r\n\r\n".encode()
        + data
        + b"\r\n"
        for k, data in files.items()
    ]
    req = urllib.request.Request(
        f"{adapter.url}/v1/images/edits",
        data=b"".join(parts) + f"--{boundary}--\r\n".encode(),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_gemini_edit_sends_the_image_inline_and_imagen_has_none(
    pro: Adapter, imagen: Adapter, fresh: GeminiStandIn
) -> None:
    source = png(64, 64, 3)
    status, body = _edit(pro, {"prompt": "make it night", "size": "1024x1024"}, {"image": source})
    assert status == 200, body
    (call,) = fresh.calls
    assert (call.fields["imagesIn"], call.fields["prompt"]) == (1, "make it night")
    assert png_size(images(body)[0]) == (1024, 1024)
    status, body = _edit(pro, {"prompt": "x"}, {"image": source, "mask": source})
    assert (status, body["error"]["param"]) == (400, "mask")
    status, body = _edit(imagen, {"prompt": "x"}, {"image": source})
    assert (status, body["error"]["code"]) == (400, "edits_unsupported")
    assert len(fresh.calls) == 1


@pytest.mark.parametrize("which", ["imagen", "pro"])
def test_safety_refusals_are_422_counted_apart_and_keep_the_pool_ready(
    which: str, request: pytest.FixtureRequest, fresh: GeminiStandIn
) -> None:
    adapter: Adapter = request.getfixturevalue(which)
    before = metric(adapter, "modelfleet_worker_provider_refusals_total")
    # A blocked prompt (Gemini: promptFeedback.blockReason; Imagen: every image filtered).
    status, _, body = adapter.generate({"prompt": "forbidden-content please"})
    assert status == 422, body
    assert body["error"]["code"] == "content_policy_violation"
    # A filtered output image (Gemini: finishReason IMAGE_SAFETY; Imagen: raiFilteredReason).
    fresh.add_fault("unsafe")
    status, _, body = adapter.generate({"prompt": "a quiet street"})
    assert status == 422, body
    assert metric(adapter, "modelfleet_worker_provider_refusals_total") == before + 2
    assert metric(adapter, "modelfleet_worker_requests_total", outcome="refused") >= 2
    assert adapter.get("/readyz")[0] == 200


def test_imagen_partially_filtered_answer_delivers_the_rest(
    imagen: Adapter, fresh: GeminiStandIn
) -> None:
    fresh.add_fault("unsafe")
    status, headers, body = imagen.generate({"prompt": "a market", "n": 3})
    assert status == 200, body
    assert body["modelfleet"]["images"] == 2
    assert float(headers["X-ModelFleet-Cost-USD"]) == pytest.approx(2 * 0.04)


def test_rate_limit_is_429_with_retry_after_and_no_hammering(
    google: GeminiStandIn, fresh: GeminiStandIn
) -> None:
    adapter = _adapter(google, "gemini-imagen", IMAGEN)
    try:
        fresh.add_fault("rate_limit", retry_after_s=30)
        status, headers, body = adapter.generate({"prompt": "a harbour"})
        assert status == 429, body
        assert body["error"]["code"] == "rate_limited"
        assert 25 <= int(headers["Retry-After"]) <= 30  # the provider's RetryInfo
        for _ in range(3):  # answered at once, without asking the provider again
            status, headers, body = adapter.generate({"prompt": "a harbour"})
            assert (status, body["error"]["code"]) == (429, "rate_limited")
        assert len(fresh.calls) == 1
        assert adapter.get("/readyz")[0] == 200  # a rate limit is not unreadiness
    finally:
        adapter.stop()


def test_daily_quota_makes_the_adapter_unready_until_midnight_pacific(
    google: GeminiStandIn, fresh: GeminiStandIn
) -> None:
    adapter = _adapter(google, "gemini", PRO)
    try:
        # Quotas are per model: Imagen's is not spent. RetryInfo is not the daily reset.
        fresh.add_fault("quota", count=None, retry_after_s=20, model=PRO)
        status, headers, body = adapter.generate({"prompt": "a harbour"})
        now = time.time()
        assert status == 429, body
        assert body["error"]["code"] == "quota_exhausted"
        reset = next_pacific_midnight(now)
        assert abs(int(headers["Retry-After"]) - (reset - now)) <= 5
        code, _, ready = adapter.get("/readyz")
        assert code == 503
        assert json.loads(ready) == {
            "status": "quota_exhausted",
            "until": pytest.approx(reset, abs=5),
        }
        status, _, body = adapter.generate({"prompt": "a harbour"})
        assert (status, body["error"]["code"]) == (429, "quota_exhausted")
        assert len(fresh.calls) == 1  # no call while the quota is spent
        imagen = _adapter(google, "gemini-imagen", IMAGEN)
        try:
            assert imagen.generate({"prompt": "a harbour"})[0] == 200
        finally:
            imagen.stop()
    finally:
        adapter.stop()


@pytest.mark.parametrize(
    ("fault", "kw", "status", "code"),
    [
        ("error", {"status": 500}, 502, "provider_error"),
        ("error", {"status": 503}, 502, "provider_error"),
        ("slow", {"delay_s": 4.0}, 504, "provider_timeout"),  # adapter timeout: 2 s
    ],
)
def test_provider_errors_and_slowness(
    imagen: Adapter, fresh: GeminiStandIn, fault: str, kw: dict[str, Any], status: int, code: str
) -> None:
    fresh.add_fault(fault, **kw)
    got, _, body = imagen.generate({"prompt": "a harbour"})
    assert (got, body["error"]["code"]) == (status, code)
    assert imagen.get("/readyz")[0] == 200


def test_the_key_goes_only_in_its_header_and_never_anywhere_else(
    google: GeminiStandIn, fresh: GeminiStandIn
) -> None:
    adapter = _adapter(google, "gemini", PRO)
    wrong = Adapter("gemini-imagen", IMAGEN, google.url, KEY + "-rotated").start()
    try:
        bodies = [adapter.generate({"prompt": p})[2] for p in ("ok", "forbidden-content")]
        fresh.add_fault("error", status=500)
        bodies.append(adapter.generate({"prompt": "fails"})[2])
        status, _, body = wrong.generate({"prompt": "wrong key"})
        assert (status, body["error"]["code"]) == (502, "provider_error")
        assert "credentials" in body["error"]["message"]
        bodies.append(body)
        scraped = adapter.get("/metrics")[2] + wrong.get("/metrics")[2]
        assert KEY.encode() not in scraped
        for a in (adapter, wrong):
            a.stop()  # flush its log
            for text in (a.log(), json.dumps(bodies), " ".join(a.command())):
                assert KEY not in text
        # The only place the stand-in saw it: the x-goog-api-key header, not the URL.
        assert all(KEY not in c.path for c in fresh.calls)
    finally:
        adapter.stop()
        wrong.stop()


def test_the_key_is_not_in_metrics(imagen: Adapter) -> None:
    _, _, text = imagen.get("/metrics")
    assert KEY.encode() not in text and b"modelfleet_worker_cost_usd" in text


# -- the stand-in is as strict as the service (or an adapter bug would pass here) -----


def _post(url: str, body: Any, headers: dict[str, str]) -> tuple[int, Any]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json", **headers}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "text"),
    [
        (f"{IMAGEN}:predict", {"instances": [{"prompt": "x"}]}, {}, 403, "PERMISSION_DENIED"),
        (
            f"{IMAGEN}:predict",
            {"instances": [{"prompt": "x"}]},
            {"x-goog-api-key": "nope"},
            400,
            "API_KEY_INVALID",
        ),
        (
            f"{IMAGEN}:predict",
            {"instances": [{"prompt": "x"}], "parameters": {"seed": 1}},
            None,
            400,
            'Unknown name "seed"',
        ),
        (
            f"{IMAGEN}:predict",
            {"instances": [{"prompt": "x"}], "parameters": {"sampleCount": "2"}},
            None,
            400,
            "sample_count",
        ),
        (
            f"{IMAGEN}:predict",
            {"instances": [{"prompt": "x"}], "parameters": {"sampleCount": 5}},
            None,
            400,
            "between 1 and 4",
        ),
        (
            f"{IMAGEN}:predict",
            {"instances": [{"prompt": "x"}], "parameters": {"aspectRatio": "3:2"}},
            None,
            400,
            "aspect ratio",
        ),
        (
            "imagen-4.0-fast-generate-001:predict",
            {"instances": [{"prompt": "x"}], "parameters": {"sampleImageSize": "2K"}},
            None,
            400,
            "sampleImageSize",
        ),
        (  # generateContent's name, not :predict's
            f"{IMAGEN}:predict",
            {"instances": [{"prompt": "x"}], "parameters": {"imageSize": "2K"}},
            None,
            400,
            'Unknown name "imageSize"',
        ),
        (
            f"{PRO}:generateContent",
            {
                "contents": [{"parts": [{"text": "x"}]}],
                "generationConfig": {"imageConfig": {"size": "1K"}},
            },
            None,
            400,
            'Unknown name "size"',
        ),
        (
            f"{PRO}:generateContent",
            {"contents": [{"parts": [{"text": "x"}]}], "generationConfig": {"candidateCount": 2}},
            None,
            400,
            "Multiple candidates",
        ),
        (
            "gemini-2.5-flash-image:generateContent",
            {
                "contents": [{"parts": [{"text": "x"}]}],
                "generationConfig": {"imageConfig": {"imageSize": "2K"}},
            },
            None,
            400,
            "imageSize",
        ),
        (
            f"{IMAGEN}:generateContent",
            {"contents": [{"parts": [{"text": "x"}]}]},
            None,
            404,
            "not found",
        ),
    ],
)
def test_standin_rejects_what_the_service_rejects(
    google: GeminiStandIn,
    path: str,
    body: Any,
    headers: dict[str, str] | None,
    status: int,
    text: str,
) -> None:
    got, doc = _post(
        f"{google.url}/v1beta/models/{path}",
        body,
        {"x-goog-api-key": KEY} if headers is None else headers,
    )
    assert (got, doc["error"]["code"]) == (status, status)
    assert text in doc["error"]["status"] + doc["error"]["message"] + json.dumps(
        doc["error"].get("details", [])
    )


def test_standin_generate_content_accepts_snake_case_like_the_proto_parser(
    google: GeminiStandIn,
) -> None:
    body = {
        "contents": [{"parts": [{"text": "x"}]}],
        "generation_config": {
            "response_modalities": ["IMAGE"],
            "image_config": {"aspect_ratio": "4:5"},
        },
    }
    got, doc = _post(
        f"{google.url}/v1beta/models/{PRO}:generateContent", body, {"x-goog-api-key": KEY}
    )
    assert got == 200
    final = [
        p
        for p in doc["candidates"][0]["content"]["parts"]
        if "inlineData" in p and not p.get("thought")
    ]
    assert png_size(base64.b64decode(final[0]["inlineData"]["data"])) == (928, 1152)
