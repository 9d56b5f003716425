"""The adapter process (`modelfleet-worker serve --backend openai ...`) against the
strict OpenAI Images stand-in on loopback: generation, n split, size policy, edits,
URL download, provider limits, refusals, quota, cost, and the key never leaking."""

from __future__ import annotations

import base64
import json
import time
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

import hosted_fixtures
from modelfleet_dev.standins.common import in_thread, png, png_size
from modelfleet_dev.standins.openai_images import OpenAIImagesStandIn
from polling import wait_for
from worker_fixtures import Worker

KEY = "sk-test-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def standin() -> Iterator[OpenAIImagesStandIn]:
    with in_thread(OpenAIImagesStandIn(KEY)) as s:
        assert isinstance(s, OpenAIImagesStandIn)
        yield s


@pytest.fixture(autouse=True)
def _fresh(standin: OpenAIImagesStandIn) -> None:
    standin.clear()
    standin.max_in_flight = 0


def start_adapter(
    standin: OpenAIImagesStandIn, model: str, backend: str = "openai", key: str = KEY, **kw: Any
) -> Worker:
    return hosted_fixtures.start_adapter(backend, model, standin.base_url, key, **kw)


@pytest.fixture(scope="module")
def dalle3(standin: OpenAIImagesStandIn) -> Iterator[Worker]:
    w = start_adapter(standin, "dall-e-3")
    yield w
    w.stop()


@pytest.fixture(scope="module")
def gpt_nearest(standin: OpenAIImagesStandIn) -> Iterator[Worker]:
    w = start_adapter(
        standin,
        "gpt-image-1",
        size_policy="nearest",
        provider_defaults=json.dumps({"quality": "low"}),
        price_overrides=json.dumps([{"quality": "low", "size": "1536x1024", "usd_per_image": 0.5}]),
    )
    yield w
    w.stop()


def _images(doc: dict[str, Any]) -> list[bytes]:
    return [base64.b64decode(d["b64_json"]) for d in doc["data"]]


def test_dalle3_n_split_into_single_image_calls_with_cost(
    dalle3: Worker, standin: OpenAIImagesStandIn
) -> None:
    status, headers, raw = dalle3.request(
        "POST",
        "/v1/images/generations",
        {"prompt": "a lighthouse", "n": 3, "size": "1792x1024", "quality": "hd", "asset_id": "a1"},
    )
    assert status == 200, raw
    doc = json.loads(raw)
    assert [png_size(im) for im in _images(doc)] == [(1792, 1024)] * 3
    calls = standin.calls_to("/images/generations")
    assert [c.fields["n"] for c in calls] == [1, 1, 1]  # dall-e-3 takes n=1 only
    assert all(c.status == 200 for c in calls)
    assert all(d["revised_prompt"].endswith("a lighthouse") for d in doc["data"])
    prov = doc["modelfleet"]
    assert prov["model"] == "dall-e-3" and prov["images"] == 3 and prov["seeds"] == [None] * 3
    assert prov["cost_usd"] == pytest.approx(3 * 0.12)  # hd 1792x1024, the shipped table
    assert float(headers["X-ModelFleet-Cost-USD"]) == pytest.approx(0.36)
    assert headers["X-ModelFleet-Model"] == "dall-e-3"
    assert dalle3.metric('modelfleet_worker_cost_usd_total{pool="hosted-test"}') >= 0.36


def test_size_reject_lists_allowed_sizes_and_calls_nothing(
    dalle3: Worker, standin: OpenAIImagesStandIn
) -> None:
    status, doc = dalle3.generate({"prompt": "p", "size": "1000x1000"})
    assert status == 400
    assert doc["error"]["param"] == "size"
    assert "1024x1024, 1792x1024, 1024x1792" in doc["error"]["message"]
    assert standin.calls == []


