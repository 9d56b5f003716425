"""Pool pins and the pre-flight replay from real parts: the real router (subprocess,
static config) in front of two text-drawing workers read by the real OCR, and the
operator's replay code sending pinned renders through it."""

from __future__ import annotations

import datetime as dt
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from modelfleet.api.replay import ReplaySpec
from modelfleet.canary.replay import judge
from modelfleet.controllers.replay import Renderer, Target, credential_file, replay
from modelfleet_dev.routerproc import RouterProcess, policy, write_config
from worker_fixtures import Worker, running_text_workers

pytestmark = pytest.mark.timeout(240)

TOKEN = "s3cr3t-operator-token-9f2c41d7"
NS = "default"
GOLDEN = "\n".join(
    [
        '{"prompt": "a banner \\"HAPPY MARKET\\"", "size": "512x256"}',
        '{"prompt": "shop front", "text": ["FRESH BREAD"], "size": "512x256"}',
    ]
)


@pytest.fixture(scope="module")
def text_pools(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Worker]]:
    tmp = tmp_path_factory.mktemp("replay-pools")
    with running_text_workers(tmp, {"clean": 0.0, "mangled": 1.0, "clean2": 0.0}) as ws:
        yield ws


def _router(tmp: Path, pools: dict[str, Worker], *args: str) -> RouterProcess:
    # The route sends everything to `clean`: a pin is the only way to reach the others.
    cfg = write_config(
        tmp / "router.yaml",
        [policy([{"name": "all", "pool": "clean"}])],
        {n: [w.url] for n, w in pools.items()},
    )
    return RouterProcess(cfg, ["--access-log", "--log-level", "DEBUG", *args])


@pytest.fixture(scope="module")
def token_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("secret") / "token"
    p.write_text(TOKEN + "\n")
    return p


@pytest.fixture(scope="module")
def pin_router(
    tmp_path_factory: pytest.TempPathFactory, text_pools: dict[str, Worker], token_file: Path
) -> Iterator[RouterProcess]:
    r = _router(
        tmp_path_factory.mktemp("pin-router"),
        text_pools,
        "--operator-token-file",
        str(token_file),
    )
    try:
        yield r.start()
    finally:
        r.__exit__()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=90)) as s:
        yield s


async def _post(
    s: aiohttp.ClientSession, r: RouterProcess, body: dict[str, Any], headers: dict[str, str]
) -> tuple[int, dict[str, str], dict[str, Any], bytes]:
    async with s.post(r.url + "/v1/images/generations", json=body, headers=headers) as resp:
        raw = await resp.read()
        return resp.status, dict(resp.headers), await resp.json(content_type=None), raw


BODY = {"prompt": 'a banner "HAPPY MARKET"', "seed": 5, "size": "512x256"}


async def test_pin_serves_the_named_pool_reproducibly_and_stays_out_of_stats(
    pin_router: RouterProcess, session: aiohttp.ClientSession
) -> None:
    pin = {"X-ModelFleet-Pool": "mangled", "X-ModelFleet-Operator-Token": TOKEN}
    status, h, doc, _ = await _post(session, pin_router, BODY, pin)
    assert status == 200, doc
    assert (h["X-ModelFleet-Pool"], h["X-ModelFleet-Pinned"]) == ("mangled", "true")
    block = doc["data"][0]["modelfleet"]
    assert block["status"] == "failed" and block["word_accuracy"] < 1.0
    # (prompt, seed, pool) gives the same image again: a report can show it once more.
    again = await _post(session, pin_router, BODY, pin)
    assert again[2]["data"][0]["b64_json"] == doc["data"][0]["b64_json"]
    # The route alone still serves `clean`.
    status, h, doc, _ = await _post(session, pin_router, BODY, {})
    assert status == 200 and h["X-ModelFleet-Pool"] == "clean" and "X-ModelFleet-Pinned" not in h

    async with session.get(pin_router.url + "/v1/stats", params={"window": "300"}) as resp:
        pools = {p["pool"] for p in (await resp.json())["pools"]}
    assert "mangled" not in pools and "clean" in pools  # canary windows never see pins
    async with session.get(pin_router.url + "/metrics") as resp:
        text = await resp.text()
    assert (
        'modelfleet_router_pinned_requests_total{namespace="default",outcome="ok",pool="mangled"} 2.0'
        in text
    )
    assert 'upstream_requests_total{namespace="default",outcome="ok",pool="mangled"}' not in text


