"""The real adapter process (`modelfleet-worker serve --backend ideogram`) against the
strict Ideogram stand-in on loopback: V_3 multipart and legacy JSON, image URLs
downloaded (without the key), n split, seeds, rendering speed and its price,
refusals, rate limits, download timeouts, errors, and the key kept in its header."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from modelfleet_dev.standins.adapter import Adapter
from modelfleet_dev.standins.common import in_thread, png_size
from modelfleet_dev.standins.ideogram_api import IdeogramStandIn

KEY = "ideogram-test-key-9f8e7d6c-secret"


@pytest.fixture(scope="module")
def ideo() -> Iterator[IdeogramStandIn]:
    with in_thread(IdeogramStandIn(KEY)) as s:
        yield s


@pytest.fixture
def fresh(ideo: IdeogramStandIn) -> IdeogramStandIn:
    ideo.clear()
    ideo.download_headers.clear()
    return ideo


def _adapter(ideo: IdeogramStandIn, model: str, **env: str) -> Adapter:
    settings = {
        "MODELFLEET_WORKER_REQUEST_TIMEOUT_S": "5",
        "MODELFLEET_WORKER_DOWNLOAD_TIMEOUT_S": "1",
        **env,
    }
    return Adapter("ideogram", model, ideo.url, KEY, env=settings).start()


@pytest.fixture(scope="module")
def v3(ideo: IdeogramStandIn) -> Iterator[Adapter]:
    a = _adapter(ideo, "V_3")
    yield a
    a.stop()


def images(body: dict[str, Any]) -> list[bytes]:
    return [base64.b64decode(d["b64_json"]) for d in body["data"]]


def test_v3_splits_n_above_eight_downloads_the_urls_and_bills_per_image(
    v3: Adapter, fresh: IdeogramStandIn
) -> None:
    status, headers, body = v3.generate(
        {"prompt": 'a sign that says "OPEN"', "n": 10, "size": "1312x736", "seed": 5}
    )
    assert status == 200, body
    got = images(body)
    assert [png_size(i) for i in got] == [(1312, 736)] * 10
    calls = sorted(fresh.calls_to("/v1/ideogram-v3/generate"), key=lambda c: c.fields["seed"])
    assert [(c.fields["num_images"], c.fields["seed"]) for c in calls] == [(8, 5), (2, 13)]
    assert {c.fields["size"] for c in calls} == {(1312, 736)}
    assert body["modelfleet"]["seeds"] == list(range(5, 15))
    assert fresh.downloads == 10
    # The image URLs are fetched without the key: it goes to the API, nowhere else.
    assert fresh.download_headers and all("Api-Key" not in h for h in fresh.download_headers)
    assert body["modelfleet"]["cost_usd"] == pytest.approx(10 * 0.06)  # DEFAULT speed
    assert float(headers["X-ModelFleet-Cost-USD"]) == pytest.approx(0.6)


def test_seed_reproduces_the_image(v3: Adapter, fresh: IdeogramStandIn) -> None:
    first = images(v3.generate({"prompt": "a poster", "seed": 77})[2])
    again = images(v3.generate({"prompt": "a poster", "seed": 77})[2])
    other = images(v3.generate({"prompt": "a poster", "seed": 78})[2])
    assert first == again != other


@pytest.mark.parametrize(
    ("env", "ask", "speed", "usd"),
    [
        (
            {"MODELFLEET_WORKER_PROVIDER_DEFAULTS": '{"rendering_speed": "TURBO"}'},
            {},
            "TURBO",
            0.03,
        ),
        (
            {"MODELFLEET_WORKER_PROVIDER_DEFAULTS": '{"rendering_speed": "TURBO"}'},
            {"rendering_speed": "QUALITY"},
            "QUALITY",
            0.09,
        ),  # the client's field wins over the pool default
        ({}, {"quality": "low"}, "TURBO", 0.03),
        ({"MODELFLEET_WORKER_PRICE_OVERRIDES": "0.5"}, {}, "DEFAULT", 0.5),
    ],
)
def test_rendering_speed_from_pool_default_or_client_and_its_price(
    ideo: IdeogramStandIn,
    fresh: IdeogramStandIn,
    env: dict[str, str],
    ask: dict[str, Any],
    speed: str,
    usd: float,
) -> None:
    adapter = _adapter(ideo, "V_3", **env)
    try:
        status, _, body = adapter.generate({"prompt": "a label", "n": 2, **ask})
        assert status == 200, body
        assert [c.fields["rendering_speed"] for c in fresh.calls] == [speed]
        assert body["modelfleet"]["cost_usd"] == pytest.approx(2 * usd)
    finally:
        adapter.stop()


@pytest.mark.parametrize(("model", "usd"), [("V_2", 0.08), ("V_2A_TURBO", 0.025)])
def test_legacy_models_use_the_json_generate_endpoint(
    ideo: IdeogramStandIn, fresh: IdeogramStandIn, model: str, usd: float
) -> None:
    adapter = _adapter(ideo, model)
    try:
        status, _, body = adapter.generate(
            {"prompt": "a menu board", "size": "832x1248", "n": 2, "style_type": "DESIGN"}
        )
        assert status == 200, body
        (call,) = fresh.calls
        assert call.path == "/generate"
        assert (call.fields["model"], call.fields["size"]) == (model, (832, 1248))
        assert call.fields["style_type"] == "DESIGN"
        assert [png_size(i) for i in images(body)] == [(832, 1248)] * 2
        assert body["modelfleet"]["cost_usd"] == pytest.approx(2 * usd)
        # V_2A takes no negative prompt: the adapter says so before calling.
        status, _, body = adapter.generate({"prompt": "x", "negative_prompt": "blur"})
        if model.startswith("V_2A"):
            assert (status, body["error"]["param"]) == (400, "negative_prompt")
            assert len(fresh.calls) == 1
        else:
            assert status == 200
            assert fresh.calls[-1].fields["negative_prompt"] == "blur"
    finally:
        adapter.stop()


def test_size_not_rendered_is_400_listing_the_resolutions(
    v3: Adapter, fresh: IdeogramStandIn
) -> None:
    status, _, body = v3.generate({"prompt": "x", "size": "1920x1080"})
    assert (status, body["error"]["param"]) == (400, "size")
    assert "1312x736" in body["error"]["message"]
    assert fresh.calls == []


def _refusals(adapter: Adapter) -> float:
    _, _, text = adapter.get("/metrics")
    return sum(
        float(s.value)
        for fam in text_string_to_metric_families(text.decode())
        for s in fam.samples
        if s.name == "modelfleet_worker_provider_refusals_total"
    )


def test_safety_check_and_unsafe_images(v3: Adapter, fresh: IdeogramStandIn) -> None:
    before = _refusals(v3)
    status, _, body = v3.generate({"prompt": "forbidden-content here"})
    assert (status, body["error"]["code"]) == (422, "content_policy_violation")  # 422 from Ideogram
    fresh.add_fault("unsafe")
    status, _, body = v3.generate({"prompt": "a shop front"})  # is_image_safe=false, no URL
    assert (status, body["error"]["code"]) == (422, "content_policy_violation")
    fresh.add_fault("unsafe")
    status, _, body = v3.generate({"prompt": "a shop front", "n": 3})
    assert status == 200 and body["modelfleet"]["images"] == 2  # the flagged one left out
    assert body["modelfleet"]["cost_usd"] == pytest.approx(2 * 0.06)
    assert _refusals(v3) == before + 2  # counted apart: the two 422s, not the partial answer
    assert v3.get("/readyz")[0] == 200


def test_rate_limit_answers_at_once_with_the_providers_retry_after(
    ideo: IdeogramStandIn, fresh: IdeogramStandIn
) -> None:
    adapter = _adapter(ideo, "V_3")
    try:
        fresh.add_fault("rate_limit", retry_after_s=20)
        status, headers, body = adapter.generate({"prompt": "x"})
        assert (status, body["error"]["code"]) == (429, "rate_limited")
        assert 15 <= int(headers["Retry-After"]) <= 20
        status, _, _ = adapter.generate({"prompt": "x"})
        assert status == 429 and len(fresh.calls) == 1  # no second provider call
    finally:
        adapter.stop()


@pytest.mark.parametrize(
    ("fault", "kw", "status", "text"),
    [
        ("slow_url", {"delay_s": 3.0}, 502, "download"),  # download timeout 1 s
        ("error", {"status": 500}, 502, "HTTP 500"),
        ("error", {"status": 503}, 502, "HTTP 503"),
    ],
)
def test_download_timeout_and_provider_errors(
    v3: Adapter, fresh: IdeogramStandIn, fault: str, kw: dict[str, Any], status: int, text: str
) -> None:
    fresh.add_fault(fault, **kw)
    got, _, body = v3.generate({"prompt": "x"})
    assert (got, body["error"]["code"]) == (status, "provider_error")
    assert text in body["error"]["message"]
    assert v3.get("/readyz")[0] == 200


def test_a_wrong_key_is_a_credentials_error_and_the_key_is_never_echoed(
    ideo: IdeogramStandIn, fresh: IdeogramStandIn
) -> None:
    wrong = Adapter("ideogram", "V_3", ideo.url, KEY + "-old").start()
    good = _adapter(ideo, "V_2")
    try:
        status, _, body = wrong.generate({"prompt": "x"})
        assert (status, body["error"]["code"]) == (502, "provider_error")
        assert "credentials" in body["error"]["message"]
        bodies = [body] + [good.generate({"prompt": p})[2] for p in ("ok", "forbidden-content")]
        scraped = wrong.get("/metrics")[2] + good.get("/metrics")[2]
        assert KEY.encode() not in scraped
        for a in (wrong, good):
            a.stop()
            for text in (a.log(), json.dumps(bodies), " ".join(a.command())):
                assert KEY not in text
    finally:
        wrong.stop()
        good.stop()


def _image(size: tuple[int, int], transparent_left: bool = False) -> bytes:
    import io

    from PIL import Image

    img = Image.new("RGBA", size, (200, 30, 30, 255))
    if transparent_left:
        for x in range(size[0] // 2):
            for y in range(size[1]):
                img.putpixel((x, y), (0, 0, 0, 0))
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def _edit(adapter: Adapter, fields: dict[str, str], files: dict[str, bytes]) -> tuple[int, Any]:
    b = "editboundary"
    parts = [
        f'--{b}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields.items()
    ]
    parts += [
        f'--{b}\r\nContent-Disposition: form-data; name="{k}"; filename="{k}.png"\r\n'
        "Content-Type: image/png\r\n\r\n".encode()
        + data
        + b"\r\n"
        for k, data in files.items()
    ]
    req = urllib.request.Request(
        f"{adapter.url}/v1/images/edits",
        data=b"".join(parts) + f"--{b}--\r\n".encode(),
        headers={"Content-Type": f"multipart/form-data; boundary={b}"},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_v3_edit_sends_the_mask_as_ideogram_reads_it(
    ideo: IdeogramStandIn, v3: Adapter, fresh: IdeogramStandIn
) -> None:
    image, mask = _image((320, 192)), _image((320, 192), transparent_left=True)
    fields = {"prompt": "paint the left half blue", "n": "2", "seed": "9"}
    status, body = _edit(v3, fields, {"image": image, "mask": mask})
    assert status == 200, body
    (call,) = fresh.calls_to("/v1/ideogram-v3/edit")
    # The Images API's transparent half is the black half of Ideogram's mask.
    assert call.fields["black_fraction"] == 0.5
    assert (call.fields["size"], call.fields["num_images"], call.fields["seed"]) == (
        (320, 192),
        2,
        9,
    )
    assert [png_size(i) for i in images(body)] == [(320, 192)] * 2
    assert body["modelfleet"]["cost_usd"] == pytest.approx(2 * 0.06)
    # No mask, a mask of another size: 400 naming mask, before any call.
    for files in ({"image": image}, {"image": image, "mask": _image((64, 64), True)}):
        status, body = _edit(v3, {"prompt": "x"}, files)
        assert (status, body["error"]["param"]) == (400, "mask"), body
    assert len(fresh.calls) == 1
    legacy = _adapter(ideo, "V_2")
    try:
        status, body = _edit(legacy, {"prompt": "x"}, {"image": image, "mask": mask})
        assert (status, body["error"]["code"]) == (400, "edits_unsupported")
    finally:
        legacy.stop()


# -- the stand-in is as strict as the service ----------------------------------------


def _post(url: str, data: bytes, ctype: str, key: str | None = KEY) -> tuple[int, Any]:
    headers = {"Content-Type": ctype, **({"Api-Key": key} if key else {})}
    req = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _multipart(fields: dict[str, str]) -> tuple[bytes, str]:
    b = "standinboundary"
    parts = [
        f'--{b}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
        for k, v in fields.items()
    ]
    return ("".join(parts) + f"--{b}--\r\n").encode(), f"multipart/form-data; boundary={b}"


@pytest.mark.parametrize(
    ("fields", "key", "status", "text"),
    [
        ({"prompt": "x"}, None, 401, "Api-Key"),
        ({"prompt": "x", "size": "1024x1024"}, KEY, 400, "size"),
        ({"prompt": "x", "num_images": "9"}, KEY, 400, "num_images"),
        ({"prompt": "x", "resolution": "1000x1000"}, KEY, 400, "resolution"),
        (
            {"prompt": "x", "resolution": "1024x1024", "aspect_ratio": "1x1"},
            KEY,
            400,
            "aspect_ratio",
        ),
        ({"prompt": "x", "rendering_speed": "FAST"}, KEY, 400, "rendering_speed"),
        ({"prompt": "x", "seed": "abc"}, KEY, 400, "seed"),
    ],
)
def test_standin_v3_rejects_what_the_service_rejects(
    ideo: IdeogramStandIn, fields: dict[str, str], key: str | None, status: int, text: str
) -> None:
    data, ctype = _multipart(fields)
    got, doc = _post(f"{ideo.url}/v1/ideogram-v3/generate", data, ctype, key)
    assert got == status and text in doc["error"]


def test_standin_v3_takes_multipart_only_and_legacy_json_only(ideo: IdeogramStandIn) -> None:
    got, _ = _post(f"{ideo.url}/v1/ideogram-v3/generate", b'{"prompt": "x"}', "application/json")
    assert got == 415
    legacy = {"image_request": {"prompt": "x", "model": "V_2A", "negative_prompt": "y"}}
    got, doc = _post(f"{ideo.url}/generate", json.dumps(legacy).encode(), "application/json")
    assert got == 400 and "negative_prompt" in doc["error"]
    flat = {"prompt": "x", "model": "V_2"}  # not wrapped in image_request
    got, doc = _post(f"{ideo.url}/generate", json.dumps(flat).encode(), "application/json")
    assert got == 400 and "image_request" in doc["error"]
    ok = {"image_request": {"prompt": "x", "model": "V_2", "aspect_ratio": "ASPECT_16_9"}}
    got, doc = _post(f"{ideo.url}/generate", json.dumps(ok).encode(), "application/json")
    assert got == 200 and doc["data"][0]["resolution"] == "1312x736" and doc["data"][0]["url"]
