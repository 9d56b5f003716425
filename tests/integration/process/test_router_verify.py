"""The text gate end to end: the real router (subprocess) in front of stand-in workers
that report chosen verification results, and in front of the real text-drawing worker
read by the real OCR."""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from modelfleet_dev.routerproc import RouterProcess, policy
from modelfleet_dev.textrender import corrupts
from polling import wait_for_async
from router_client import metric as sample_sum
from router_client import metrics, post
from worker_fixtures import Worker, decode_png, running_text_workers

pytestmark = pytest.mark.timeout(180)

SIGN = 'a shop sign saying "SALE NOW"'
SOON: dict[str, float] = {"timeout": 5.0, "interval": 0.02}


@pytest.fixture
def router(router: Callable[..., RouterProcess]) -> Callable[..., RouterProcess]:
    """start(routes, endpoints, *args, admission=None): one policy `main` of those routes."""

    def start(
        routes: list[dict[str, Any]],
        endpoints: dict[str, list[str]],
        *args: str,
        admission: dict[str, Any] | None = None,
    ) -> RouterProcess:
        return router([policy(routes, admission=admission)], endpoints, *args)

    return start


async def metric(s: aiohttp.ClientSession, r: RouterProcess, name: str, **labels: str) -> float:
    return sample_sum(await metrics(s, r), name, **labels)


def typo_route(**verify: Any) -> list[dict[str, Any]]:
    return [{"name": "typo", "pool": "typo", "verify": {"minWordAccuracy": 0.9, **verify}}]


# -- with stand-in workers --------------------------------------------------------------


async def test_failed_render_rescued_on_the_onfail_pool(
    workers: Any, http: aiohttp.ClientSession, router: Any
) -> None:
    typo, good = await workers("typo", 0.5), await workers("good", 1.0)
    routes = typo_route(onFail={"pool": "good", "guidanceScale": 12, "steps": 40})
    r = router(routes, {"typo": [typo.url], "good": [good.url]})

    status, h, doc, _ = await post(http, r, {"prompt": SIGN, "seed": 7, "steps": 20})
    assert status == 200, doc
    assert h["X-ModelFleet-Verify"] == "rescued"
    assert h["X-ModelFleet-Rerendered"] == "1"
    assert h["X-ModelFleet-Rerender-Pool"] == "good"
    assert h["X-ModelFleet-Rerender-Reason"] == "word_accuracy 0.5 < 0.9 on pool typo"
    assert h["X-ModelFleet-Pool"] == "typo" and "X-ModelFleet-Verify-Reason" not in h
    b = doc["data"][0]["modelfleet"]
    assert (b["passed"], b["status"], b["word_accuracy"]) == (True, "passed", 1.0)
    assert (b["rerendered"], b["attempts"], b["pool"]) == (True, 2, "good")
    assert b["rerender_reason"] == "word_accuracy 0.5 < 0.9 on pool typo"
    # The worker scored at the route's threshold; the re-render took the stronger settings
    # and a seed past the first render's.
    assert typo.bodies == [{"prompt": SIGN, "seed": 7, "steps": 20, "min_word_accuracy": 0.9}]
    assert good.bodies == [
        {
            "prompt": SIGN,
            "seed": 15,
            "steps": 40,
            "guidance_scale": 12,
            "n": 1,
            "min_word_accuracy": 0.9,
        }
    ]
    assert doc["data"][0]["seed"] == 15
    labels = {"route": "typo", "policy": "main"}
    assert await metric(http, r, "modelfleet_router_text_verified_total", **labels) == 2
    assert await metric(http, r, "modelfleet_router_text_failed_total", pool="typo") == 1
    assert await metric(http, r, "modelfleet_router_text_failed_total", pool="good") == 0
    assert (
        await metric(
            http, r, "modelfleet_router_text_rerendered_total", pool="typo", to_pool="good"
        )
        == 1
    )
    assert await metric(http, r, "modelfleet_router_text_rescued_total", pool="good") == 1
    assert await metric(http, r, "modelfleet_router_text_exhausted_total") == 0
    assert await metric(http, r, "modelfleet_router_requests_total", outcome="ok", pool="typo") == 1