@pytest.mark.parametrize(
    ("headers", "says"),
    [
        ({"X-ModelFleet-Pool": "mangled"}, "needs the operator credential in header"),
        (
            {"X-ModelFleet-Pool": "mangled", "X-ModelFleet-Operator-Token": TOKEN[:-1] + "x"},
            "is not the operator's",
        ),
        (
            {"X-ModelFleet-Pool": "mangled", "X-ModelFleet-Operator-Token": TOKEN + TOKEN},
            "is not the operator's",
        ),
    ],
)
async def test_pin_without_the_credential_is_403_naming_the_header(
    pin_router: RouterProcess,
    session: aiohttp.ClientSession,
    headers: dict[str, str],
    says: str,
) -> None:
    status, _, doc, raw = await _post(session, pin_router, BODY, headers)
    assert status == 403
    err = doc["error"]
    assert (err["code"], err["param"]) == ("pin_forbidden", "X-ModelFleet-Pool")
    assert says in err["message"] and "X-ModelFleet-Pool" in err["message"]
    assert TOKEN.encode() not in raw and TOKEN[:12].encode() not in raw


def test_a_router_without_a_credential_refuses_every_pin(
    tmp_path: Path, text_pools: dict[str, Worker]
) -> None:
    import json
    import urllib.error
    import urllib.request

    with _router(tmp_path, text_pools) as r:
        req = urllib.request.Request(
            r.url + "/v1/images/generations",
            data=json.dumps(BODY).encode(),
            headers={
                "Content-Type": "application/json",
                "X-ModelFleet-Pool": "mangled",
                "X-ModelFleet-Operator-Token": TOKEN,
            },
        )
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(req, timeout=30)
        assert info.value.code == 403
        doc = json.loads(info.value.read())
        assert "no operator credential configured" in doc["error"]["message"]


def test_router_refuses_to_start_with_a_missing_credential_file(
    tmp_path: Path, text_pools: dict[str, Worker]
) -> None:
    r = _router(tmp_path, text_pools, "--operator-token-file", str(tmp_path / "nope"))
    with pytest.raises(RuntimeError, match=r"--operator-token-file .*nope: missing or empty"):
        r.start(timeout_s=20)


class _ConfigMaps:
    async def get(self, namespace: str, name: str) -> dict[str, str] | None:
        return {"prompts.jsonl": GOLDEN} if name == "golden" else None


async def _replay(candidate: str, token_file: Path, router: RouterProcess) -> Any:
    spec = ReplaySpec(config_map="golden", seeds=[1, 2], min_ratio_to_stable=0.9)
    target = Target(NS, "main", "clean", candidate)
    async with aiohttp.ClientSession() as s:
        run = await replay(
            spec,
            target,
            ("t0", 1),
            _ConfigMaps(),
            Renderer([router.url], s),
            credential_file(str(token_file)),
            lambda: dt.datetime.now(dt.UTC),
        )
    return judge(spec, "clean", candidate, run, "now")


async def test_replay_fails_a_mangling_candidate_and_passes_a_good_one(
    pin_router: RouterProcess, token_file: Path
) -> None:
    bad = await _replay("mangled", token_file, pin_router)
    assert bad.result == "fail", bad.message
    assert bad.message.startswith("replay: candidate word accuracy ")
    assert "< 0.9 x stable 1 (4 renders each)" in bad.message
    assert bad.stable is not None and bad.candidate is not None
    assert (bad.stable.renders, bad.stable.verified, bad.stable.pass_rate) == (4, 4, 1.0)
    assert bad.candidate.pass_rate == 0.0
    assert bad.golden is not None and bad.golden.prompts == 2
    assert [(r.line, r.seed) for r in bad.renders] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert all(r.candidate.status == "failed" and r.stable.read for r in bad.renders)

    good = await _replay("clean2", token_file, pin_router)
    assert good.result == "pass", good.message
    assert good.message == (
        "replay passed: candidate word accuracy 1 >= 0.9 x stable 1 (4 renders each)"
    )

    # The credential went to the router only: not in any result, nor in the router's log.
    for st in (bad, good):
        assert TOKEN not in st.model_dump_json()
    assert TOKEN not in pin_router.logs() and TOKEN[:12] not in pin_router.logs()


async def test_replay_without_credential_or_golden_set_is_inconclusive(
    pin_router: RouterProcess, tmp_path: Path, token_file: Path
) -> None:
    st = await _replay("mangled", tmp_path / "absent", pin_router)
    assert st.result == "inconclusive"
    assert "the operator has no router credential (--operator-token-file)" in st.message
    spec = ReplaySpec(config_map="other", min_word_accuracy=0.9)
    async with aiohttp.ClientSession() as s:
        run = await replay(
            spec,
            Target(NS, "main", "clean", "mangled"),
            ("t0", 1),
            _ConfigMaps(),
            Renderer([pin_router.url], s),
            credential_file(str(token_file)),
            lambda: dt.datetime.now(dt.UTC),
        )
    assert run.error == "ConfigMap 'other' not found in namespace default"
