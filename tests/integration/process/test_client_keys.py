"""Client keys end to end: the real `openai` SDK against a real router process
(`--client-auth keys`, static config holding digests only) in front of a stand-in worker.
A good key is served; no key, a wrong key and a revoked key (SIGHUP without it) get the
SDK's AuthenticationError; a key outside its tiers gets PermissionDeniedError naming the
field; an anonymous policy serves without one; repeated failures from one address get
429; the key never shows in error bodies, /metrics or the router's log."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import yaml

from modelfleet.routing.clients import key_digest
from modelfleet_dev.routerproc import RouterProcess, policy
from polling import wait_for_async

pytestmark = pytest.mark.timeout(120)

KEY = "mf-proc-key-6b1f0c2e9d8a7f35"
PREVIEW_KEY = "mf-preview-only-0a9c8e7d6b5f"
SECRETS = (KEY, PREVIEW_KEY)


def config(path: Path, worker: str, keys: list[dict[str, Any]]) -> Path:
    open_policy = policy([{"name": "all", "pool": "p"}], name="open")
    open_policy["spec"]["access"] = {"anonymous": True}
    doc = {
        "policies": [policy([{"name": "all", "pool": "p"}], name="main"), open_policy],
        "endpoints": {"p": [worker]},
        "clientKeys": keys,
    }
    path.write_text(yaml.safe_dump(doc))
    return path


KEYS: list[dict[str, Any]] = [
    {"id": "team-a", "sha256": key_digest(KEY).hex()},
    {"id": "previewer", "sha256": key_digest(PREVIEW_KEY).hex(), "tiers": ["preview"]},
]


def no_secret(text: str) -> None:
    for s in SECRETS:
        assert s not in text


async def test_keys_with_the_openai_sdk(
    workers: Callable[..., Any], http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    w = await workers("p")
    cfg = config(tmp_path / "router.yaml", w.url, KEYS)
    args = ["--client-auth", "keys", "--auth-failures-per-minute", "5"]
    with RouterProcess(cfg, args) as r:

        def sdk(key: str) -> openai.AsyncOpenAI:
            return openai.AsyncOpenAI(base_url=r.url + "/v1", api_key=key, max_retries=0)

        good = sdk(KEY)
        img = await good.images.generate(prompt="a red fox", response_format="b64_json")
        assert img.data and img.data[0].b64_json
        assert w.requests == 1
        # /v1/models needs a key too.
        assert [m.id async for m in good.models.list()] == []

        # A wrong key: 401 in OpenAI's shape, the SDK's AuthenticationError.
        with pytest.raises(openai.AuthenticationError) as err:
            await sdk("mf-wrong-key-000000000000").images.generate(prompt="x")
        assert err.value.status_code == 401 and err.value.code == "invalid_api_key"
        no_secret(err.value.response.text)
        assert "mf-wrong-key" not in err.value.response.text
        assert err.value.response.headers["WWW-Authenticate"].startswith("Bearer")

        # No key at all (the SDK always sends one: plain HTTP here).
        async with http.post(r.url + "/v1/images/generations", json={"prompt": "x"}) as resp:
            body = await resp.json()
            assert resp.status == 401 and body["error"]["code"] == "invalid_api_key"
            assert "didn't provide an API key" in body["error"]["message"]

        # Outside its tiers: 403 naming the field and the key id, never the key.
        with pytest.raises(openai.PermissionDeniedError) as denied:
            await sdk(PREVIEW_KEY).images.generate(
                prompt="x", extra_headers={"X-ModelFleet-Tier": "production"}
            )
        e = denied.value.body
        assert isinstance(e, dict)
        assert (e["code"], e["param"]) == ("permission_denied", "tier")
        assert (
            e["message"]
            == "client key 'previewer' may not use tier 'production' (allowed: preview)"
        )
        no_secret(denied.value.response.text)
        await sdk(PREVIEW_KEY).images.generate(
            prompt="x", extra_headers={"X-ModelFleet-Tier": "preview"}
        )

        # The anonymous policy serves without a key (and with an unknown one).
        anon = {"X-ModelFleet-Policy": "open"}
        async with http.post(
            r.url + "/v1/images/generations", json={"prompt": "x"}, headers=anon
        ) as resp:
            assert resp.status == 200, await resp.text()

        # Revoked: the config reloaded without team-a; the old key is refused.
        config(cfg, w.url, KEYS[1:])
        assert r.proc is not None
        r.proc.send_signal(signal.SIGHUP)

        async def refused() -> bool:
            try:
                await good.images.generate(prompt="x")
            except openai.AuthenticationError:
                return True
            return False

        await wait_for_async(refused, timeout=5, what="team-a's key refused after SIGHUP")

        # Per key and per reason on /metrics, by id only.
        async with http.get(r.url + "/metrics") as resp:
            text = await resp.text()
        no_secret(text)
        prefix = "modelfleet_router_client_requests_total"
        assert f'{prefix}{{key="team-a",namespace="default",outcome="ok"}} 1.0' in text
        assert f'{prefix}{{key="previewer",namespace="default",outcome="forbidden"}} 1.0' in text
        assert f'{prefix}{{key="anonymous",namespace="",outcome="ok"}} 1.0' in text
        assert 'modelfleet_router_auth_failures_total{reason="missing_key"} 1.0' in text
        assert "modelfleet_router_client_keys 1.0" in text

        # Failures from this address: 3 or more so far (the revoked key's polls), 5 allowed
        # at once. Then 429, for a good key too, until a token is back (12 s at 5 a minute).
        guesses = 0
        while True:
            try:
                await sdk("mf-guess-00000000000000").images.generate(prompt="x")
            except openai.AuthenticationError:
                guesses += 1
                assert guesses <= 3, "no 429 after 6 failures with a burst of 5"
            except openai.RateLimitError as exc:
                assert exc.code == "too_many_auth_failures"
                break
        with pytest.raises(openai.RateLimitError) as limited:
            await sdk(PREVIEW_KEY).images.generate(prompt="x")
        assert limited.value.code == "too_many_auth_failures"
        assert int(limited.value.response.headers["Retry-After"]) >= 1
        no_secret(limited.value.response.text)
        for c in (good,):
            await c.close()
        logs = r.logs()
    no_secret(logs)
    assert "client keys: clientKeys of" in logs
