"""Config (flags vs env), VAE pairing checks, URI parsing and the Dockerfile."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from modelfleet_worker.cli import build_parser
from modelfleet_worker.compat import DenoiserSpec, VaeSpec, check_pairing
from modelfleet_worker.config import SETTINGS, resolve_config
from modelfleet_worker.fetch import FetchError, cache_path, parse_uri

ROOT = Path(__file__).resolve().parents[2]
OPERATOR_ENV = [
    "MODEL", "HOST", "PORT", "MAX_BATCH_SIZE", "MAX_LATENCY_MS", "MEMORY_AWARE",
    "MAX_RESOLUTION", "MAX_STEPS", "DTYPE", "FAMILY", "VAE", "REVISION", "CACHE_DIR",
    "POOL", "DEVICE", "FAULT_LATENCY_MS", "FAULT_ERROR_RATE", "MAX_QUEUE", "COMPILE",
    "CHANNELS_LAST",
]  # fmt: skip


def parse(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(["serve", *argv])


def test_env_names_the_operator_uses_exist() -> None:
    names = {s.env for s in SETTINGS}
    for n in OPERATOR_ENV:
        assert f"MODELFLEET_WORKER_{n}" in names


def test_help_documents_every_env_var(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse(["--help"])
    text = capsys.readouterr().out.replace("\n", " ")
    for s in SETTINGS:
        assert s.env in re.sub(r"\s+", "", text) or s.env in text


def test_flag_wins_over_env_and_env_over_default() -> None:
    env = {"MODELFLEET_WORKER_PORT": "9000", "MODELFLEET_WORKER_MAX_BATCH_SIZE": "2"}
    cfg = resolve_config(parse(["--port", "9100"]), env)
    assert cfg.port == 9100
    assert cfg.max_batch_size == 2
    assert cfg.max_latency_ms == 80
    assert cfg.memory_aware is True
    assert cfg.host == "0.0.0.0"


def test_bad_env_names_the_variable() -> None:
    with pytest.raises(ValueError, match="MODELFLEET_WORKER_DTYPE"):
        resolve_config(parse([]), {"MODELFLEET_WORKER_DTYPE": "fp8"})
    with pytest.raises(ValueError, match="MODELFLEET_WORKER_MEMORY_AWARE"):
        resolve_config(parse([]), {"MODELFLEET_WORKER_MEMORY_AWARE": "maybe"})


def test_bool_env() -> None:
    cfg = resolve_config(parse([]), {"MODELFLEET_WORKER_COMPILE": "true"})
    assert cfg.compile is True


SD_UNET = DenoiserSpec("unet", 4, 64, None, False)
SD_VAE = VaeSpec(4, (128, 256, 512, 512), 512)


def test_pairing_ok_for_sd15() -> None:
    c = check_pairing(SD_UNET, SD_VAE, "sd15")
    assert not c.errors and not c.warnings
    assert (c.vae_scale_factor, c.size_multiple, c.default_size) == (8, 8, 512)


def test_pairing_names_both_shapes() -> None:
    c = check_pairing(SD_UNET, VaeSpec(16, (128, 256, 512, 512), 512), "sd15")
    assert len(c.errors) == 1
    assert "(B, 16, 64, 64)" in c.errors[0] and "(B, 4, 64, 64)" in c.errors[0]


def test_pairing_scale_factor_for_known_family() -> None:
    c = check_pairing(SD_UNET, VaeSpec(4, (128, 256, 512), 256), "sd15")
    assert any("scale factor is 4" in e for e in c.errors)
    assert not check_pairing(SD_UNET, VaeSpec(4, (128, 256, 512), 256), "custom").errors


def test_finetuned_vae_sample_size_only_warns() -> None:
    c = check_pairing(SD_UNET, VaeSpec(4, (128, 256, 512, 512), 256), "sd15")
    assert not c.errors and c.warnings


def test_flux_packing_and_multiple() -> None:
    c = check_pairing(
        DenoiserSpec("transformer", 64, None, None, True), VaeSpec(16, (1,) * 4, 1024), "flux"
    )
    assert not c.errors
    assert c.size_multiple == 16


@pytest.mark.parametrize(
    ("uri", "scheme", "loc", "rev"),
    [
        ("/models/x", "file", "/models/x", None),
        ("file:///models/x", "file", "/models/x", None),
        ("hf://org/name", "hf", "org/name", None),
        ("hf://org/name@v1", "hf", "org/name", "v1"),
        ("s3://bucket/a/b", "s3", "bucket/a/b", None),
        ("pvc://claim/sd15", "file", "/models/claim/sd15", None),
    ],
)
def test_parse_uri(uri: str, scheme: str, loc: str, rev: str | None) -> None:
    ref = parse_uri(uri)
    assert (ref.scheme, ref.location, ref.revision) == (scheme, loc, rev)


@pytest.mark.parametrize("uri", ["", "ftp://x/y", "hf://a/b/c", "s3:///nobucket"])
def test_parse_uri_rejects(uri: str) -> None:
    with pytest.raises(FetchError):
        parse_uri(uri)


def test_cache_path_is_stable() -> None:
    assert cache_path(parse_uri("hf://org/name@v1"), "/c") == Path("/c/hf/org--name/v1")


def test_s3_without_minio_is_clear(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import builtins

    from modelfleet_worker import fetch as fetch_mod

    real_import = builtins.__import__

    def no_minio(name: str, *a: object, **k: object) -> object:
        if name == "minio":
            raise ImportError("no minio")
        return real_import(name, *a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", no_minio)
    with pytest.raises(FetchError, match="need the `minio` package"):
        fetch_mod.fetch("s3://bucket/model", str(tmp_path))


def _dockerfile() -> list[tuple[str, str]]:
    text = (ROOT / "worker_image" / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def test_dockerfile() -> None:
    import json

    ins = _dockerfile()
    users = [a for op, a in ins if op == "USER"]
    assert users, "no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "must run as a numeric non-root UID"
    entry = [a for op, a in ins if op == "ENTRYPOINT"][-1]
    assert json.loads(entry) == ["modelfleet-worker", "serve"]
    assert any(op == "EXPOSE" and "8080" in a for op, a in ins)
    for op, args in ins:
        if op == "COPY":
            parts = [p for p in shlex.split(args) if not p.startswith("--")]
            for src in parts[:-1]:
                assert (ROOT / src).exists(), f"COPY source {src} missing"
    run = " ".join(a for op, a in ins if op == "RUN")
    assert "[worker]" in run and "/var/cache/modelfleet" in run
