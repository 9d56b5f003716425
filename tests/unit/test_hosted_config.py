"""Adapter-mode settings: flags, env vars, defaults, refusals naming the setting."""

from __future__ import annotations

import argparse

import pytest

from modelfleet_worker.config import add_serve_arguments
from modelfleet_worker.hosted.config import DIFFUSERS, add_hosted_arguments, resolve_hosted
from modelfleet_worker.hosted.openai import make_openai
from modelfleet_worker.hosted.registry import BackendSettings

BASE = {"host": "127.0.0.1", "port": 9, "pool": "p", "drain_timeout_s": 5.0}


def _args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_serve_arguments(p)
    add_hosted_arguments(p)
    return p.parse_args(list(argv))


def test_default_is_the_diffusers_worker() -> None:
    assert resolve_hosted(_args(), {}, BASE).backend == DIFFUSERS


def test_flags_win_over_env_and_env_over_defaults() -> None:
    env = {
        "MODELFLEET_WORKER_BACKEND": "openai-compatible",
        "MODELFLEET_WORKER_PROVIDER_MODEL": "m-env",
        "MODELFLEET_WORKER_MAX_CONCURRENCY": "9",
        "MODELFLEET_WORKER_PROVIDER_DEFAULTS": '{"quality": "hd"}',
        "MODELFLEET_WORKER_PRICE_OVERRIDES": "0.03",
    }
    cfg = resolve_hosted(_args("--backend", "openai", "--provider-model", "dall-e-3"), env, BASE)
    assert (cfg.backend, cfg.provider_model, cfg.max_concurrency) == ("openai", "dall-e-3", 9)
    assert cfg.provider_defaults == {"quality": "hd"}
    assert cfg.price_overrides[0].usd_per_image == 0.03
    assert (cfg.port, cfg.pool, cfg.size_policy, cfg.requests_per_minute) == (9, "p", "reject", 0)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"MODELFLEET_WORKER_PROVIDER_DEFAULTS": "[1]"}, "MODELFLEET_WORKER_PROVIDER_DEFAULTS"),
        ({"MODELFLEET_WORKER_PRICE_OVERRIDES": "{"}, "MODELFLEET_WORKER_PRICE_OVERRIDES"),
        ({"MODELFLEET_WORKER_SIZE_POLICY": "closest"}, "MODELFLEET_WORKER_SIZE_POLICY"),
        ({"MODELFLEET_WORKER_MAX_CONCURRENCY": "0"}, "MODELFLEET_WORKER_MAX_CONCURRENCY"),
    ],
)
def test_bad_env_names_the_variable(env: dict[str, str], named: str) -> None:
    env = {"MODELFLEET_WORKER_BACKEND": "openai", "MODELFLEET_WORKER_PROVIDER_MODEL": "x", **env}
    with pytest.raises(ValueError, match=named):
        resolve_hosted(_args(), env, BASE)


def test_a_hosted_backend_needs_a_provider_model() -> None:
    with pytest.raises(ValueError, match="--provider-model"):
        resolve_hosted(_args("--backend", "openai"), {}, BASE)


def test_azure_base_url_takes_the_api_key_header() -> None:
    from modelfleet_worker.hosted.backend import ProviderContext

    backend = make_openai(BackendSettings("gpt-image-1"))
    azure = "https://r.openai.azure.com/openai/deployments/img"
    url, headers = backend._url_and_headers(ProviderContext(None, "k", azure, 1.0), "generations")  # type: ignore[arg-type]
    assert url.startswith(azure + "/images/generations?api-version=") and headers == {
        "api-key": "k"
    }
    url, headers = backend._url_and_headers(
        ProviderContext(None, "k", backend.default_endpoint, 1.0),  # type: ignore[arg-type]
        "generations",
    )
    assert url == "https://api.openai.com/v1/images/generations"
    assert headers == {"Authorization": "Bearer k"}