async def test_an_edit_is_gated_too_its_files_resent_as_sent(
    workers: Any, http: aiohttp.ClientSession, router: Any
) -> None:
    typo, good = await workers("typo", 0.5), await workers("good", 1.0)
    routes = typo_route(onFail={"pool": "good", "guidanceScale": 12, "steps": 40})
    r = router(routes, {"typo": [typo.url], "good": [good.url]})
    fd = aiohttp.FormData()
    fd.add_field("image", b"\x89PNG fake image bytes", filename="in.png", content_type="image/png")
    fd.add_field("mask", b"\x89PNG fake mask", filename="mask.png", content_type="image/png")
    for name, value in (("prompt", SIGN), ("seed", "7"), ("steps", "20")):
        fd.add_field(name, value)
    async with http.post(r.url + "/v1/images/edits", data=fd) as resp:
        status, h, doc = resp.status, resp.headers, await resp.json()
    assert status == 200, doc
    assert (h["X-ModelFleet-Verify"], h["X-ModelFleet-Rerender-Pool"]) == ("rescued", "good")
    b = doc["data"][0]["modelfleet"]
    assert (b["passed"], b["rerendered"], b["attempts"], b["pool"]) == (True, True, 2, "good")
    # The client's form went to the first pool as sent; the re-render is that form with
    # the gate's settings, both files again.
    assert typo.bodies == [{"prompt": SIGN, "seed": 7, "steps": 20}]
    assert good.bodies == [
        {"prompt": SIGN, "n": 1, "seed": 15, "steps": 40, "guidance_scale": 12.0,
         "min_word_accuracy": 0.9}
    ]  # fmt: skip
    assert typo.edit_files == good.edit_files == [["image", "mask"]]
    labels = {"route": "typo", "policy": "main"}
    assert await metric(http, r, "modelfleet_router_text_rescued_total", **labels) == 1


async def test_same_pool_with_stronger_settings_and_a_passing_first_render(
    workers: Any, http: aiohttp.ClientSession, router: Any
) -> None:
    typo = await workers("typo", 1.0, scores=[0.5])
    r = router(typo_route(onFail={"guidanceScale": 14}), {"typo": [typo.url]})
    status, h, doc, _ = await post(http, r, {"prompt": "a poster", "text": ["HAPPY MARKET"]})
    assert status == 200, doc
    assert (h["X-ModelFleet-Verify"], h["X-ModelFleet-Rerender-Pool"]) == ("rescued", "typo")
    assert [b.get("guidance_scale") for b in typo.bodies] == [None, 14]
    assert "seed" not in typo.bodies[1]  # the client fixed none: the worker draws a new one

    # Passing at once: nothing re-rendered, said so.
    status, h, doc, _ = await post(http, r, {"prompt": SIGN})
    assert (status, h["X-ModelFleet-Verify"], h["X-ModelFleet-Rerendered"]) == (200, "passed", "0")
    assert doc["data"][0]["modelfleet"]["rerendered"] is False
    assert len(typo.bodies) == 3


async def test_exhausted_returns_the_best_render_marked_failed(
    workers: Any, http: aiohttp.ClientSession, router: Any
) -> None:
    typo = await workers("typo", 0.1, scores=[0.3, 0.6, 0.5])
    r = router(typo_route(maxRerenders=2), {"typo": [typo.url]})
    status, h, doc, _ = await post(http, r, {"prompt": SIGN})
    assert status == 200, doc
    assert (h["X-ModelFleet-Verify"], h["X-ModelFleet-Rerendered"]) == ("failed", "2")
    assert h["X-ModelFleet-Verify-Reason"] == "maxRerenders 2 reached"
    b = doc["data"][0]["modelfleet"]
    assert (b["passed"], b["status"], b["word_accuracy"], b["attempts"]) == (
        False,
        "failed",
        0.6,
        3,
    )
    assert b["exhausted_reason"] == "maxRerenders 2 reached" and b["rerendered"] is True
    assert typo.requests == 3
    assert await metric(http, r, "modelfleet_router_text_exhausted_total", pool="typo") == 1
    assert await metric(http, r, "modelfleet_router_text_failed_total", pool="typo") == 3

    # maxRerenders 0: marked and counted, never rendered again.
    r0 = router(typo_route(maxRerenders=0), {"typo": [typo.url]})
    status, h, doc, _ = await post(http, r0, {"prompt": SIGN})
    assert (status, h["X-ModelFleet-Verify"], h["X-ModelFleet-Rerendered"]) == (200, "failed", "0")
    assert doc["data"][0]["modelfleet"]["exhausted_reason"] == "maxRerenders is 0"
    assert typo.requests == 4


async def test_exhausted_is_an_explicit_error_when_the_route_asks(
    workers: Any, http: aiohttp.ClientSession, router: Any
) -> None:
    typo, good = await workers("typo", 0.5), await workers("good", 0.75)
    r = router(
        typo_route(onFail={"pool": "good"}, onExhausted="error"),
        {"typo": [typo.url], "good": [good.url]},
    )
    status, h, doc, _ = await post(http, r, {"prompt": SIGN})
    assert status == 422, doc
    assert doc["error"]["code"] == "text_verification_failed"
    assert doc["error"]["message"] == (
        "1 of 1 image(s) failed text verification at minWordAccuracy 0.9 "
        "(image 0: best word_accuracy 0.75 after 2 renders); maxRerenders 1 reached"
    )
    assert (h["X-ModelFleet-Verify"], h["X-ModelFleet-Rerendered"]) == ("failed", "1")
    outcome = "text_verification_failed"
    assert await metric(http, r, "modelfleet_router_requests_total", outcome=outcome) == 1
    # The workers answered fine: the pools' error rate is untouched.
    assert await metric(http, r, "modelfleet_router_upstream_requests_total", outcome="ok") == 2