def test_size_nearest_defaults_and_price_override(
    gpt_nearest: Worker, standin: OpenAIImagesStandIn
) -> None:
    status, _, raw = gpt_nearest.request(
        "POST", "/v1/images/generations", {"prompt": "p", "n": 2, "size": "1920x1080"}
    )
    assert status == 200, raw
    doc = json.loads(raw)
    assert [png_size(im) for im in _images(doc)] == [(1536, 1024)] * 2
    (call,) = standin.calls_to("/images/generations")
    assert call.fields == {
        "model": "gpt-image-1", "prompt": "p", "n": 2, "size": "1536x1024", "quality": "low",
    }  # fmt: skip
    assert doc["modelfleet"]["cost_usd"] == pytest.approx(1.0)  # the pool's override


def test_refusal_is_422_and_counted_apart(dalle3: Worker, standin: OpenAIImagesStandIn) -> None:
    before = dalle3.metric('modelfleet_worker_provider_refusals_total{pool="hosted-test"}')
    status, doc = dalle3.generate({"prompt": "some forbidden-content here"})
    assert status == 422
    assert doc["error"]["code"] == "content_policy_violation"
    after = dalle3.metric('modelfleet_worker_provider_refusals_total{pool="hosted-test"}')
    assert after == before + 1
    assert (
        dalle3.metric('modelfleet_worker_requests_total{endpoint="generations",outcome="refused"}')
        >= 1
    )
    # the adapter stays ready: a refusal is the prompt's fault, not the pool's
    assert dalle3.request("GET", "/readyz")[0] == 200


def test_provider_5xx_is_502(dalle3: Worker, standin: OpenAIImagesStandIn) -> None:
    standin.add_fault("error", status=503)
    status, doc = dalle3.generate({"prompt": "p"})
    assert status == 502 and doc["error"]["code"] == "provider_error"
    assert dalle3.generate({"prompt": "p"})[0] == 200  # one fault, one answer


def test_429_answered_at_once_without_hammering(standin: OpenAIImagesStandIn) -> None:
    w = start_adapter(standin, "dall-e-3")
    try:
        standin.add_fault("rate_limit", count=None, retry_after_s=30)
        status, headers, raw = w.request("POST", "/v1/images/generations", {"prompt": "p"})
        assert status == 429 and json.loads(raw)["error"]["code"] == "rate_limited"
        assert 29 <= int(headers["Retry-After"]) <= 30
        t0 = time.monotonic()
        for _ in range(10):
            s, h, _ = w.request("POST", "/v1/images/generations", {"prompt": "p", "n": 2})
            assert s == 429 and int(h["Retry-After"]) >= 28
        assert time.monotonic() - t0 < 5  # answered at once, not waited out
        assert len(standin.calls) == 1  # the provider was asked once
        waits = w.metric('modelfleet_worker_rate_limit_waits_total{reason="provider_retry_after"}')
        assert waits == 10
    finally:
        w.stop()


def test_token_bucket_and_concurrency_cap(standin: OpenAIImagesStandIn) -> None:
    w = start_adapter(standin, "dall-e-2", max_concurrency=2, requests_per_minute=600)
    try:
        standin.add_fault("slow", count=None, delay_s=0.3)
        with ThreadPoolExecutor(6) as pool:
            results = list(pool.map(lambda _: w.generate({"prompt": "p", "n": 1}), range(6)))
        statuses = sorted(s for s, _ in results)
        # 600/min = a burst of 10: all six go, two at a time at the provider
        assert statuses == [200] * 6
        assert standin.max_in_flight == 2
    finally:
        w.stop()
    standin.clear()
    w = start_adapter(standin, "dall-e-2", requests_per_minute=2)
    try:
        assert w.generate({"prompt": "p"})[0] == 200
        status, headers, _ = w.request("POST", "/v1/images/generations", {"prompt": "p"})
        assert status == 429 and int(headers["Retry-After"]) >= 25  # 2/min: next token in 30 s
        assert len(standin.calls) == 1
        assert w.metric('modelfleet_worker_rate_limit_waits_total{reason="token_bucket"}') == 1
    finally:
        w.stop()


