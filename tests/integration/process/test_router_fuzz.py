"""Hypothesis throws arbitrary bodies and headers at the live router: never a 5xx, no crash."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelfleet_dev.routerproc import RouterProcess, free_port, policy, write_config
from polling import wait_for

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProcess]:
    port = free_port()
    worker = subprocess.Popen(
        [sys.executable, "-m", "modelfleet_dev.fakeworker", "--port", str(port)],
        stdout=subprocess.DEVNULL,
    )
    try:

        def ready() -> bool:
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
                c.request("GET", "/readyz")
                return c.getresponse().status == 200
            except OSError:
                return False

        wait_for(ready, timeout=30, interval=0.05, what="fake worker ready")
        cfg = write_config(
            Path(tmp_path_factory.mktemp("fuzz")) / "r.yaml",
            [policy([{"name": "p", "match": {"tiers": ["preview"]}, "pool": "w"},
                     {"name": "all", "match": {"tags": ["x"]}, "pool": "w"}])],
            {"w": [f"http://127.0.0.1:{port}"]},
        )  # fmt: skip
        with RouterProcess(cfg) as r:
            yield r
    finally:
        worker.terminate()
        worker.wait(10)


_scalar = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
_json = st.recursive(
    _scalar,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)
_field_values = st.fixed_dictionaries(
    {},
    optional={
        "prompt": st.text(max_size=50) | _scalar,
        "n": st.integers(-2, 10) | _scalar,
        "size": st.sampled_from(["512x512", "1x1", "x", "99999x1", ""]) | _scalar,
        "response_format": st.sampled_from(["b64_json", "url"]),
        "seed": st.integers(-5, 2**65) | _scalar,
        "steps": st.integers(-1, 2000),
        "guidance_scale": st.floats(allow_nan=True) | _scalar,
        "negative_prompt": st.text(max_size=10) | _scalar,
        "tier": st.sampled_from(["preview", "production", "PREVIEW"]) | _scalar,
        "tags": st.lists(st.sampled_from(["x", "y", ""]), max_size=3) | _scalar,
        "model": _scalar,
    },
)
_headers = st.fixed_dictionaries(
    {},
    optional={
        "X-ModelFleet-Tier": st.sampled_from(["preview", "production", "gold", ""]),
        "X-ModelFleet-Policy": st.sampled_from(["main", "default/main", "nope"]),
        "Content-Type": st.sampled_from(["application/json", "text/plain"]),
    },
)


def _send(r: RouterProcess, raw: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    c = http.client.HTTPConnection("127.0.0.1", r.port, timeout=10)
    c.request("POST", "/v1/images/generations", body=raw, headers=headers)
    resp = c.getresponse()
    body = resp.read()
    c.close()
    return resp.status, json.loads(body)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.one_of(
        _field_values.map(lambda d: json.dumps(d).encode()),
        _json.map(lambda d: json.dumps(d).encode()),
        st.binary(max_size=40),
    ),
    _headers,
)
def test_fuzz_never_5xx(live: RouterProcess, raw: bytes, headers: dict[str, str]) -> None:
    status, doc = _send(live, raw, headers)
    assert status < 500, doc
    if status != 200:
        assert set(doc["error"]) == {"code", "message", "param"}
    else:
        assert doc["data"]


def test_router_still_healthy_after_fuzz(live: RouterProcess) -> None:
    assert live.proc is not None and live.proc.poll() is None
    status, _doc = _send(live, b'{"prompt": "still fine", "tier": "preview"}', {})
    assert status == 200