async def test_n_images_are_gated_one_by_one(
    workers: Any, http: aiohttp.ClientSession, router: Any
) -> None:
    typo = await workers("typo", 1.0, scores=[1.0, 0.5, "unreadable", 0.0])
    good = await workers("good", 1.0)
    r = router(typo_route(onFail={"pool": "good"}), {"typo": [typo.url], "good": [good.url]})
    status, h, doc, _ = await post(http, r, {"prompt": SIGN, "n": 4, "seed": 100})
    assert status == 200, doc
    assert h["X-ModelFleet-Verify"] == "rescued"
    # Only the two failed images went again, in one request.
    assert [b["n"] for b in good.bodies] == [2]
    blocks = [d["modelfleet"] for d in doc["data"]]
    assert [b["status"] for b in blocks] == ["passed", "passed", "unreadable", "passed"]
    assert [b["pool"] for b in blocks] == ["typo", "good", "typo", "good"]
    assert [b["attempts"] for b in blocks] == [1, 2, 1, 2]
    assert [d["seed"] for d in doc["data"]] == [100, 108, 102, 109]
    assert blocks[3]["rerender_reason"] == "word_accuracy 0 < 0.9 on pool typo"
    assert await metric(http, r, "modelfleet_router_text_rescued_total", pool="good") == 2


async def test_requests_without_a_gate_pass_through_unread(
    workers: Any, http: aiohttp.ClientSession, router: Any
) -> None:
    typo = await workers("typo", 0.5)
    routes = [
        {"name": "plain", "match": {"tags": ["plain"]}, "pool": "typo"},
        *typo_route(),
    ]
    r = router(routes, {"typo": [typo.url]})
    # A verify route, no expected text: forwarded byte for byte, nothing judged.
    status, h, doc, _ = await post(http, r, {"prompt": "a lighthouse"})
    assert status == 200 and "X-ModelFleet-Verify" not in h
    assert typo.bodies[-1] == {"prompt": "a lighthouse"}
    # No verify on the route: the worker's block is the client's, untouched.
    status, h, doc, _ = await post(http, r, {"prompt": SIGN, "tags": ["plain"]})
    assert status == 200 and "X-ModelFleet-Verify" not in h
    assert doc["data"][0]["modelfleet"]["passed"] is False
    assert "rerendered" not in doc["data"][0]["modelfleet"]
    assert typo.requests == 2
    # `text` is checked before anything is forwarded.
    status, _, doc, _ = await post(http, r, {"prompt": "x", "text": "SALE"})
    assert (status, doc["error"]["param"]) == (400, "text")
    assert "list of strings" in doc["error"]["message"]
    assert typo.requests == 2


async def test_rerenders_hold_the_requests_admission_slot(
    workers: Any, http: aiohttp.ClientSession, router: Any
) -> None:
    typo = await workers("typo", 0.5, delay_s=0.3)
    good = await workers("good", 1.0, delay_s=1.0)
    r = router(
        typo_route(onFail={"pool": "good"}),
        {"typo": [typo.url], "good": [good.url]},
        admission={"maxInFlight": 1, "maxQueue": 0},
    )
    first = asyncio.ensure_future(post(http, r, {"prompt": SIGN}))
    await wait_for_async(lambda: good.in_flight == 1, what="the re-render under way", **SOON)
    # The slot is still taken by the re-render: a second request is refused at once.
    status, h, doc, _ = await post(http, r, {"prompt": SIGN})
    assert (status, doc["error"]["code"]) == (429, "overloaded")
    status, h, doc, _ = await first
    assert (status, h["X-ModelFleet-Verify"]) == (200, "rescued")
    assert (typo.max_in_flight, good.max_in_flight, typo.requests) == (1, 1, 1)