def test_quota_exhausted_makes_the_adapter_unready(standin: OpenAIImagesStandIn) -> None:
    w = start_adapter(standin, "dall-e-3")
    try:
        standin.add_fault("quota")
        t0 = time.time()
        status, headers, raw = w.request("POST", "/v1/images/generations", {"prompt": "p"})
        assert status == 429 and json.loads(raw)["error"]["code"] == "quota_exhausted"
        assert int(headers["Retry-After"]) >= 3500
        status, _, raw = w.request("GET", "/readyz")
        doc = json.loads(raw)
        assert status == 503 and doc["status"] == "quota_exhausted"
        assert t0 + 3500 < doc["until"] < time.time() + 3601
        # further requests are turned away without calling the provider
        assert w.generate({"prompt": "p"})[1]["error"]["code"] == "quota_exhausted"
        assert len(standin.calls) == 1
        assert w.metric("modelfleet_worker_ready") == 0
    finally:
        w.stop()


def test_url_answers_are_downloaded_within_a_timeout(standin: OpenAIImagesStandIn) -> None:
    # openai-compatible sends no response_format: dall-e-2 then answers URLs.
    w = start_adapter(standin, "dall-e-2", backend="openai-compatible", download_timeout_s=1)
    try:
        status, doc = w.generate({"prompt": "p", "n": 2, "size": "512x512"})
        assert status == 200, doc
        assert [png_size(im) for im in _images(doc)] == [(512, 512)] * 2
        assert "response_format" not in standin.calls[0].fields
        assert len(standin.images) == 2  # it did answer URLs
        standin.add_fault("slow_url", delay_s=3)
        t0 = time.monotonic()
        status, doc = w.generate({"prompt": "p", "size": "512x512"})
        assert status == 502 and "within 1s" in doc["error"]["message"]
        assert time.monotonic() - t0 < 2.9
    finally:
        w.stop()


def _multipart(fields: dict[str, str], files: dict[str, bytes]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    out = b""
    for k, v in fields.items():
        out += f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
    for k, data in files.items():
        out += (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"; filename="{k}.png"\r\n'
                "Content-Type: image/png\r\n\r\n"
            ).encode()
            + data
            + b"\r\n"
        )
    return out + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _post_form(w: Worker, fields: dict[str, str], files: dict[str, bytes]) -> tuple[int, Any]:
    body, ctype = _multipart(fields, files)
    req = urllib.request.Request(w.url + "/v1/images/edits", data=body, method="POST")
    req.add_header("Content-Type", ctype)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_edits_pass_to_the_provider_or_say_unsupported(
    gpt_nearest: Worker, dalle3: Worker, standin: OpenAIImagesStandIn
) -> None:
    image = png(64, 64, 1)
    status, doc = _post_form(
        gpt_nearest, {"prompt": "add a hat", "n": "2", "size": "1024x1024"},
        {"image": image, "mask": png(64, 64, 2)},
    )  # fmt: skip
    assert status == 200, doc
    assert len(doc["data"]) == 2
    (call,) = standin.calls_to("/images/edits")
    assert call.fields["files"] == {"image": 1, "mask": 1} and call.fields["n"] == 2
    status, doc = _post_form(dalle3, {"prompt": "add a hat"}, {"image": image})
    assert status == 400 and doc["error"]["code"] == "edits_unsupported"
    assert doc["error"]["param"] == "image"
    assert len(standin.calls_to("/images/edits")) == 1


def test_key_never_leaks(standin: OpenAIImagesStandIn) -> None:
    wrong = "sk-wrong-" + uuid.uuid4().hex  # the stand-in quotes a wrong key, masked
    w = start_adapter(standin, "dall-e-3", key=wrong)
    bodies: list[str] = []
    try:
        for body in ({"prompt": "p"}, {"prompt": "p", "size": "1x1"}, {"prompt": 3}):
            bodies.append(w.request("POST", "/v1/images/generations", body)[2].decode())
        assert json.loads(bodies[0])["error"]["code"] == "provider_error"
        assert "credentials" in json.loads(bodies[0])["error"]["message"]
        standin.add_fault("error")
        bodies.append(w.request("POST", "/v1/images/generations", {"prompt": "p"})[2].decode())
        bodies.append(w.metrics())
        bodies.append(w.request("GET", "/readyz")[2].decode())
        with open(f"/proc/{w.proc.pid}/cmdline", "rb") as f:
            bodies.append(f.read().decode(errors="replace"))
    finally:
        w.stop()
    bodies.append(w.log())
    wait_for(lambda: standin.calls, timeout=5, what="the provider was called")
    for text in bodies:
        assert wrong not in text
        assert wrong[-4:] not in text  # not even the masked tail the provider quoted


