"""The local pod runner's argv: the worker, or a dev stand-in for a dev image."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from modelfleet_dev.podrunner import local_command

TEXT = [sys.executable, "-m", "modelfleet_dev.textrender"]
SERVE = ["modelfleet-worker", "serve"]


@pytest.mark.parametrize(
    ("container", "argv"),
    [
        ({"image": "ghcr.io/x/worker:1", "command": SERVE, "args": ["--a"]}, [*SERVE, "--a"]),
        ({"image": "modelfleet.dev/textrender", "command": SERVE}, TEXT),
        (
            {"image": "modelfleet.dev/textrender:dev", "command": SERVE, "args": ["-x"]},
            [*TEXT, "-x"],
        ),
        ({"image": "modelfleet.dev/textrender@sha256:ab", "command": SERVE}, TEXT),
        # Only the worker's serve is replaced: another command runs as written.
        ({"image": "modelfleet.dev/textrender", "command": ["sh", "-c", "x"]}, ["sh", "-c", "x"]),
        ({"image": "other.dev/textrender", "command": SERVE}, SERVE),
        ({"image": "textrender", "command": SERVE}, SERVE),
        ({"command": SERVE, "args": None}, SERVE),
        ({"image": "modelfleet.dev/textrender"}, []),  # no command: the runner refuses it
    ],
)
def test_local_command(container: dict[str, Any], argv: list[str]) -> None:
    assert local_command(container) == argv
