"""The worker image, proven from its archive (dist/images/worker-VERSION.oci.tar):
its entrypoint runs from the image's root filesystem as the image's non-root user
(read-only root, no capabilities, writable /tmp and cache as the operator mounts
them), loads a tiny model written by the image's own Python, and answers one
generation. torch makes the image gigabytes, so this runs in `make test-images`
(which builds it first), not in `make test`."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

import oci_image
from modelfleet.builders.modelpool import CACHE_DIR
from modelfleet_dev.routerproc import free_port
from polling import wait_for

if not os.environ.get("MODELFLEET_TEST_WORKER_IMAGE"):
    pytest.skip(
        "the worker image is proven by `make test-images` (MODELFLEET_TEST_WORKER_IMAGE=1)",
        allow_module_level=True,
    )

pytestmark = pytest.mark.timeout(900)
UID = 10001


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[oci_image.Unpacked]:
    missing = oci_image.missing_tools()
    if missing:
        pytest.fail(f"missing {missing}: install them (scripts/prereqs.sh does, as root)")
    yield oci_image.unpack(oci_image.archive("worker"), tmp_path_factory.mktemp("worker-image"))


def writable_dir(path: Path) -> Path:
    """An emptyDir as the pod's fsGroup makes it: owned by the image's user."""
    path.mkdir()
    os.chown(path, UID, UID)
    return path


def test_worker_image_config(image: oci_image.Unpacked) -> None:
    cfg = image.config
    assert cfg.user == f"{UID}:{UID}"
    assert cfg.entrypoint == ["modelfleet-worker", "serve"] and cfg.exposed_ports == ["8080/tcp"]
    assert cfg.env["MODELFLEET_WORKER_CACHE_DIR"] == CACHE_DIR
    assert cfg.labels["org.opencontainers.image.version"] == oci_image.version()
    assert cfg.labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    site = image.rootfs / "opt/venv/lib/python3.11/site-packages"
    assert (site / "torch").is_dir() and (site / "modelfleet_worker").is_dir()
    assert not list(site.glob("modelfleet_dev*"))
    # Hash-based bytecode only (see test_images_router.py): torch's thousands of
    # modules are not recompiled at every start.
    total, stale = oci_image.timestamp_pycs(image.rootfs)
    assert total > 5000 and not stale, (total, stale[:10])


def test_worker_image_serves_a_tiny_model(image: oci_image.Unpacked, tmp_path: Path) -> None:
    models = writable_dir(tmp_path / "models")
    cache = writable_dir(tmp_path / "cache")
    # The image's own Python writes the model: diffusers and torch work as the image user.
    writer = oci_image.run(
        image,
        args=["modelfleet-worker", "tiny-model", "--out", "/models/tiny"],
        mounts=(oci_image.Mount(models, "/models", writable=True),),
        log_path=tmp_path / "tiny.log",
    )
    writer.proc.wait(600)
    assert writer.stop() == 0, writer.log()
    assert (models / "tiny" / "model_index.json").is_file()
    # Text verification's engine loads (OpenCV and onnxruntime with their libraries).
    ocr = oci_image.run(
        image,
        args=[
            "python3",
            "-c",
            "import cv2, onnxruntime, rapidocr_onnxruntime; print(cv2.__version__)",
        ],
        log_path=tmp_path / "ocr.log",
    )
    ocr.proc.wait(300)
    assert ocr.stop() == 0, ocr.log()

    port = free_port()
    worker = oci_image.run(
        image,  # the entrypoint itself, configured as the operator's Deployment does
        env={
            "MODELFLEET_WORKER_MODEL": "file:///models/tiny",
            "MODELFLEET_WORKER_HOST": "127.0.0.1",
            "MODELFLEET_WORKER_PORT": str(port),
            "MODELFLEET_WORKER_POOL": "image-test",
            "MODELFLEET_WORKER_CPU_THREADS": "1",
        },
        mounts=(oci_image.Mount(models, "/models"), oci_image.Mount(cache, CACHE_DIR, True)),
        log_path=tmp_path / "worker.log",
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> int:
            assert worker.running(), worker.log()
            try:
                with urllib.request.urlopen(url + "/readyz", timeout=2) as resp:
                    return int(resp.status)
            except (urllib.error.URLError, ConnectionError):
                return 0

        wait_for(ready, timeout=300, until=lambda s: s == 200, what="worker ready (image)")
        assert worker.uid_gid() == (UID, UID)
        body = json.dumps({"prompt": "a red cube", "size": "64x64", "steps": 2}).encode()
        req = urllib.request.Request(
            url + "/v1/images/generations", body, {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=300) as resp:
            doc = json.loads(resp.read())
            assert resp.status == 200, doc
        assert len(doc["data"]) == 1 and doc["data"][0]["b64_json"]
    finally:
        code = worker.stop()
    assert code == 0, f"worker exited {code} on SIGTERM:\n{worker.log()}"
