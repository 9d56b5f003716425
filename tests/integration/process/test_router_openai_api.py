"""The router's OpenAI Images API surface (issue 14): `model` selects the route, the models
list, edits routed like generations with the multipart body forwarded unchanged, the upload
limit, and the worker's provenance relayed. A real router process (--config) in front of
in-process stand-in workers that record exactly what reached them."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from modelfleet_dev.routerproc import RouterProcess, policy
from polling import wait_for_async
from router_client import metric, metrics

pytestmark = pytest.mark.timeout(120)


@dataclass
class Seen:
    path: str
    content_type: str
    body: bytes


@dataclass
class Stand:
    """A worker stand-in: answers like a worker (contract 1) and keeps every request."""

    name: str
    fail: bool = False
    busy_retry_after: str | None = None  # set: answer 429 with this Retry-After
    hold: asyncio.Event | None = None  # set: answer once it is set
    seen: list[Seen] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        self.seen.append(Seen(request.path, request.headers.get("Content-Type", ""), raw))
        if self.hold is not None:
            await self.hold.wait()
        if self.fail:
            return web.json_response({"error": {"code": "internal", "message": "x"}}, status=500)
        if self.busy_retry_after is not None:
            err = {"error": {"code": "rate_limited", "message": "provider rate limit"}}
            headers = {"Retry-After": self.busy_retry_after}
            return web.json_response(err, status=429, headers=headers)
        meta = {"model": f"{self.name}-model", "revision": "rev-7", "seeds": [11],
                "cost_usd": 0.0125, "images": 1}  # fmt: skip
        return web.json_response(
            {"created": 1, "data": [{"b64_json": "aGk="}], "modelfleet": meta},
            headers={
                "X-ModelFleet-Model": f"{self.name}-model",
                "X-ModelFleet-Revision": "rev-7",
                "X-ModelFleet-Cost-USD": "0.0125",
                "X-Not-Relayed": "1",
            },
        )


@pytest.fixture
async def stands() -> AsyncIterator[Callable[[str], Any]]:
    runners: list[web.AppRunner] = []

    async def make(name: str) -> Stand:
        st = Stand(name)
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/images/generations", st.handle)
        app.router.add_post("/v1/images/edits", st.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        st.url = f"http://127.0.0.1:{port}"
        return st

    yield make
    for r in runners:
        await r.cleanup()


@pytest.fixture
def api_router(tmp_path: Path) -> AsyncIterator[Callable[..., RouterProcess]]:
    procs: list[RouterProcess] = []

    def start(doc: dict[str, Any], *args: str) -> RouterProcess:
        cfg = tmp_path / f"router{len(procs)}.yaml"
        cfg.write_text(yaml.safe_dump(doc))
        r = RouterProcess(cfg, args)
        procs.append(r)
        return r.start()

    yield start  # type: ignore[misc]
    for r in procs:
        r.__exit__()


ROUTES = [
    {"name": "preview", "match": {"tiers": ["preview"]}, "pool": "turbo"},
    {"name": "main", "pool": "sd3", "fallbacks": ["flux"]},
]
# A canary in flight on the main route: the operator's compiled weights.
STATUS = [
    {"name": "preview", "pools": [{"pool": "turbo", "weight": 100}], "fallbacks": []},
    {
        "name": "main",
        "pools": [{"pool": "sd3", "weight": 50}, {"pool": "sd3-next", "weight": 50}],
        "fallbacks": ["flux"],
    },
]
NAMES = {
    "turbo": ["sd3.5-turbo"],
    "sd3": ["sd3.5-medium"],
    "sd3-next": ["sd3.5-medium"],
    "flux": ["flux-schnell"],
}


async def _fleet(
    stands: Any, api_router: Any, *args: str
) -> tuple[RouterProcess, dict[str, Stand]]:
    ws = {n: await stands(n) for n in ("turbo", "sd3", "sd3-next", "flux", "other")}
    doc = {
        "policies": [
            policy(ROUTES, status_routes=STATUS),
            policy([{"name": "only", "pool": "other"}], name="second"),
        ],
        "endpoints": {n: [w.url] for n, w in ws.items()},
        "modelNames": {**NAMES, "other": ["dall-e-3"]},
    }
    return api_router(doc, *args), ws


async def _gen(s: aiohttp.ClientSession, r: RouterProcess, body: Any, **headers: str) -> Any:
    async with s.post(r.url + "/v1/images/generations", json=body, headers=headers) as resp:
        return resp.status, resp.headers, await resp.json(content_type=None)


async def test_model_selects_the_route_with_its_weights(
    stands: Any, api_router: Any, http: aiohttp.ClientSession
) -> None:
    r, ws = await _fleet(stands, api_router)
    pools: dict[str, int] = {}
    for _ in range(60):
        status, h, doc = await _gen(http, r, {"prompt": "a fox", "model": "sd3.5-medium"})
        assert status == 200, doc
        pools[h["X-ModelFleet-Pool"]] = pools.get(h["X-ModelFleet-Pool"], 0) + 1
        assert h["X-ModelFleet-Route"] == "main"
    # The route's canary weights (50/50) apply: both pools serve the name.
    assert set(pools) == {"sd3", "sd3-next"} and min(pools.values()) >= 10, pools
    # The name wins over the tier; the tier still routes when no model is given.
    status, h, _ = await _gen(http, r, {"prompt": "a fox", "model": "sd3.5-turbo"})
    assert (status, h["X-ModelFleet-Pool"]) == (200, "turbo")
    status, h, _ = await _gen(http, r, {"prompt": "a fox", "tier": "preview"})
    assert (status, h["X-ModelFleet-Pool"]) == (200, "turbo")
    status, h, _ = await _gen(http, r, {"prompt": "a fox"})
    assert h["X-ModelFleet-Route"] == "main"
    # `model` is the router's: the worker gets the OpenAI fields without it.
    last = json.loads(ws["turbo"].seen[-1].body)
    assert last == {"prompt": "a fox"}


async def test_unknown_model_is_404_listing_the_policys_names(
    stands: Any, api_router: Any, http: aiohttp.ClientSession
) -> None:
    r, ws = await _fleet(stands, api_router)
    for name in ("gpt-image-1", "flux-schnell", "dall-e-3"):  # fallback-only, other policy
        status, _, doc = await _gen(http, r, {"prompt": "a fox", "model": name})
        assert status == 404, doc
        err = doc["error"]
        assert (err["code"], err["param"]) == ("model_not_found", "model")
        assert "sd3.5-medium, sd3.5-turbo" in err["message"] and name in err["message"]
    status, h, doc = await _gen(
        http, r, {"prompt": "a fox", "model": "dall-e-3"}, **{"X-ModelFleet-Policy": "second"}
    )
    assert (status, h["X-ModelFleet-Pool"]) == (200, "other")
    assert not any(w.seen for w in ws.values() if w.name != "other")
    m = await metrics(http, r)
    assert metric(m, "modelfleet_router_requests_total", outcome="client_error") == 3


async def test_models_list(stands: Any, api_router: Any, http: aiohttp.ClientSession) -> None:
    r, _ = await _fleet(stands, api_router)
    async with http.get(r.url + "/v1/models") as resp:
        assert resp.status == 200
        doc = await resp.json()
    assert doc["object"] == "list"
    assert [m["id"] for m in doc["data"]] == ["sd3.5-medium", "sd3.5-turbo"]
    assert all(set(m) == {"id", "object", "created", "owned_by"} for m in doc["data"])
    assert all(m["object"] == "model" and isinstance(m["created"], int) for m in doc["data"])
    async with http.get(r.url + "/v1/models", headers={"X-ModelFleet-Policy": "second"}) as resp:
        assert [m["id"] for m in (await resp.json())["data"]] == ["dall-e-3"]
    async with http.get(r.url + "/v1/models/sd3.5-turbo") as resp:
        assert (resp.status, (await resp.json())["id"]) == (200, "sd3.5-turbo")
    async with http.get(r.url + "/v1/models/dall-e-3") as resp:
        assert (resp.status, (await resp.json())["error"]["code"]) == (404, "model_not_found")
    async with http.get(r.url + "/v1/models", headers={"X-ModelFleet-Policy": "x"}) as resp:
        assert (resp.status, (await resp.json())["error"]["param"]) == (400, "X-ModelFleet-Policy")


Form = tuple[bytes, str]  # body, Content-Type


def _form(
    prompt: str = "make it night",
    files: int = 1,
    mask: bool = True,
    size: int = 2048,
    **fields: Any,
) -> Form:
    """A multipart body as the OpenAI SDK writes one (httpx: `tags[]` repeated,
    `image[]` for several images), with a random boundary."""
    boundary = os.urandom(16).hex()
    parts: list[tuple[str, bytes, str | None]] = [("prompt", prompt.encode(), None)]
    for k, v in fields.items():
        for item in v if isinstance(v, list) else [v]:
            parts.append((f"{k}[]" if isinstance(v, list) else k, str(item).encode(), None))
    name = "image" if files == 1 else "image[]"
    for i in range(files):
        parts.append((name, b"\x89PNG\r\n\x1a\n" + os.urandom(size), f"img{i}.png"))
    if mask:
        parts.append(("mask", b"\x89PNG\r\n\x1a\n" + os.urandom(64), "m.png"))
    out = bytearray()
    for n, value, filename in parts:
        disp = f'form-data; name="{n}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disp}\r\n".encode()
        if filename:
            out += b"Content-Type: image/png\r\n"
        out += b"\r\n" + value + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"


async def _edit(
    s: aiohttp.ClientSession, r: RouterProcess, form: Form, **headers: str
) -> tuple[int, Any, Any, bytes, str]:
    """(status, headers, JSON, the exact bytes sent, their Content-Type)."""
    body, ctype = form
    async with s.post(
        r.url + "/v1/images/edits", data=body, headers={"Content-Type": ctype, **headers}
    ) as resp:
        return resp.status, resp.headers, await resp.json(content_type=None), body, ctype


async def test_edits_routed_like_generations_body_forwarded_unchanged(
    stands: Any, api_router: Any, http: aiohttp.ClientSession
) -> None:
    r, ws = await _fleet(stands, api_router)
    status, h, doc, sent, ctype = await _edit(
        http, r, _form(model="sd3.5-turbo", n=2, tags=["a", "b"], strength=0.5, files=2)
    )
    assert status == 200, doc
    assert (h["X-ModelFleet-Route"], h["X-ModelFleet-Pool"]) == ("preview", "turbo")
    (seen,) = ws["turbo"].seen
    assert seen.path == "/v1/images/edits"
    assert seen.content_type == ctype and seen.body == sent  # byte for byte, boundary kept
    # Intent routing without a model, tier from the form field or the header.
    status, h, *_ = await _edit(http, r, _form(tier="preview", mask=False))
    assert (status, h["X-ModelFleet-Pool"]) == (200, "turbo")
    status, h, *_ = await _edit(http, r, _form(), **{"X-ModelFleet-Tier": "preview"})
    assert (status, h["X-ModelFleet-Pool"]) == (200, "turbo")
    status, _, doc, *_ = await _edit(http, r, _form(model="nope"))
    assert (status, doc["error"]["code"]) == (404, "model_not_found")


async def test_edit_falls_back_with_the_same_bytes(
    stands: Any, api_router: Any, http: aiohttp.ClientSession
) -> None:
    r, ws = await _fleet(stands, api_router, "--retries-per-pool", "0")
    ws["sd3"].fail = ws["sd3-next"].fail = True
    # Over 1 MiB (the JSON limit): uploads are not bound by it.
    status, h, doc, sent, _ = await _edit(http, r, _form(model="sd3.5-medium", size=3_000_000))
    assert status == 200, doc
    assert (h["X-ModelFleet-Pool"], h["X-ModelFleet-Fallback"]) == ("flux", "true")
    tried = [*ws["sd3"].seen, *ws["sd3-next"].seen, *ws["flux"].seen]
    assert len(tried) == 3 and all(t.body == sent for t in tried)


@pytest.mark.parametrize(
    ("fields", "files", "param"),
    [
        ({"bogus": "1"}, 1, "bogus"),
        ({"n": "two"}, 1, "n"),
        ({"response_format": "url"}, 1, "response_format"),
        ({}, 0, "image"),
    ],
)
async def test_bad_edit_names_the_field(
    stands: Any,
    api_router: Any,
    http: aiohttp.ClientSession,
    fields: dict[str, str],
    files: int,
    param: str,
) -> None:
    r, ws = await _fleet(stands, api_router)
    status, _, doc, *_ = await _edit(http, r, _form(files=files, mask=False, **fields))
    assert (status, doc["error"]["param"]) == (400, param), doc
    async with http.post(r.url + "/v1/images/edits", json={"prompt": "x"}) as resp:
        assert resp.status == 400
        assert "multipart/form-data" in (await resp.json())["error"]["message"]
    assert not any(w.seen for w in ws.values())


@pytest.mark.parametrize("chunked", [False, True])
async def test_upload_limit_names_the_part(
    stands: Any, api_router: Any, http: aiohttp.ClientSession, chunked: bool
) -> None:
    r, ws = await _fleet(stands, api_router, "--max-upload-mb", "1")
    _, _, _, sent, ctype = await _edit(http, r, _form(size=100))  # the form's exact bytes

    body, big_ctype = _form(size=1_100_000)

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 65536):
            yield body[i : i + 65536]

    data: Any = chunks() if chunked else body
    headers = {"Content-Type": big_ctype}
    async with http.post(r.url + "/v1/images/edits", data=data, headers=headers) as resp:
        doc = await resp.json()
        assert resp.status == 413, doc
    assert doc["error"]["param"] == "image", doc
    assert "1048576" in doc["error"]["message"]
    # Just under the limit passes (the small form above did, to the turbo-less main route).
    assert len(sent) < 1024 * 1024 and sum(len(w.seen) for w in ws.values()) == 1
    assert ctype.startswith("multipart/form-data")


async def test_provenance_relayed(
    stands: Any, api_router: Any, http: aiohttp.ClientSession
) -> None:
    r, _ = await _fleet(stands, api_router)
    status, h, doc = await _gen(http, r, {"prompt": "a fox", "model": "sd3.5-turbo"})
    assert status == 200
    assert h["X-ModelFleet-Model"] == "turbo-model"
    assert (h["X-ModelFleet-Revision"], h["X-ModelFleet-Cost-USD"]) == ("rev-7", "0.0125")
    assert h["X-ModelFleet-Pool"] == "turbo" and "X-Not-Relayed" not in h
    assert doc["modelfleet"]["model"] == "turbo-model"  # the worker's block, untouched
    status, h, doc, *_ = await _edit(http, r, _form(model="sd3.5-turbo"))
    assert (status, h["X-ModelFleet-Model"], doc["modelfleet"]["seeds"]) == (
        200,
        "turbo-model",
        [11],
    )


async def test_every_openai_field_accepted_and_forwarded(
    stands: Any, api_router: Any, http: aiohttp.ClientSession
) -> None:
    r, ws = await _fleet(stands, api_router)
    openai_fields = {
        "prompt": "a fox", "n": 1, "size": "1024x1024", "quality": "high", "style": "vivid",
        "response_format": "b64_json", "output_format": "webp", "output_compression": 80,
        "background": "opaque", "moderation": "low", "user": "u-1", "safety_identifier": "h",
        "partial_images": 0, "stream": False, "seed": 5, "steps": 4, "guidance_scale": 3.5,
        "negative_prompt": "blur", "text": ["OPEN"],
    }  # fmt: skip
    extra = {"model": "sd3.5-turbo", "tier": "preview", "tags": ["x"], "asset_id": "cat-1"}
    status, _, doc = await _gen(http, r, {**openai_fields, **extra})
    assert status == 200, doc
    assert json.loads(ws["turbo"].seen[-1].body) == openai_fields
    status, _, doc = await _gen(http, r, {"prompt": "a fox", "frobnicate": True})
    assert (status, doc["error"]["param"]) == (400, "frobnicate")
    assert "unknown field" in doc["error"]["message"]


async def test_busy_workers_retry_after_is_relayed(
    stands: Any, api_router: Any, http: aiohttp.ClientSession
) -> None:
    r, ws = await _fleet(stands, api_router)
    ws["turbo"].busy_retry_after = "2.5"
    status, h, doc = await _gen(http, r, {"prompt": "a fox", "model": "sd3.5-turbo"})
    assert (status, doc["error"]["code"]) == (429, "rate_limited")  # the worker's reason
    # Rounded up: the client never comes back before the provider allows it.
    assert (h["Retry-After"], h["retry-after-ms"]) == ("3", "2500")
    ws["turbo"].busy_retry_after = "0"
    status, h, _ = await _gen(http, r, {"prompt": "a fox", "model": "sd3.5-turbo"})
    assert (status, h["Retry-After"], h["retry-after-ms"]) == (429, "1", "1000")


async def test_upload_memory_budget_sheds_with_429(
    stands: Any, api_router: Any, http: aiohttp.ClientSession
) -> None:
    """Uploads are read before admission, so their memory has its own bound."""
    r, ws = await _fleet(stands, api_router, "--max-uploads-in-flight-mb", "1")
    ws["turbo"].hold = asyncio.Event()
    first = asyncio.ensure_future(_edit(http, r, _form(model="sd3.5-turbo", size=600_000)))

    async def held() -> bool:
        return len(ws["turbo"].seen) == 1

    await wait_for_async(held, timeout=10, interval=0.02)
    status, h, doc, *_ = await _edit(http, r, _form(model="sd3.5-turbo", size=600_000))
    assert (status, doc["error"]["code"], h["Retry-After"]) == (429, "overloaded", "1")
    ws["turbo"].hold.set()
    assert (await first)[0] == 200
    # Released with the first: the next one fits again.
    status, *_ = await _edit(http, r, _form(model="sd3.5-turbo", size=600_000))
    assert status == 200
