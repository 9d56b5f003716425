"""Real worker subprocesses serving tiny SDXL, SD3 (Turbo-style) and Flux pipelines:
generation at the family's default size, batch invariance, size rules and the
oversized request (400 naming size), negative prompts per family, and a worker
given a foreign VAE refusing to start with both latent shapes named."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from polling import wait_for
from worker_fixtures import Worker, decode_png, start_worker

FAMILIES = ("sdxl", "sd3", "flux")
PIXEL_TOLERANCE = 2  # as the sd15 worker test: float32 CPU sums in another order
SETTINGS: dict[str, Any] = {
    "max_batch_size": 4,
    "max_latency_ms": 150,
    "max_resolution": 128,
    "max_steps": 4,
    "dtype": "float16",  # CPU falls back to float32
    "verify": "false",
}


@pytest.fixture(scope="module")
def model_dirs() -> Iterator[dict[str, Path]]:
    # One subprocess writes every family (diffusers' import is paid once).
    with tempfile.TemporaryDirectory(prefix="mf-worker-families-") as root:
        script = (
            "import sys\n"
            "from modelfleet_worker.tiny import TinySpec, write_tiny_pipeline\n"
            "for f in sys.argv[2:]:\n"
            "    write_tiny_pipeline(sys.argv[1] + '/' + f, TinySpec(family=f))\n"
        )
        # The CLI writes a Flux pipeline paired with SDXL's VAE, at the same time.
        bad = Path(root) / "flux-sdxl-vae"
        cli = [sys.executable, "-m", "modelfleet_worker.cli", "tiny-model", "--out", str(bad)]
        procs = [
            subprocess.Popen([sys.executable, "-c", script, root, *FAMILIES]),
            subprocess.Popen([*cli, "--family", "flux", "--vae-family", "sdxl"]),
        ]
        assert [p.wait(180) for p in procs] == [0, 0]
        yield {**{f: Path(root) / f for f in FAMILIES}, "flux-sdxl-vae": bad}


@pytest.fixture(scope="module")
def workers(model_dirs: dict[str, Path]) -> Iterator[dict[str, Worker]]:
    started = {
        "sdxl": start_worker(model_dirs["sdxl"], **SETTINGS),
        "sd3": start_worker(model_dirs["sd3"], turbo="true", **SETTINGS),
        "flux": start_worker(model_dirs["flux"], **SETTINGS),
    }
    try:
        for w in started.values():
            w.wait_ready(timeout=120)
        yield started
    finally:
        for w in started.values():
            w.stop()


def _px(b64: str) -> np.ndarray:
    return np.asarray(decode_png(b64).convert("RGB")).astype(np.int16)


@pytest.mark.parametrize("family", FAMILIES)
def test_generates_at_family_default_size(workers: dict[str, Worker], family: str) -> None:
    status, out = workers[family].generate({"prompt": "a red cube", "steps": 2, "seed": 1})
    assert status == 200, out
    assert decode_png(out["data"][0]["b64_json"]).size == (64, 64)
    assert f"family {family} (" in workers[family].log()


@pytest.mark.parametrize("family", FAMILIES)
def test_alone_vs_batched_within_tolerance(workers: dict[str, Worker], family: str) -> None:
    w = workers[family]
    status, batched = w.generate({"prompt": "a sign", "steps": 2, "n": 3, "seed": 100})
    assert status == 200 and batched["timing"]["batch_size"] == 3, batched
    alone = w.generate({"prompt": "a sign", "steps": 2, "seed": 101})[1]
    assert alone["timing"]["batch_size"] == 1
    b64 = [d["b64_json"] for d in batched["data"]]
    diff = int(np.abs(_px(alone["data"][0]["b64_json"]) - _px(b64[1])).max())
    assert diff <= PIXEL_TOLERANCE, diff
    assert int(np.abs(_px(b64[0]) - _px(b64[1])).max()) > 10 * PIXEL_TOLERANCE


@pytest.mark.parametrize("family", FAMILIES)
def test_requests_batched_together_keep_their_seeds(
    workers: dict[str, Worker], family: str
) -> None:
    w = workers[family]

    def one(seed: int) -> dict[str, Any]:
        status, out = w.generate({"prompt": f"sign {seed}", "steps": 2, "seed": seed})
        assert status == 200, out
        return out

    def pair() -> list[dict[str, Any]]:
        with ThreadPoolExecutor(2) as ex:
            return list(ex.map(one, (5, 6)))

    # Two requests inside one 150 ms batching window share a batch (retried if the
    # shared cores delayed one of them past it).
    outs = wait_for(
        pair,
        timeout=60,
        what="a shared batch",
        until=lambda o: all(x["timing"]["batch_size"] == 2 for x in o),
    )
    alone = one(6)
    assert alone["timing"]["batch_size"] == 1
    a, b = _px(alone["data"][0]["b64_json"]), _px(outs[1]["data"][0]["b64_json"])
    assert int(np.abs(a - b).max()) <= PIXEL_TOLERANCE


@pytest.mark.parametrize(
    ("family", "size", "why"),
    [
        ("sdxl", "256x256", "max_resolution 128"),
        ("sd3", "256x64", "max_resolution 128"),
        ("flux", "64x256", "max_resolution 128"),
        ("sdxl", "68x64", "multiples of 8"),
        ("sd3", "72x64", "multiples of 16"),  # VAE 8 x patch 2
        ("flux", "64x72", "multiples of 16"),  # VAE 8 x packed 2x2
    ],
)
def test_bad_size_answered_400(
    workers: dict[str, Worker], family: str, size: str, why: str
) -> None:
    status, out = workers[family].generate({"prompt": "x", "steps": 1, "size": size})
    assert status == 400, out
    assert out["error"]["param"] == "size" and why in out["error"]["message"], out


def test_sdxl_size_multiple_of_8_accepted(workers: dict[str, Worker]) -> None:
    status, out = workers["sdxl"].generate({"prompt": "x", "steps": 1, "size": "72x64"})
    assert status == 200, out
    assert decode_png(out["data"][0]["b64_json"]).size == (72, 64)


def test_negative_prompt_per_family(workers: dict[str, Worker]) -> None:
    for family in ("sdxl", "sd3"):
        body = {"prompt": "x", "steps": 1, "negative_prompt": "blurry"}
        assert workers[family].generate(body)[0] == 200
    status, out = workers["flux"].generate({"prompt": "x", "steps": 1, "negative_prompt": "b"})
    assert status == 400 and out["error"]["param"] == "negative_prompt", out


def test_turbo_pool_defaults_logged(workers: dict[str, Worker]) -> None:
    assert "family sd3 (StableDiffusion3Pipeline): default 4 steps, guidance 0.0" in (
        workers["sd3"].log()
    )
    assert "family flux (FluxPipeline): default 4 steps, guidance 0.0" in workers["flux"].log()
    assert "family sdxl (StableDiffusionXLPipeline): default 30 steps, guidance 5.0" in (
        workers["sdxl"].log()
    )


def test_foreign_vae_refuses_to_start(model_dirs: dict[str, Path]) -> None:
    """SD3 given SDXL's VAE by URI, and a Flux pipeline the CLI wrote with SDXL's VAE
    (64 packed channels are 16 latent channels; SDXL's VAE makes 4): both exit before
    ready naming both latent shapes. Started together: each pays the diffusers import."""
    bad = [
        start_worker(model_dirs["sd3"], vae=f"file://{model_dirs['sdxl']}", **SETTINGS),
        start_worker(model_dirs["flux-sdxl-vae"], **SETTINGS),
    ]
    try:
        for w in bad:
            wait_for(lambda w=w: w.proc.poll() is not None, timeout=90, what="worker exits")
            assert w.proc.returncode != 0
            log = w.log()
            assert "(B, 4, 8, 8)" in log and "(B, 16, 8, 8)" in log, log
        assert "transformer.in_channels=64" in bad[1].log()
        assert "transformer.in_channels=16" in bad[0].log()
    finally:
        for w in bad:
            w.stop()
