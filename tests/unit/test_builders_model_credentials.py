"""spec.model.credentials and spec.worker.env valueFrom: secretKeyRef env for the
fetch step and the worker (never a value), the stores each source needs, user env
that cannot replace a credential, the validation rules, and the memory/prompt
worker settings as env."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from modelfleet.api.modelpool import ModelPool
from modelfleet.builders import modelpool as build
from modelfleet.builders.modelpool import BuildSettings


def pool(model: dict[str, Any], **spec: Any) -> ModelPool:
    return ModelPool.model_validate(
        {
            "kind": "ModelPool",
            "metadata": {"name": "p", "namespace": "ns", "uid": "u1"},
            "spec": {"model": model, **spec},
        }
    )


def _containers(p: ModelPool) -> tuple[dict[str, Any], dict[str, Any] | None]:
    pod = build.deployment(p, BuildSettings())["spec"]["template"]["spec"]
    init = pod.get("initContainers", [None])[0]
    return pod["containers"][0], init


def _refs(env: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in env
        if "secretKeyRef" in e.get("valueFrom", {})
    }


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        (
            {"source": "hf://stabilityai/sd3.5", "credentials": {"name": "hub"}},
            {"HF_TOKEN": {"name": "hub", "key": "HF_TOKEN"}},
        ),
        (
            {"source": "hf://a/b", "credentials": {"name": "hub", "tokenKey": "token"}},
            {"HF_TOKEN": {"name": "hub", "key": "token"}},
        ),
        (
            {"source": "s3://models/sdxl", "credentials": {"name": "r2"}},
            {
                "AWS_ACCESS_KEY_ID": {"name": "r2", "key": "AWS_ACCESS_KEY_ID"},
                "AWS_SECRET_ACCESS_KEY": {"name": "r2", "key": "AWS_SECRET_ACCESS_KEY"},
                "AWS_ENDPOINT_URL": {"name": "r2", "key": "AWS_ENDPOINT_URL", "optional": True},
                "AWS_REGION": {"name": "r2", "key": "AWS_REGION", "optional": True},
            },
        ),
        (  # an s3 model with a VAE from the Hub: both stores' keys
            {
                "source": "s3://m/x",
                "family": "sdxl",
                "vae": {"source": "hf://madebyollin/sdxl-vae-fp16-fix", "family": "sdxl"},
                "credentials": {
                    "name": "c",
                    "endpointKey": "url",
                    "accessKeyIdKey": "id",
                    "regionKey": "zone",
                },
            },
            {
                "HF_TOKEN": {"name": "c", "key": "HF_TOKEN"},
                "AWS_ACCESS_KEY_ID": {"name": "c", "key": "id"},
                "AWS_SECRET_ACCESS_KEY": {"name": "c", "key": "AWS_SECRET_ACCESS_KEY"},
                "AWS_ENDPOINT_URL": {"name": "c", "key": "url", "optional": True},
                "AWS_REGION": {"name": "c", "key": "zone", "optional": True},
            },
        ),
        ({"source": "hf://a/b"}, {}),
    ],
)
def test_credentials_reach_fetch_and_worker(model: dict[str, Any], expected: Any) -> None:
    worker, init = _containers(pool(model))
    assert init is not None
    for c in (worker, init):
        assert _refs(c["env"]) == expected
        names = {e["name"]: e.get("value") for e in c["env"]}
        if "credentials" in model:
            secret = model["credentials"]["name"]
            assert names[build.CREDENTIALS_SECRET_ENV] == secret
        else:
            assert build.CREDENTIALS_SECRET_ENV not in names


def test_user_env_cannot_replace_a_credential_but_may_take_value_from() -> None:
    p = pool(
        {"source": "hf://a/b", "credentials": {"name": "hub"}},
        worker={
            "env": [
                {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "x", "key": "y"}}},
                {"name": "EXTRA", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "k"}}},
                {"name": "LOG", "value": "debug"},
            ]
        },
    )
    worker, _ = _containers(p)
    env = {e["name"]: e for e in worker["env"]}
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hub", "key": "HF_TOKEN"}
    assert env["EXTRA"] == {
        "name": "EXTRA",
        "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "k", "optional": False}},
    }
    assert env["LOG"] == {"name": "LOG", "value": "debug"}
    # Without spec.model.credentials a user's own secretKeyRef is how a token arrives.
    q = pool(
        {"source": "hf://a/b"},
        worker={
            "env": [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "x", "key": "y"}}}]
        },
    )
    env = {e["name"]: e for e in _containers(q)[0]["env"]}
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "x",
        "key": "y",
        "optional": False,
    }


def test_no_secret_value_anywhere_in_the_objects() -> None:
    p = pool({"source": "hf://a/b", "credentials": {"name": "hub"}})
    text = json.dumps(build.children(p, BuildSettings()))
    worker, init = _containers(p)
    assert init is not None
    assert "HF_TOKEN" not in " ".join(worker["args"] + init["args"])
    # Every credential variable is a reference; only the Secret's name is a literal.
    for c in (worker, init):
        for e in c["env"]:
            if e["name"] in build.CREDENTIAL_ENVS - {build.CREDENTIALS_SECRET_ENV}:
                assert "value" not in e
    assert '"value": "hub"' in text


@pytest.mark.parametrize(
    ("env", "error"),
    [
        (
            {"name": "A", "value": "x", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
            "exactly one of value and valueFrom",
        ),
        ({"name": "A", "valueFrom": {}}, "exactly one of secretKeyRef and configMapKeyRef"),
        (
            {
                "name": "A",
                "valueFrom": {
                    "secretKeyRef": {"name": "s", "key": "k"},
                    "configMapKeyRef": {"name": "c", "key": "k"},
                },
            },
            "exactly one of secretKeyRef and configMapKeyRef",
        ),
        ({"name": "HF_TOKEN", "value": "hf_abc"}, "names a credential"),
        ({"name": "A", "valueFrom": {"secretKeyRef": {"name": "S!", "key": "k"}}}, "pattern"),
    ],
)
def test_env_rules(env: dict[str, Any], error: str) -> None:
    with pytest.raises(ValidationError, match=error):
        pool({"source": "hf://a/b"}, worker={"env": [env]})


def test_credentials_secret_name_rule() -> None:
    with pytest.raises(ValidationError, match="pattern"):
        pool({"source": "hf://a/b", "credentials": {"name": "Not_A_Name"}})


@pytest.mark.parametrize(
    ("worker", "expected"),
    [
        ({}, {}),
        (
            {"modelCpuOffload": True, "vaeTiling": True, "vaeSlicing": True, "truncate": False},
            {
                "MODELFLEET_WORKER_MODEL_CPU_OFFLOAD": "true",
                "MODELFLEET_WORKER_VAE_TILING": "true",
                "MODELFLEET_WORKER_VAE_SLICING": "true",
                "MODELFLEET_WORKER_TRUNCATE": "false",
            },
        ),
        ({"vaeTiling": True}, {"MODELFLEET_WORKER_VAE_TILING": "true"}),
    ],
)
def test_memory_and_prompt_settings_env(worker: dict[str, Any], expected: dict[str, str]) -> None:
    env = build.worker_env(pool({"source": "file:///m"}, worker=worker))
    keys = {
        "MODELFLEET_WORKER_MODEL_CPU_OFFLOAD",
        "MODELFLEET_WORKER_VAE_TILING",
        "MODELFLEET_WORKER_VAE_SLICING",
        "MODELFLEET_WORKER_TRUNCATE",
    }
    got = {e["name"]: e["value"] for e in env if e["name"] in keys}
    assert got == expected
