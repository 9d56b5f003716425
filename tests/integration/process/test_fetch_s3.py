"""s3:// models through `modelfleet-worker fetch` (the fetch-model init container's
command; real minio client code) against a real S3 server: gofakes3 behind a
Signature V4 check (devtools/modelfleet_dev/s3server, built by `make binaries`),
which refuses a wrong secret, an unknown key id and an unsigned request as S3 does.

The tiny model goes up with the minio client; with the right keys it comes down
byte for byte, and `serve` on the same s3:// URI finds it in the cache without the
network and answers a generation. Wrong keys and no keys fail naming the Secret to
set; no key shows in any output."""

from __future__ import annotations

import io
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from minio import Minio

from modelfleet_dev import binaries

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from worker_fixtures import _env, decode_png, running_worker, tiny_model_dir

ACCESS = "AKIA" + secrets.token_hex(8).upper()
SECRET = secrets.token_urlsafe(30)


def s3_binary() -> Path:
    path = binaries.binary_path("modelfleet-s3")
    if not path.is_file():
        why = f"the S3 test server {path} is not built: run `make binaries`"
        if os.environ.get("CI"):
            pytest.fail(why + " (CI builds it, so this test must run there)")
        pytest.skip(why)
    return path


@dataclass
class S3:
    endpoint: str  # http://host:port
    log: Path

    def client(self) -> Minio:
        return Minio(self.endpoint.removeprefix("http://"), ACCESS, SECRET, secure=False)


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3]:
    log = tmp_path_factory.mktemp("s3") / "s3.log"
    env = dict(os.environ, MODELFLEET_S3_ACCESS_KEY=ACCESS, MODELFLEET_S3_SECRET_KEY=SECRET)
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [s3_binary(), "-bucket", "models", "-public", "open"],
            stdout=subprocess.PIPE,
            stderr=err,
            env=env,
        )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()  # printed once it accepts; "" if it died
        assert line.startswith("listening on http://"), (line, log.read_text())
        server = S3(line.split()[-1], log)
        src = tiny_model_dir()
        client = server.client()
        for f in sorted(src.rglob("*")):
            if f.is_file():
                rel = f.relative_to(src).as_posix()
                for bucket in ("models", "open"):
                    client.fput_object(bucket, f"tiny-sd/{rel}", str(f))
        yield server
    finally:
        proc.terminate()
        proc.wait(10)


