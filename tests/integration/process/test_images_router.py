"""The operator/router image, proven from its archive (dist/images, `make image-modelfleet`):
the router entrypoint runs from the image's root filesystem as the image's non-root
user, read-only root, no capabilities, and serves a static config in front of a
stand-in worker. Its operator entrypoint is proven against the API server in
tests/integration/cluster/test_images_operator.py."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

import oci_image
from modelfleet_dev.fakeworker import FakeWorker
from modelfleet_dev.routerproc import free_port, policy, write_config
from polling import wait_for_async

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[oci_image.Unpacked]:
    missing = oci_image.missing_tools()
    if missing:
        pytest.fail(f"missing {missing}: install them (scripts/prereqs.sh does, as root)")
    yield oci_image.unpack(oci_image.archive("modelfleet"), tmp_path_factory.mktemp("image"))


@pytest.fixture
async def worker() -> AsyncIterator[FakeWorker]:
    w = FakeWorker("in-front")
    await w.start()
    yield w
    await w.stop()


def test_image_config_and_labels(image: oci_image.Unpacked) -> None:
    cfg = image.config
    assert cfg.user == "10001:10001"
    assert cfg.entrypoint == [] and cfg.cmd == ["modelfleet", "operator"]
    assert cfg.exposed_ports == ["8080/tcp", "8081/tcp"]
    assert cfg.labels["org.opencontainers.image.version"] == oci_image.version()
    assert cfg.labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert cfg.labels["org.opencontainers.image.source"].startswith("https://github.com/")
    # Nothing of the build machine or the dev tools is in the image.
    site = image.rootfs / "opt/venv/lib/python3.11/site-packages"
    assert (site / "modelfleet").is_dir() and (site / "modelfleet_common").is_dir()
    assert not list(site.glob("modelfleet_dev*")) and not (site / "torch").exists()
    assert not (image.rootfs / "etc/pip.conf").exists()
    assert not (image.rootfs / "src").exists()
    # No build-time state that differs from build to build (apt lists and logs, ldconfig's cache).
    assert not list((image.rootfs / "var/lib/apt/lists").glob("*_*"))
    assert not (image.rootfs / "var/cache/ldconfig/aux-cache").exists()
    assert not (image.rootfs / "var/log/dpkg.log").exists()
    # Bytecode stays valid in the built image: every .pyc hash-based, none recording
    # an mtime that the build's fixed file times made stale (each start would
    # recompile every module, and could not save it on the read-only root).
    total, stale = oci_image.timestamp_pycs(image.rootfs)
    assert total > 1000 and not stale, (total, stale[:10])


async def test_router_serves_a_static_config(
    image: oci_image.Unpacked, worker: FakeWorker, tmp_path: Path
) -> None:
    config = tmp_path / "config"
    config.mkdir()
    write_config(
        config / "router.yaml", [policy([{"name": "all", "pool": "p"}])], {"p": [worker.url]}
    )
    port = free_port()
    listen = ["--host", "127.0.0.1", "--port", str(port)]
    container = oci_image.run(
        image,
        args=[
            "modelfleet",
            "router",
            "--config",
            "/config/router.yaml",
            "--client-auth=off",
            *listen,
        ],
        mounts=(oci_image.Mount(config, "/config"),),
        log_path=tmp_path / "router.log",
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:

            async def ready() -> int:
                assert container.running(), container.log()
                try:
                    async with http.get(url + "/readyz") as resp:
                        return resp.status
                except aiohttp.ClientConnectionError:
                    return 0

            await wait_for_async(ready, timeout=60, until=lambda s: s == 200, what="router ready")
            assert container.uid_gid() == (10001, 10001)
            async with http.post(url + "/v1/images/generations", json={"prompt": "a cat"}) as r:
                doc = await r.json()
                assert r.status == 200, doc
                assert r.headers["X-ModelFleet-Pool"] == "p"
            assert doc["data"][0]["b64_json"] and worker.requests == 1
    finally:
        code = container.stop()
    assert code == 0, f"router exited {code} on SIGTERM:\n{container.log()}"
