"""`modelfleet-worker fetch hf://...` through real huggingface_hub code against a
local stand-in for the Hub API (HF_ENDPOINT), serving the tiny model's files."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from worker_fixtures import _env, tiny_model_dir

REPO = "acme/tiny-sd"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def make_handler(root: Path, seen: list[str]) -> type[BaseHTTPRequestHandler]:
    files = {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}

    class Hub(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _json(self, obj: object) -> None:
            data = json.dumps(obj).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _file(self, body: bool) -> None:
            rel = self.path.split("?")[0].split(f"/{REPO}/resolve/", 1)[1].split("/", 1)[1]
            p = files.get(rel)
            if p is None:
                self.send_response(404)
                self.send_header("X-Error-Code", "EntryNotFound")
                self.end_headers()
                return
            data = p.read_bytes()
            self.send_response(200)
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("ETag", '"' + hashlib.sha1(data).hexdigest() + '"')
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if body:
                self.wfile.write(data)

        def do_HEAD(self) -> None:
            seen.append("HEAD " + self.path)
            self._file(body=False)

        def do_GET(self) -> None:
            seen.append("GET " + self.path)
            path = self.path.split("?")[0]
            if path.startswith(f"/api/models/{REPO}/revision/"):
                self._json(
                    {"id": REPO, "sha": COMMIT, "siblings": [{"rfilename": f} for f in files]}
                )
            elif path.startswith(f"/api/models/{REPO}/tree/"):
                self._json(
                    [
                        {
                            "type": "file",
                            "oid": hashlib.sha1(p.read_bytes()).hexdigest(),
                            "size": p.stat().st_size,
                            "path": f,
                        }
                        for f, p in files.items()
                    ]
                )
            elif f"/{REPO}/resolve/" in path:
                self._file(body=True)
            else:
                self.send_response(404)
                self.end_headers()

    return Hub


@pytest.fixture()
def hub() -> Iterator[tuple[str, list[str]]]:
    seen: list[str] = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(tiny_model_dir(), seen))
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()


def fetch(endpoint: str, cache: Path, offline: bool = False) -> subprocess.CompletedProcess[str]:
    env = _env({"HF_ENDPOINT": endpoint, "HF_HOME": str(cache / "hf-home")})
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "modelfleet_worker.cli", "fetch", "--model", f"hf://{REPO}",
         "--cache-dir", str(cache)],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip


def test_fetch_hf_through_huggingface_hub(hub: tuple[str, list[str]], tmp_path: Path) -> None:
    endpoint, seen = hub
    r = fetch(endpoint, tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    out = Path(r.stdout.strip().splitlines()[-1])
    assert out == tmp_path / "hf" / "acme--tiny-sd" / "main"
    src = tiny_model_dir()
    for f in src.rglob("*"):
        if f.is_file():
            assert (out / f.relative_to(src)).read_bytes() == f.read_bytes()
    assert any(s.startswith("GET /api/models/acme/tiny-sd") for s in seen)

    # serve's fetch step finds the same files without the network.
    r2 = fetch("http://127.0.0.1:9", tmp_path, offline=True)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert Path(r2.stdout.strip().splitlines()[-1]) == out


def test_fetch_missing_file_uri_fails_clearly(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "modelfleet_worker.cli", "fetch", "--model",
         f"file://{tmp_path}/nope", "--cache-dir", str(tmp_path)],
        capture_output=True, text=True, env=_env({}), timeout=60,
    )  # fmt: skip
    assert r.returncode == 2 and "does not exist" in r.stderr
