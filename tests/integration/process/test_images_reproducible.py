"""The operator/router image builds reproducibly: the same commit gives the same
layers. A second build of dist/images' archive from scratch (every step again,
`MODELFLEET_IMAGE_NO_CACHE=1 scripts/images.sh modelfleet` into a temporary folder)
must give byte-identical layers and the same image config. Only the history's notes
may differ: buildah's layer cache keeps the time a cached step was first built and
the id of the intermediate image it continued from (two builds from scratch agree
on those too, the same manifest digest: docs/benchmarks.md). A full build takes 1-2 minutes, so this runs in `make test-images`
(MODELFLEET_TEST_IMAGE_REBUILD=1), right after `make images` built the archive."""

from __future__ import annotations

import os
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import oci_image

if not os.environ.get("MODELFLEET_TEST_IMAGE_REBUILD"):
    pytest.skip(
        "the rebuild check runs in `make test-images` (MODELFLEET_TEST_IMAGE_REBUILD=1)",
        allow_module_level=True,
    )

pytestmark = pytest.mark.timeout(900)
REVISION = "org.opencontainers.image.revision"


def without_history_notes(config: dict[str, Any]) -> dict[str, Any]:
    notes = {"created", "comment"}
    history = [{k: v for k, v in h.items() if k not in notes} for h in config["history"]]
    return {**config, "history": history}


def test_a_second_build_from_scratch_gives_the_same_layers(tmp_path: Path) -> None:
    first = oci_image.Archive.open(oci_image.archive("modelfleet"))
    head = git("rev-parse", "HEAD")
    built_from = first.config["config"]["Labels"][REVISION]
    if built_from != head:
        pytest.fail(f"{first.path} is from {built_from}, HEAD is {head}: `make image-modelfleet`")

    env = {**os.environ, "MODELFLEET_IMAGE_NO_CACHE": "1", "MODELFLEET_IMAGE_OUT": str(tmp_path)}
    proc = subprocess.run(
        ["bash", "scripts/images.sh", "modelfleet"],
        cwd=oci_image.REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=840,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    second = oci_image.Archive.open(tmp_path / first.path.name)

    assert len(first.layers) == len(second.layers) >= 3
    for a, b in zip(first.layers, second.layers, strict=True):
        if a != b:
            differ = oci_image.layer_differences(first.blob(a), second.blob(b))
            shown = "\n".join(differ[:40])
            pytest.fail(f"layer {a} rebuilt as {b}: {len(differ)} entries differ:\n{shown}")
    assert without_history_notes(first.config) == without_history_notes(second.config)
    # The image's created time is the commit's, not the clock's.
    epoch = int(git("log", "-1", "--format=%ct"))
    created = datetime.fromisoformat(second.config["created"])
    assert (
        created
        == datetime.fromtimestamp(epoch, UTC)
        == datetime.fromisoformat(first.config["created"])
    )


def git(*args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=oci_image.REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()
