"""A gated model through `modelfleet-worker fetch` (real huggingface_hub code) against
a local Hub stand-in that, as the Hub does, answers 401 to a request without a token
(X-Error-Code: GatedRepo) or with a wrong one, and serves the files to the right
Bearer token. The failure names the Secret to set; the token never shows in output."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_worker_fetch import REPO, make_handler

from modelfleet_worker.fetch import refused_message
from worker_fixtures import _env, tiny_model_dir

TOKEN = "hf_" + secrets.token_hex(17)


def gated_handler(root: Path, seen: list[tuple[str, str]]) -> type[BaseHTTPRequestHandler]:
    hub = make_handler(root, [])

    class Gated(hub):  # type: ignore[misc,valid-type]
        def _authorized(self) -> bool:
            auth = self.headers.get("Authorization", "")
            seen.append((self.command, auth))
            if auth == f"Bearer {TOKEN}":
                return True
            if not auth:  # the Hub's answer to an anonymous request for a gated repo
                code, msg = "GatedRepo", f"Access to model {REPO} is restricted."
            else:
                code, msg = "", "Invalid credentials in Authorization header"
            body = json.dumps({"error": msg}).encode()
            self.send_response(401)
            if code:
                self.send_header("X-Error-Code", code)
            self.send_header("X-Error-Message", msg)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
            return False

        def do_GET(self) -> None:
            if self._authorized():
                super().do_GET()

        def do_HEAD(self) -> None:
            if self._authorized():
                super().do_HEAD()

    return Gated


@pytest.fixture()
def gated_hub() -> Iterator[tuple[str, list[tuple[str, str]]]]:
    seen: list[tuple[str, str]] = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), gated_handler(tiny_model_dir(), seen))
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()


def fetch(endpoint: str, cache: Path, extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = _env({"HF_ENDPOINT": endpoint, "HF_HOME": str(cache / "hf-home"), **extra})
    env.pop("HF_TOKEN", None)
    env.update(extra)
    return subprocess.run(
        [sys.executable, "-m", "modelfleet_worker.cli", "fetch", "--model", f"hf://{REPO}",
         "--cache-dir", str(cache)],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip


def test_gated_fetch_without_wrong_and_with_token(
    gated_hub: tuple[str, list[tuple[str, str]]], tmp_path: Path
) -> None:
    endpoint, seen = gated_hub
    r = fetch(endpoint, tmp_path / "a", {})
    assert r.returncode == 2, r.stderr[-3000:]
    assert "the Hub answered 401" in r.stderr
    assert "spec.model.credentials.name to a Secret whose key HF_TOKEN" in r.stderr
    assert seen and all(auth == "" for _, auth in seen)

    seen.clear()
    wrong = "hf_" + secrets.token_hex(17)
    r = fetch(
        endpoint,
        tmp_path / "b",
        {"HF_TOKEN": wrong, "MODELFLEET_WORKER_CREDENTIALS_SECRET": "hub-token"},
    )
    assert r.returncode == 2, r.stderr[-3000:]
    assert "token from Secret 'hub-token'" in r.stderr and "was refused" in r.stderr
    assert wrong not in r.stdout + r.stderr
    assert seen and all(auth == f"Bearer {wrong}" for _, auth in seen)  # it was sent, not shown

    seen.clear()
    r = fetch(
        endpoint,
        tmp_path / "c",
        {"HF_TOKEN": TOKEN, "MODELFLEET_WORKER_CREDENTIALS_SECRET": "hub-token"},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert TOKEN not in r.stdout + r.stderr
    out = Path(r.stdout.strip().splitlines()[-1])
    src = tiny_model_dir()
    for f in src.rglob("*"):
        if f.is_file():
            assert (out / f.relative_to(src)).read_bytes() == f.read_bytes()
    assert any(c == "GET" for c, _ in seen)


@pytest.mark.parametrize(
    ("token_given", "secret", "says"),
    [
        (False, "", "set spec.model.credentials.name to a Secret whose key HF_TOKEN"),
        (False, "hub-token", "no Hub token was given"),  # Secret named but key empty/absent
        (True, "hub-token", "the token from Secret 'hub-token'"),
        (True, "", "the HF_TOKEN given was refused"),
    ],
)
def test_refused_message(token_given: bool, secret: str, says: str) -> None:
    msg = refused_message("hf://acme/gated", 401, token_given, secret)
    assert msg.startswith("hf://acme/gated: the Hub answered 401; ") and says in msg