def fetch(
    uri: str, cache: Path, extra: dict[str, str], endpoint: str
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in _env({}).items() if not k.startswith("AWS_")}
    env.update({"AWS_ENDPOINT_URL": endpoint, **extra})
    return subprocess.run(
        [sys.executable, "-m", "modelfleet_worker.cli", "fetch", "--model", uri,
         "--cache-dir", str(cache)],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip


def files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


KEYS = {"AWS_ACCESS_KEY_ID": ACCESS, "AWS_SECRET_ACCESS_KEY": SECRET}
NAMED = {"MODELFLEET_WORKER_CREDENTIALS_SECRET": "s3-keys"}


def test_fetch_with_keys_then_serve_from_the_cache(s3: S3, tmp_path: Path) -> None:
    r = fetch("s3://models/tiny-sd", tmp_path, {**KEYS, **NAMED}, s3.endpoint)
    assert r.returncode == 0, r.stderr[-3000:]
    assert ACCESS not in r.stdout + r.stderr and SECRET not in r.stdout + r.stderr
    out = Path(r.stdout.strip().splitlines()[-1])
    assert out == tmp_path / "s3" / "models--tiny-sd"
    assert files(out) == files(tiny_model_dir())  # the same tree, nothing more

    # Complete: the next fetch (serve's, after the init step) needs no store at all.
    r = fetch("s3://models/tiny-sd", tmp_path, {}, "http://127.0.0.1:9")
    assert r.returncode == 0, r.stderr[-3000:]
    assert Path(r.stdout.strip().splitlines()[-1]) == out

    # A file lost from the cache is fetched again, alone.
    lost = next(p for p in sorted(out.rglob("*.json")) if p.name != "model_index.json")
    lost.unlink()
    r = fetch("s3://models/tiny-sd", tmp_path, KEYS, s3.endpoint)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"{len(files(out))} objects, 1 downloaded" in r.stderr
    assert files(out) == files(tiny_model_dir())

    # The worker's own load path on the same URI: cached, loaded, and it generates.
    with running_worker("s3://models/tiny-sd", cache_dir=tmp_path, max_steps=2) as worker:
        status, body = worker.generate({"prompt": "a red cube", "steps": 1, "size": "64x64"})
        assert status == 200, body
        assert decode_png(body["data"][0]["b64_json"]).size == (64, 64)


def test_refused_keys_and_no_keys_name_the_secret(s3: S3, tmp_path: Path) -> None:
    wrong = secrets.token_urlsafe(30)
    r = fetch(
        "s3://models/tiny-sd",
        tmp_path / "a",
        {"AWS_ACCESS_KEY_ID": ACCESS, "AWS_SECRET_ACCESS_KEY": wrong, **NAMED},
        s3.endpoint,
    )
    assert r.returncode == 2, r.stderr[-3000:]
    assert "s3://models/tiny-sd: the store answered 403; the keys from Secret 's3-keys'" in r.stderr
    assert "SignatureDoesNotMatch" in r.stderr
    assert wrong not in r.stdout + r.stderr and ACCESS not in r.stdout + r.stderr

    r = fetch(
        "s3://models/tiny-sd",
        tmp_path / "b",
        {"AWS_ACCESS_KEY_ID": "AKIA" + "0" * 16, "AWS_SECRET_ACCESS_KEY": SECRET, **NAMED},
        s3.endpoint,
    )
    assert r.returncode == 2 and "InvalidAccessKeyId" in r.stderr, r.stderr[-3000:]
    assert "the keys from Secret 's3-keys'" in r.stderr and SECRET not in r.stderr

    # No keys on a private bucket: the store's 403 and the Secret to set.
    r = fetch("s3://models/tiny-sd", tmp_path / "c", {}, s3.endpoint)
    assert r.returncode == 2, r.stderr[-3000:]
    assert "the store answered 403; set spec.model.credentials.name to a Secret" in r.stderr
    assert not (tmp_path / "c" / "s3" / "models--tiny-sd").exists()

    # The signature check is real: the server logged each refusal.
    refusals = s3.log.read_text()
    for code in ("SignatureDoesNotMatch", "InvalidAccessKeyId", "AccessDenied"):
        assert code in refusals


def test_anonymous_public_bucket_and_missing_paths(s3: S3, tmp_path: Path) -> None:
    r = fetch("s3://open/tiny-sd", tmp_path, {}, s3.endpoint)
    assert r.returncode == 0, r.stderr[-3000:]
    assert files(Path(r.stdout.strip().splitlines()[-1])) == files(tiny_model_dir())

    r = fetch("s3://models/nope", tmp_path, KEYS, s3.endpoint)
    assert r.returncode == 2 and "no objects under s3://models/nope" in r.stderr, r.stderr

    r = fetch("s3://absent/tiny-sd", tmp_path, KEYS, s3.endpoint)
    assert r.returncode == 2, r.stderr
    assert "s3://absent/tiny-sd: the store has no such bucket" in r.stderr
    # Keys the cache cannot hold: `prefix//x` would be the absolute path /x; an
    # object named like another's folder. (minio's client refuses `..` itself.)
    client = s3.client()
    for key in ("evil/model_index.json", "evil//etc/passwd", "clash/a", "clash/a/b"):
        client.put_object("models", key, io.BytesIO(b"{}"), 2)
    r = fetch("s3://models/evil", tmp_path / "e", KEYS, s3.endpoint)
    assert r.returncode == 2, r.stderr
    assert "refusing s3 key that escapes the cache: 'evil//etc/passwd'" in r.stderr
    r = fetch("s3://models/clash", tmp_path / "e", KEYS, s3.endpoint)
    assert r.returncode == 2 and "'clash/a/b' cannot be written" in r.stderr, r.stderr

    # (An unreachable endpoint: minio retries for ~8 s; its message is unit-tested.)
