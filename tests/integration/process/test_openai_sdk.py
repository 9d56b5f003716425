"""The official `openai` SDK (AsyncOpenAI) as the client of a real router process (--config on
loopback) in front of in-process stand-in workers: what a new user does first. Routing,
parameters, the models list, edits' routing and the SDK's error classes and retries.
The images themselves (real tiny diffusers workers) are in test_openai_sdk_images.py."""

from __future__ import annotations

import asyncio
import base64
import io
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml
from aiohttp import BodyPartReader, web
from PIL import Image

from modelfleet_common.errors import error_body
from modelfleet_dev.fakeworker import TINY_PNG_B64, FakeWorker
from modelfleet_dev.routerproc import RouterProcess, policy

pytestmark = pytest.mark.timeout(120)

Start = Callable[..., RouterProcess]


class SdkWorker(FakeWorker):
    """FakeWorker plus POST /v1/images/edits (records each upload's parts) and rate limits
    on demand: the first `busy_first` requests get 429 with `retry_after` seconds."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.edits: list[dict[str, Any]] = []  # field -> str, or (filename, type, bytes)
        self.edit_types: list[str] = []  # each edit's Content-Type as it arrived
        self.busy_first = 0
        self.retry_after = "1"
        self.busy_code = "rate_limited"  # or quota_exhausted: a hosted provider's limits
        self.arrivals: list[float] = []  # time.monotonic() of every request

    def app(self) -> web.Application:
        app = super().app()
        app.router.add_post("/v1/images/edits", self.edit)
        return app

    def _rate_limited(self) -> web.Response | None:
        self.arrivals.append(time.monotonic())
        if self.busy_first <= 0:
            return None
        self.busy_first -= 1
        return web.json_response(
            error_body(self.busy_code, f"{self.name}: slow down"),
            status=429,
            headers={"Retry-After": self.retry_after},
        )

    async def _generate(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        limited = self._rate_limited()
        if limited is not None:
            return limited
        return await super()._generate(request, body)

    async def edit(self, request: web.Request) -> web.Response:
        self.edit_types.append(request.headers.get("Content-Type", ""))
        parts: dict[str, Any] = {}
        reader = await request.multipart()
        async for part in reader:
            assert isinstance(part, BodyPartReader), part  # no nested multipart
            data = await part.read()
            if part.filename is not None:
                value: Any = (part.filename, part.headers.get("Content-Type"), bytes(data))
            else:
                value = data.decode()
            # image[] repeats: keep every one, in order.
            if part.name in parts:
                prev = parts[part.name]
                parts[part.name] = [*(prev if isinstance(prev, list) else [prev]), value]
            else:
                parts[str(part.name)] = value
        self.edits.append(parts)
        limited = self._rate_limited()
        if limited is not None:
            return limited
        n = int(parts.get("n", "1"))
        return web.json_response(
            {
                "created": int(time.time()),
                "data": [{"b64_json": TINY_PNG_B64} for _ in range(n)],
                "worker": self.name,
            },
            headers={"X-Fake-Worker": self.name},
        )


@pytest.fixture
async def workers_sdk() -> Any:
    started: list[SdkWorker] = []

    async def make(name: str) -> SdkWorker:
        w = SdkWorker(name)
        await w.start()
        started.append(w)
        return w

    yield make
    for w in started:
        await w.stop()


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Start]:
    """start(policies, endpoints, model_names=None, *args): a real router on a static
    config whose top-level `modelNames` maps pools to the names clients pass as `model`."""
    procs: list[RouterProcess] = []

    def run(
        policies: list[dict[str, Any]],
        endpoints: dict[str, list[str]],
        model_names: dict[str, list[str]] | None = None,
        *args: str,
    ) -> RouterProcess:
        doc: dict[str, Any] = {"policies": policies, "endpoints": endpoints}
        if model_names is not None:
            doc["modelNames"] = model_names
        cfg = tmp_path / f"router{len(procs)}.yaml"
        cfg.write_text(yaml.safe_dump(doc))
        r = RouterProcess(cfg, args)
        procs.append(r)
        return r.start()

    yield run
    for r in procs:
        r.__exit__()


@pytest.fixture
async def sdk() -> Any:
    """sdk(router, **options): the SDK pointed at the router, closed at the end. No retries
    unless a test asks: a retried 5xx would hide what the router answered."""
    clients: list[openai.AsyncOpenAI] = []

    def make(r: RouterProcess, **kw: Any) -> openai.AsyncOpenAI:
        opts: dict[str, Any] = {"max_retries": 0, "timeout": 30.0, **kw}
        c = openai.AsyncOpenAI(base_url=r.url + "/v1", api_key="sk-unused", **opts)
        clients.append(c)
        return c

    yield make
    for c in clients:
        await c.close()


def png(size: tuple[int, int] = (32, 32), mode: str = "RGB", color: Any = (200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, "PNG")
    return buf.getvalue()


ROUTES = [
    {"name": "fast", "match": {"tiers": ["preview"]}, "pool": "small"},
    {"name": "photo", "match": {"tags": ["photoreal"]}, "pool": "photo"},
    {"name": "all", "pool": "big", "fallbacks": ["spare"]},
]
NAMES = {"big": ["sd3.5-medium"], "small": ["sd3.5-turbo"], "photo": ["flux-dev", "flux.1-dev"]}


async def fleet(make: Any, *pools: str) -> dict[str, SdkWorker]:
    return {p: await make(p) for p in pools}


# -- generations -----------------------------------------------------------------------


async def test_generate_without_model_routes_by_intent(
    workers_sdk: Any, start: Start, sdk: Any
) -> None:
    ws = await fleet(workers_sdk, "big", "small", "photo", "spare")
    r = start([policy(ROUTES)], {p: [w.url] for p, w in ws.items()}, NAMES)
    c = sdk(r)
    cases: list[tuple[dict[str, Any], str]] = [
        ({}, "big"),
        ({"extra_body": {"tier": "preview"}}, "small"),
        ({"extra_headers": {"X-ModelFleet-Tier": "preview"}}, "small"),
        ({"extra_body": {"tags": ["photoreal"]}}, "photo"),
    ]
    for kw, pool in cases:
        raw = await c.images.with_raw_response.generate(prompt="a red cube", **kw)
        assert raw.headers["X-ModelFleet-Pool"] == pool, kw
        res = raw.parse()
        assert isinstance(res, openai.types.ImagesResponse)
        assert res.data and base64.b64decode(res.data[0].b64_json or "")[:4] == b"\x89PNG"
    assert [w.requests for w in ws.values()] == [1, 2, 1, 0]


async def test_generate_with_model_selects_the_pool(
    workers_sdk: Any, start: Start, sdk: Any
) -> None:
    ws = await fleet(workers_sdk, "big", "small", "photo", "spare")
    r = start([policy(ROUTES)], {p: [w.url] for p, w in ws.items()}, NAMES)
    c = sdk(r)
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("sd3.5-medium", {}, "big"),
        # The model decides, whatever the intent would have chosen.
        ("sd3.5-medium", {"extra_body": {"tier": "preview"}}, "big"),
        ("sd3.5-turbo", {}, "small"),
        ("flux-dev", {}, "photo"),
        ("flux.1-dev", {"extra_body": {"tier": "preview"}}, "photo"),
    ]
    for model, kw, pool in cases:
        raw = await c.images.with_raw_response.generate(model=model, prompt="a red cube", **kw)
        assert raw.headers["X-ModelFleet-Pool"] == pool, (model, kw)
        assert raw.parse().data
    assert [ws[p].requests for p in ("big", "small", "photo", "spare")] == [2, 1, 2, 0]


async def test_model_keeps_the_routes_weights_and_fallbacks(
    workers_sdk: Any, start: Start, sdk: Any
) -> None:
    ws = await fleet(workers_sdk, "stable", "canary", "spare", "other")
    gone = await workers_sdk("gone")
    await gone.stop()  # its port refuses: the ladder falls back
    routes = [
        {"name": "sd", "pool": "stable"},
        {"name": "down", "pool": "gone", "fallbacks": ["spare"]},
        {"name": "all", "pool": "other"},
    ]
    weights = [{"name": "sd", "pools": [{"pool": "stable", "weight": 50},
                                        {"pool": "canary", "weight": 50}]},
               {"name": "down", "pools": [{"pool": "gone", "weight": 100}], "fallbacks": ["spare"]},
               {"name": "all", "pools": [{"pool": "other", "weight": 100}]}]  # fmt: skip
    r = start(
        [policy(routes, status_routes=weights)],
        {**{p: [w.url] for p, w in ws.items()}, "gone": [gone.url]},
        {"stable": ["sd3.5-medium"], "canary": ["sd3.5-medium"], "gone": ["old-model"]},
    )
    c = sdk(r)
    seen = []
    for i in range(40):
        raw = await c.images.with_raw_response.generate(model="sd3.5-medium", prompt=f"p{i}")
        seen.append(raw.headers["X-ModelFleet-Pool"])
    # 50/50 over 40 requests: both sides serve (all on one side: p = 2^-39).
    assert set(seen) == {"stable", "canary"}
    assert ws["stable"].requests + ws["canary"].requests == 40 and ws["other"].requests == 0
    raw = await c.images.with_raw_response.generate(model="old-model", prompt="x")
    assert (raw.headers["X-ModelFleet-Pool"], raw.headers["X-ModelFleet-Fallback"]) == (
        "spare",
        "true",
    )


async def test_every_generation_parameter_form(workers_sdk: Any, start: Start, sdk: Any) -> None:
    """Each field of the Images API as the SDK sends it, alone and all together: 200."""
    ws = await fleet(workers_sdk, "big", "small", "photo", "spare")
    r = start([policy(ROUTES)], {p: [w.url] for p, w in ws.items()}, NAMES)
    c = sdk(r)
    forms: list[dict[str, Any]] = [
        {"model": "sd3.5-medium"},
        {"n": 1},
        {"n": 3},
        {"size": "1024x1024"},
        {"size": "1536x1024"},
        {"size": "auto"},
        *({"quality": q} for q in ("low", "medium", "high", "auto", "standard", "hd")),
        *({"style": s} for s in ("vivid", "natural")),
        {"response_format": "b64_json"},
        *({"output_format": f} for f in ("png", "jpeg", "webp")),
        {"output_format": "jpeg", "output_compression": 80},
        *({"background": b} for b in ("transparent", "opaque", "auto")),
        *({"moderation": m} for m in ("low", "auto")),
        {"user": "user-1234"},
        {"safety_identifier": "hashed-user-1234"},
        # What this SDK adds beyond the documented list: accepted (docs/router.md).
        {"stream": False},
        *({"partial_images": k} for k in (0, 3)),
        *({"complexity": k} for k in ("low", "high")),
        {"frame_count": 4, "frame_duration_ms": 100},
        {"svg": {"model": "svg-author"}},
        # ModelFleet's own fields ride in extra_body.
        {"extra_body": {"seed": 42, "steps": 4, "guidance_scale": 5.0}},
        {"extra_body": {"negative_prompt": "blurry", "tier": "production", "tags": ["x"]}},
    ]
    every = {
        "model": "sd3.5-medium",
        "n": 2,
        "size": "1024x1024",
        "quality": "high",
        "style": "natural",
        "response_format": "b64_json",
        "output_format": "png",
        "output_compression": 100,
        "background": "opaque",
        "moderation": "auto",
        "user": "user-1234",
        "extra_body": {"seed": 7, "steps": 2, "negative_prompt": "text"},
    }
    for kw in [*forms, every]:
        try:
            res = await c.images.generate(prompt="a lighthouse at dusk", **kw)
        except openai.APIStatusError as exc:
            raise AssertionError(f"{kw}: {exc.status_code} {exc.body}") from None
        want = kw.get("n", 1)
        assert len(res.data or []) == want, kw
    # What the worker honours reaches it unchanged; the routing fields stay in the router.
    last = ws["big"].bodies[-1]
    assert last["prompt"] == "a lighthouse at dusk"
    assert (last["n"], last["size"], last["seed"], last["steps"]) == (2, "1024x1024", 7, 2)
    assert "tier" not in ws["big"].bodies[-2] and "tags" not in ws["big"].bodies[-2]


async def test_models_list(workers_sdk: Any, start: Start, sdk: Any) -> None:
    ws = await fleet(workers_sdk, "big", "small", "photo", "spare")
    eps = {p: [w.url] for p, w in ws.items()}
    second = policy([{"name": "only", "pool": "spare"}], name="second")
    r = start([policy(ROUTES), second], eps, {**NAMES, "spare": ["tiny-1"]})
    c = sdk(r)
    page = await c.models.list()
    ids = [m.id for m in page.data]
    assert sorted(ids) == ["flux-dev", "flux.1-dev", "sd3.5-medium", "sd3.5-turbo"]
    for m in page.data:
        assert m.object == "model" and isinstance(m.created, int) and m.owned_by
    other = sdk(r, default_headers={"X-ModelFleet-Policy": "second"})
    assert [m.id for m in (await other.models.list()).data] == ["tiny-1"]
    # The names listed are the names that work.
    for mid in ids:
        assert (await c.images.generate(model=mid, prompt="x")).data
    one = await c.models.retrieve("flux.1-dev")
    assert (one.id, one.object) == ("flux.1-dev", "model")
    with pytest.raises(openai.NotFoundError) as info:
        await c.models.retrieve("tiny-1")  # served by the other policy only
    assert info.value.code == "model_not_found"


# -- errors ----------------------------------------------------------------------------


async def test_unknown_model_is_not_found(workers_sdk: Any, start: Start, sdk: Any) -> None:
    ws = await fleet(workers_sdk, "big", "small", "photo", "spare")
    r = start([policy(ROUTES)], {p: [w.url] for p, w in ws.items()}, NAMES)
    c = sdk(r)
    with pytest.raises(openai.NotFoundError) as info:
        await c.images.generate(model="dall-e-3", prompt="x")
    exc = info.value
    assert exc.status_code == 404 and exc.code == "model_not_found"
    assert "dall-e-3" in exc.message
    for name in ("sd3.5-medium", "sd3.5-turbo", "flux-dev"):  # the names available
        assert name in exc.message
    with pytest.raises(openai.NotFoundError) as info:
        await c.images.edit(model="dall-e-2", image=("a.png", png()), prompt="x")
    assert info.value.code == "model_not_found"
    assert sum(w.requests for w in ws.values()) == 0 and not any(w.edits for w in ws.values())


async def test_bad_requests_are_bad_request_errors(
    workers_sdk: Any, start: Start, sdk: Any
) -> None:
    ws = await fleet(workers_sdk, "big", "small", "photo", "spare")
    r = start([policy(ROUTES)], {p: [w.url] for p, w in ws.items()}, NAMES)
    c = sdk(r, max_retries=2)  # a 400 is never retried
    cases: list[tuple[dict[str, Any], str]] = [
        ({"n": 99}, "n"),
        ({"size": "huge"}, "size"),
        ({"response_format": "url"}, "response_format"),
        ({"extra_body": {"colour": "red"}}, "colour"),
        ({"extra_body": {"tier": "gold"}}, "tier"),
    ]
    for kw, param in cases:
        with pytest.raises(openai.BadRequestError) as info:
            await c.images.generate(prompt="x", **kw)
        exc = info.value
        assert exc.status_code == 400 and exc.param == param, (kw, exc.body)
        assert exc.code and exc.message, exc.body
    with pytest.raises(openai.BadRequestError) as info:
        await c.images.generate(prompt="")
    assert info.value.param == "prompt"
    # Streaming is refused in the error shape (images come back whole), not as a stream.
    with pytest.raises(openai.BadRequestError) as info:
        await c.images.generate(prompt="x", stream=True)
    assert info.value.param == "stream"
    assert sum(w.requests for w in ws.values()) == 0


def retry_after_s(exc: openai.APIStatusError) -> float:
    """The delay the SDK will wait: retry-after-ms first, then Retry-After (seconds)."""
    h = exc.response.headers
    return float(h["retry-after-ms"]) / 1000 if "retry-after-ms" in h else float(h["retry-after"])


async def test_rate_limit_is_rate_limit_error_and_retry_after_is_honoured(
    workers_sdk: Any, start: Start, sdk: Any
) -> None:
    w = await workers_sdk("big")
    r = start([policy([{"name": "all", "pool": "big"}])], {"big": [w.url]}, NAMES)
    w.busy_first = 1
    with pytest.raises(openai.RateLimitError) as info:
        await sdk(r).images.generate(prompt="x")
    exc = info.value
    assert exc.status_code == 429 and exc.code
    wait_s = retry_after_s(exc)
    assert 0 < wait_s <= 60, exc.response.headers  # the SDK honours delays up to its maximum
    # With retries, the SDK waits as told between attempts, then succeeds.
    w.busy_first, w.arrivals = 2, []
    t0 = time.monotonic()
    res = await sdk(r, max_retries=2).images.generate(prompt="x")
    assert res.data and len(w.arrivals) == 3
    gaps = [b - a for a, b in zip(w.arrivals, w.arrivals[1:], strict=False)]
    assert all(g >= wait_s * 0.95 for g in gaps), (gaps, wait_s)
    assert time.monotonic() - t0 >= 2 * wait_s * 0.95
    # Fewer retries than rate limits: the error surfaces after 1 + max_retries attempts.
    w.busy_first, w.arrivals = 5, []
    with pytest.raises(openai.RateLimitError):
        await sdk(r, max_retries=1).images.generate(prompt="x")
    assert len(w.arrivals) == 2


# -- edits -----------------------------------------------------------------------------


async def test_edit_routing_and_upload_forwarded_whole(
    workers_sdk: Any, start: Start, sdk: Any
) -> None:
    ws = await fleet(workers_sdk, "big", "small", "photo", "spare")
    r = start([policy(ROUTES)], {p: [w.url] for p, w in ws.items()}, NAMES)
    c = sdk(r)
    image, mask = png((64, 64)), png((64, 64), "RGBA", (0, 0, 0, 0))
    # Without model: intent routing, as for generations.
    raw = await c.images.with_raw_response.edit(
        image=("in.png", image, "image/png"), prompt="make it blue", extra_body={"tier": "preview"}
    )
    assert raw.headers["X-ModelFleet-Pool"] == "small"
    assert raw.parse().data
    # With model and a mask: the model's pool; every part arrives as the SDK sent it.
    raw = await c.images.with_raw_response.edit(
        model="flux-dev",
        image=("in.png", image, "image/png"),
        mask=("mask.png", mask, "image/png"),
        prompt="a window here",
        n=2,
        size="1024x1024",
        user="user-1",
    )
    assert raw.headers["X-ModelFleet-Pool"] == "photo"
    assert len(raw.parse().data or []) == 2
    got = ws["photo"].edits[-1]
    assert got["image"] == ("in.png", "image/png", image)
    assert got["mask"] == ("mask.png", "image/png", mask)
    assert (got["prompt"], got["n"], got["size"], got["model"]) == (
        "a window here",
        "2",
        "1024x1024",
        "flux-dev",
    )
    assert ws["photo"].edit_types[-1].startswith("multipart/form-data; boundary=")
    # Several images (the SDK sends image[] for a list).
    second = png((64, 64), color=(0, 0, 255))
    await c.images.edit(
        model="sd3.5-medium",
        image=[("a.png", image, "image/png"), ("b.png", second, "image/png")],
        prompt="combine",
    )
    parts = ws["big"].edits[-1]
    files = parts.get("image[]", parts.get("image"))
    assert [f[2] for f in files] == [image, second]
    assert [len(w.edits) for w in ws.values()] == [1, 1, 1, 0]


async def test_edit_errors(workers_sdk: Any, start: Start, sdk: Any) -> None:
    w = await workers_sdk("big")
    r = start([policy([{"name": "all", "pool": "big"}])], {"big": [w.url]}, NAMES)
    c = sdk(r)
    with pytest.raises(openai.BadRequestError) as info:
        await c.images.edit(image=("a.png", png()), prompt="x", n=99)
    assert info.value.param == "n"
    with pytest.raises(openai.BadRequestError) as info:
        await c.images.edit(image=("a.png", png()), prompt="x", extra_body={"colour": "red"})
    assert info.value.param == "colour"
    assert not w.edits  # refused in the router, never forwarded
    w.busy_first = 1
    with pytest.raises(openai.RateLimitError):
        await c.images.edit(image=("a.png", png()), prompt="x")
    # Over the router's upload limit: 413 naming the part, the worker never sees it.
    small = start([policy([{"name": "all", "pool": "big"}])], {"big": [w.url]}, NAMES,
                  "--max-upload-mb", "1")  # fmt: skip
    edits = len(w.edits)
    big = png() + bytes(1024 * 1024)  # a PNG head and 1 MiB more: over 1 MB
    with pytest.raises(openai.APIStatusError) as info:
        await sdk(small).images.edit(image=("big.png", big, "image/png"), prompt="x")
    exc = info.value
    assert exc.status_code == 413 and exc.code == "body_too_large" and exc.param == "image"
    assert len(w.edits) == edits


async def test_assets_stay_on_their_pool_under_canary_weights(
    workers_sdk: Any, start: Start, sdk: Any
) -> None:
    """asset_id as an SDK user sends it (extra_body or the header): each asset's later
    generations and edits go where its first render went, whatever the 50/50 weights say."""
    ws = await fleet(workers_sdk, "stable", "canary")
    weights = [{"name": "sd", "pools": [{"pool": "stable", "weight": 50},
                                        {"pool": "canary", "weight": 50}]}]  # fmt: skip
    r = start(
        [policy([{"name": "sd", "pool": "stable"}], status_routes=weights)],
        {p: [w.url] for p, w in ws.items()},
        {"stable": ["sd3.5-medium"], "canary": ["sd3.5-medium"]},
    )
    c = sdk(r)
    homes: dict[str, str] = {}
    for i in range(20):
        raw = await c.images.with_raw_response.generate(
            model="sd3.5-medium", prompt=f"asset {i}", extra_body={"asset_id": f"a-{i}"}
        )
        homes[f"a-{i}"] = raw.headers["X-ModelFleet-Pool"]
        assert raw.headers["X-ModelFleet-Asset-Pool"] == homes[f"a-{i}"]
    assert set(homes.values()) == {"stable", "canary"}  # both sides made assets (p = 2^-19)
    for round_ in range(3):
        for asset, home in homes.items():
            if round_ % 2:
                raw = await c.images.with_raw_response.edit(
                    model="sd3.5-medium",
                    image=("in.png", png(), "image/png"),
                    prompt="again",
                    extra_headers={"X-ModelFleet-Asset": asset},
                )
            else:
                raw = await c.images.with_raw_response.generate(
                    model="sd3.5-medium", prompt="again", extra_body={"asset_id": asset}
                )
            assert raw.headers["X-ModelFleet-Pool"] == home, (asset, round_)
            assert raw.headers["X-ModelFleet-Asset-Moved"] == "false"


async def test_worker_retry_after_reaches_the_sdk(workers_sdk: Any, start: Start, sdk: Any) -> None:
    """A provider's rate limit (the hosted worker's 429 rate_limited) asks for 2 s: the client
    must not be told to come back sooner, or its retries spend the provider's quota."""
    w = await workers_sdk("big")
    r = start([policy([{"name": "all", "pool": "big"}])], {"big": [w.url]}, NAMES)
    w.busy_first, w.retry_after = 1, "2"
    with pytest.raises(openai.RateLimitError) as info:
        await sdk(r).images.generate(prompt="x")
    assert retry_after_s(info.value) >= 2, info.value.response.headers
    assert info.value.code == "rate_limited"  # the provider's reason, not just "busy"
    w.busy_first, w.arrivals = 1, []
    assert (await sdk(r, max_retries=1).images.generate(prompt="x")).data
    assert len(w.arrivals) == 2 and w.arrivals[1] - w.arrivals[0] >= 1.95, w.arrivals
    # An exhausted quota asks for an hour: beyond what the SDK waits, so it gives up at
    # once instead of retrying into the same refusal.
    w.busy_first, w.busy_code, w.retry_after, w.arrivals = 3, "quota_exhausted", "3600", []
    with pytest.raises(openai.RateLimitError) as info:
        await sdk(r, max_retries=2).images.generate(prompt="x")
    assert info.value.code == "quota_exhausted" and retry_after_s(info.value) >= 3600
    assert len(w.arrivals) == 1


async def test_router_shedding_is_rate_limit_error_the_sdk_retries(
    workers_sdk: Any, start: Start, sdk: Any
) -> None:
    w = await workers_sdk("big")
    w.delay_s = 1.0  # the second request arrives while the first holds the only slot
    adm = {"maxInFlight": 1, "maxQueue": 0}
    r = start([policy([{"name": "all", "pool": "big"}], admission=adm)], {"big": [w.url]})
    c = sdk(r)
    got = await asyncio.gather(
        c.images.generate(prompt="first"), c.images.generate(prompt="second"),
        return_exceptions=True,
    )  # fmt: skip
    shed = [g for g in got if isinstance(g, openai.RateLimitError)]
    assert len(shed) == 1 and shed[0].code == "overloaded", got
    assert w.requests == 1
    # With retries the SDK comes back after the router's Retry-After, and both are served.
    retrying = sdk(r, max_retries=3)
    both = await asyncio.gather(
        retrying.images.generate(prompt="a"), retrying.images.generate(prompt="b")
    )
    assert all(res.data for res in both) and w.requests == 3