async def test_rerenders_respect_the_request_deadline(
    workers: Any, http: aiohttp.ClientSession, router: Any
) -> None:
    # A first render of 0.6 s leaves 0.4 s of a 1 s deadline: no re-render is started.
    typo = await workers("typo", 0.5, delay_s=0.6)
    good = await workers("good", 1.0)
    endpoints = {"typo": [typo.url], "good": [good.url]}
    r = router(typo_route(onFail={"pool": "good"}), endpoints, "--request-timeout-s", "1")
    status, h, doc, took = await post(http, r, {"prompt": SIGN})
    assert status == 200, doc
    assert h["X-ModelFleet-Verify"] == "failed" and good.requests == 0
    assert h["X-ModelFleet-Verify-Reason"].startswith("request deadline: 0.")
    assert doc["data"][0]["modelfleet"]["passed"] is False
    assert took < 1.0

    # A re-render that hangs is cut at the deadline; the client gets the best render so far.
    typo.delay_s = 0.05
    good.mode = "hang"
    r2 = router(typo_route(onFail={"pool": "good"}), endpoints, "--request-timeout-s", "1.5")
    status, h, doc, took = await post(http, r2, {"prompt": SIGN})
    assert status == 200, doc
    assert h["X-ModelFleet-Verify"] == "failed"
    assert h["X-ModelFleet-Verify-Reason"] == (
        "re-render on pool good stopped: request deadline passed"
    )
    assert doc["data"][0]["modelfleet"]["attempts"] == 1
    assert 1.3 < took < 2.5


# -- with the real text-drawing worker and the real OCR ----------------------------------

PLAIN = "HAPPY MARKET"  # no letters the corruption could swap for a look-alike (O/0, I/1)


@pytest.fixture(scope="module")
def text_pools(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Worker]]:
    tmp = tmp_path_factory.mktemp("textpools")
    with running_text_workers(tmp, {"mangled": 1.0, "clean": 0.0}) as pools:
        yield pools


def _real(route_verify: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "name": "typo",
            "pool": "mangled",
            "verify": {"minWordAccuracy": 1.0, **route_verify},
        }
    ]


async def test_real_ocr_rescues_a_mangled_render_through_the_onfail_pool(
    text_pools: dict[str, Worker], http: aiohttp.ClientSession, router: Any
) -> None:
    seed = 11
    assert corrupts(seed, 1.0)  # the first render is mangled, whatever the seed
    r = router(
        _real({"onFail": {"pool": "clean"}}),
        {name: [w.url] for name, w in text_pools.items()},
    )
    body = {"prompt": f'a market banner "{PLAIN}"', "seed": seed, "size": "512x256"}
    status, h, doc, _ = await post(http, r, body)
    assert status == 200, doc
    assert (h["X-ModelFleet-Verify"], h["X-ModelFleet-Rerender-Pool"]) == ("rescued", "clean")
    b = doc["data"][0]["modelfleet"]
    assert (b["passed"], b["pool"], b["attempts"], b["engine"]) == (True, "clean", 2, "rapidocr")
    assert b["word_accuracy"] == 1.0 and PLAIN in b["read"]
    assert re.fullmatch(r"word_accuracy 0\.\d+ < 1 on pool mangled", b["rerender_reason"])
    assert decode_png(doc["data"][0]["b64_json"]).size == (512, 256)
    # The workers count what they read at the route's threshold.
    assert text_pools["mangled"].metric("modelfleet_worker_text_failed_total") >= 1


async def test_real_ocr_exhausted_best_or_error(
    text_pools: dict[str, Worker], http: aiohttp.ClientSession, router: Any
) -> None:
    endpoints = {name: [w.url] for name, w in text_pools.items()}
    body = {"prompt": "a poster", "text": [PLAIN], "seed": 3, "size": "512x256"}
    r = router(_real({"onFail": {"steps": 30}}), endpoints)
    status, h, doc, _ = await post(http, r, body)
    assert status == 200, doc
    assert (h["X-ModelFleet-Verify"], h["X-ModelFleet-Rerendered"]) == ("failed", "1")
    b = doc["data"][0]["modelfleet"]
    assert (b["passed"], b["status"], b["attempts"], b["pool"]) == (False, "failed", 2, "mangled")
    assert b["word_accuracy"] < 1.0 and b["read"]

    r_err = router(_real({"onExhausted": "error"}), endpoints)
    status, h, doc, _ = await post(http, r_err, body)
    assert (status, doc["error"]["code"]) == (422, "text_verification_failed")
    assert "after 2 renders" in doc["error"]["message"]


async def test_real_worker_scores_at_the_routes_threshold(
    text_pools: dict[str, Worker], http: aiohttp.ClientSession, router: Any
) -> None:
    mangled = text_pools["mangled"]
    failed_before = mangled.metric("modelfleet_worker_text_failed_total")
    r = router(_real({"minWordAccuracy": 0.4}), {"mangled": [mangled.url]})
    body = {"prompt": "a poster", "text": [PLAIN], "seed": 5, "size": "512x256"}
    status, h, doc, _ = await post(http, r, body)
    assert status == 200, doc
    b = doc["data"][0]["modelfleet"]
    # One of two words mangled passes a 0.4 bar, in the worker's own count too.
    assert (h["X-ModelFleet-Verify"], b["passed"], b["min_word_accuracy"]) == ("passed", True, 0.4)
    assert 0.4 <= b["word_accuracy"] < 1.0
    assert mangled.metric("modelfleet_worker_text_failed_total") == failed_before
