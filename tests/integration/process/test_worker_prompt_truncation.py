"""Real workers on a tiny SD3 pipeline (CLIP-L, CLIP-G, T5): a prompt past CLIP's
77 tokens is served with X-ModelFleet-Prompt-Truncated naming the encoders that
cut it and the counter per encoder; a pool with truncate false answers 400 naming
`prompt`. Token counts come from the model directory's own tokenizers. The strict
worker also runs with the memory settings on (CPU: offload off, VAE tiling and
slicing on) and still serves."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from worker_fixtures import Worker, _env, start_worker

SETTINGS = {"max_resolution": 64, "max_steps": 2, "verify": "false", "warmup": "false"}
HEADER = "X-ModelFleet-Prompt-Truncated"
LONG = "A shop sign that says GRAND OPENING TODAY in bold red letters " * 2


@pytest.fixture(scope="module")
def sd3_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="mf-prompt-") as root:
        script = (
            "import sys\n"
            "from modelfleet_worker.tiny import TinySpec, write_tiny_pipeline\n"
            "write_tiny_pipeline(sys.argv[1], TinySpec(family='sd3'))\n"
        )
        subprocess.run(
            [sys.executable, "-c", script, root + "/sd3"],
            check=True, capture_output=True, env=_env({}), timeout=180,
        )  # fmt: skip
        yield Path(root) / "sd3"


def _token_counts(model: Path, prompt: str) -> dict[str, int]:
    from transformers import AutoTokenizer

    out = {}
    for sub, name in (("tokenizer", "clip_l"), ("tokenizer_2", "clip_g"), ("tokenizer_3", "t5")):
        tok = AutoTokenizer.from_pretrained(str(model / sub))
        out[name] = len(tok(prompt)["input_ids"])
    return out


@pytest.fixture(scope="module")
def workers(sd3_dir: Path) -> Iterator[dict[str, Worker]]:
    started = {
        "truncate": start_worker(sd3_dir, **SETTINGS),
        # Also the memory settings: on CPU offload is logged as off, the VAE tiles.
        "strict": start_worker(
            sd3_dir,
            truncate="false",
            model_cpu_offload="true",
            vae_tiling="true",
            vae_slicing="true",
            **SETTINGS,
        ),
    }
    try:
        for w in started.values():
            w.wait_ready(timeout=120)
        yield started
    finally:
        for w in started.values():
            w.stop()


def _post(w: Worker, prompt: str) -> tuple[int, dict[str, str], dict[str, object]]:
    body = {"prompt": prompt, "size": "64x64", "steps": 2, "seed": 1}
    status, headers, data = w.request("POST", "/v1/images/generations", body=body, timeout=120)
    return status, headers, json.loads(data)


def _edit(w: Worker, prompt: str, png: bytes) -> tuple[int, dict[str, str], dict[str, object]]:
    boundary = uuid.uuid4().hex
    fields = {"prompt": prompt, "steps": "2", "strength": "0.5", "seed": "3"}
    body = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields.items()
    )
    body += (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="i.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + png
        + f"\r\n--{boundary}--\r\n".encode()
    )
    req = urllib.request.Request(w.url + "/v1/images/edits", data=body, method="POST")
    req.add_header("Content-Type", f"multipart/form-data; boundary={boundary}")
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, dict(r.headers), json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), json.loads(e.read())


def test_truncated_prompt_header_metric_and_refusal(
    sd3_dir: Path, workers: dict[str, Worker]
) -> None:
    counts = _token_counts(sd3_dir, LONG)
    assert counts["clip_l"] > 77 and counts["t5"] <= 256, counts
    w = workers["truncate"]

    status, headers, first = _post(w, "a red cube")
    assert status == 200 and HEADER not in headers
    data = first["data"]
    assert isinstance(data, list)
    png = base64.b64decode(data[0]["b64_json"])

    status, headers, body = _post(w, LONG)
    assert status == 200, body
    assert headers[HEADER] == f"clip_l:77/{counts['clip_l']},clip_g:77/{counts['clip_g']}"
    metrics = w.metrics()
    assert 'modelfleet_worker_prompt_truncated_total{encoder="clip_l"} 1.0' in metrics
    assert 'modelfleet_worker_prompt_truncated_total{encoder="clip_g"} 1.0' in metrics
    assert 'encoder="t5"' not in metrics  # T5 took the whole prompt

    longer = LONG * 3  # past T5's 256 too
    t5_total = _token_counts(sd3_dir, longer)["t5"]
    status, headers, _ = _post(w, longer)
    assert status == 200 and headers[HEADER].endswith(f",t5:256/{t5_total}")

    # Edits count the same way.
    status, headers, body = _edit(w, LONG, png)
    assert status == 200, body
    assert headers[HEADER] == f"clip_l:77/{counts['clip_l']},clip_g:77/{counts['clip_g']}"

    strict = workers["strict"]
    status, _, ok = _post(strict, "a red cube")
    assert status == 200, ok
    status, headers, err = _post(strict, LONG)
    assert status == 400 and HEADER not in headers
    e = err["error"]
    assert isinstance(e, dict) and e["param"] == "prompt" and e["code"] == "prompt_too_long"
    assert f"clip_l takes 77 tokens, the prompt needs {counts['clip_l']}" in e["message"]
    status, _, err = _edit(strict, LONG, png)
    e = err["error"]
    assert status == 400 and isinstance(e, dict) and e["param"] == "prompt", err
    assert "modelfleet_worker_prompt_truncated_total{" not in strict.metrics()
    log = strict.log()
    assert "model_cpu_offload needs CUDA" in log
    assert "placement: cpu offload False, vae tiling True, vae slicing True" in log
    assert "placement: cpu offload False, vae tiling False, vae slicing False" in w.log()