@pytest.mark.parametrize(
    ("backend", "model", "key", "says"),
    [
        ("openai", "dall-e-3", "", "MODELFLEET_PROVIDER_API_KEY is not set"),
        ("openai", "dall-e-9", KEY, "unknown provider model 'dall-e-9'"),
        ("nope", "m", KEY, "unknown backend 'nope'"),
    ],
)
def test_refuses_to_start_on_bad_config(
    standin: OpenAIImagesStandIn, backend: str, model: str, key: str, says: str
) -> None:
    w = hosted_fixtures.start_adapter(backend, model, standin.base_url, key, wait=False)
    assert w.proc.wait(30) == 2
    assert says in w.log()


def test_sigterm_drains_and_exits_0(standin: OpenAIImagesStandIn) -> None:
    w = start_adapter(standin, "dall-e-2")
    standin.add_fault("slow", delay_s=1.0)
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(w.generate, {"prompt": "p"})
        wait_for(lambda: standin.in_flight == 1, timeout=10, what="the call reached the provider")
        w.proc.terminate()
        assert pending.result(timeout=10)[0] == 200  # the running request is finished
    assert w.proc.wait(10) == 0


def test_a_failed_call_of_a_split_request_fails_it_but_its_images_are_billed(
    dalle3: Worker, standin: OpenAIImagesStandIn
) -> None:
    cost = 'modelfleet_worker_cost_usd_total{pool="hosted-test"}'
    before = dalle3.metric(cost)
    standin.add_fault("error", status=500)
    status, doc = dalle3.generate({"prompt": "p", "n": 3})  # three calls, one answers 500
    assert status == 502, doc
    assert [c.status for c in standin.calls].count(200) == 2
    assert dalle3.metric(cost) == pytest.approx(before + 2 * 0.04)  # standard 1024x1024


def test_x_ratelimit_remaining_0_on_a_success_holds_the_next_calls(
    standin: OpenAIImagesStandIn,
) -> None:
    w = start_adapter(standin, "dall-e-2")
    try:
        standin.budget, standin.budget_reset_s = 2, 40
        assert w.generate({"prompt": "p"})[0] == 200
        assert w.generate({"prompt": "p"})[0] == 200  # answered with 0 requests left
        status, headers, _ = w.request("POST", "/v1/images/generations", {"prompt": "p"})
        assert status == 429 and 39 <= int(headers["Retry-After"]) <= 40
        assert len(standin.calls) == 2  # the third never reached the provider
    finally:
        standin.budget = None
        w.stop()


def test_edit_upload_limits_name_the_part(
    gpt_nearest: Worker, standin: OpenAIImagesStandIn
) -> None:
    big = b"\x89PNG\r\n\x1a\n" + b"\0" * (25 * 1024 * 1024)
    status, doc = _post_form(gpt_nearest, {"prompt": "p"}, {"image": png(8, 8, 1), "mask": big})
    assert status == 413 and doc["error"]["param"] == "mask"
    status, doc = _post_form(gpt_nearest, {"prompt": "p" * 70_000}, {"image": png(8, 8, 1)})
    assert status == 400 and doc["error"]["param"] == "prompt"
    status, doc = _post_form(gpt_nearest, {"prompt": "p"}, {})
    assert status == 400 and doc["error"]["param"] == "image"
    status, doc = _post_form(gpt_nearest, {"prompt": "p"}, {"image": b"GIF89a not accepted"})
    assert status == 400 and doc["error"]["param"] == "image"
    status, _, raw = gpt_nearest.request(
        "POST", "/v1/images/edits", raw=b"--x\r\nbroken", timeout=10
    )  # Content-Type application/json: not multipart
    assert status == 400 and json.loads(raw)["error"]["code"] == "invalid_request"
    assert standin.calls_to("/images/edits") == []
