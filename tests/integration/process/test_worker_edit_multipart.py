"""The streaming multipart reader of edits on a real aiohttp server on loopback:
what it keeps, and every malformed or oversized body as 400/413 naming the part."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelfleet_worker.multipart import MAX_PARTS, MAX_TEXT_FIELD_BYTES, read_edit_form
from modelfleet_worker.validation import RequestError

LIMIT = 200_000


async def handler(request: web.Request) -> web.Response:
    try:
        form = await read_edit_form(request, LIMIT)
    except RequestError as exc:
        return web.json_response(exc.body(), status=exc.status)
    return web.json_response(
        {
            "fields": form.fields,
            "files": {k: [len(b.getvalue()) for b in v] for k, v in form.files.items()},
            "heads": {k: [b.read(4).hex() for b in v] for k, v in form.files.items()},
            "info": form.file_info,
        }
    )


@pytest.fixture
async def client() -> AsyncIterator[TestClient[Any, Any]]:
    app = web.Application()
    app.router.add_post("/e", handler)
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        yield c


def form(*parts: tuple[str, bytes | str, str | None]) -> aiohttp.FormData:
    fd = aiohttp.FormData(default_to_multipart=True)  # as the SDK: multipart even without files
    for name, value, filename in parts:
        if filename is None:
            fd.add_field(name, value)
        else:
            fd.add_field(name, value, filename=filename, content_type="image/png")
    return fd


async def post(client: TestClient[Any, Any], data: Any, **kw: Any) -> tuple[int, Any]:
    async with client.post("/e", data=data, **kw) as r:
        return r.status, await r.json()


async def test_fields_and_files_are_kept(client: TestClient[Any, Any]) -> None:
    status, out = await post(
        client,
        form(
            ("prompt", "a cat", None),
            ("n", "2", None),
            ("image[]", b"\x89PNGabc", "a.png"),
            ("image[]", b"\x89PNGdefghi", "b.png"),
            ("mask", b"mask", "m.png"),
            ("tags[]", "x", None),
            ("tags[]", "y", None),
        ),
    )
    assert status == 200, out
    assert out["fields"] == {"prompt": ["a cat"], "n": ["2"], "tags[]": ["x", "y"]}
    assert out["files"] == {"image": [7, 10], "mask": [4]}
    assert out["heads"]["image"] == ["89504e47", "89504e47"]  # rewound for decoding
    assert out["info"]["image"] == [["a.png", "image/png"], ["b.png", "image/png"]]


async def test_over_the_limit_names_the_part(client: TestClient[Any, Any]) -> None:
    status, out = await post(
        client, form(("prompt", "x", None), ("mask", b"\x00" * (LIMIT + 1), "m.png"))
    )
    assert status == 413 and out["error"]["param"] == "mask"
    # The limit counts the whole body: two files each under it, together over it.
    half = b"\x00" * (LIMIT // 2 + 10)
    status, out = await post(client, form(("image", half, "a.png"), ("mask", half, "m.png")))
    assert status == 413 and out["error"]["param"] == "mask"


@pytest.mark.parametrize(
    ("data", "headers", "param"),
    [
        (b'{"prompt": "x"}', {"Content-Type": "application/json"}, None),
        (b"--zz\r\nbroken", {"Content-Type": "multipart/form-data; boundary=zz"}, None),
        (
            b"--zz\r\nContent-Disposition: form-data\r\n\r\nx\r\n--zz--\r\n",
            {"Content-Type": "multipart/form-data; boundary=zz"},
            None,
        ),
        (b"--zz\r\n", {"Content-Type": "multipart/form-data"}, None),
        (
            b"--zz\r\nContent-Type: multipart/mixed; boundary=yy\r\n"
            b'Content-Disposition: form-data; name="image"\r\n\r\n--yy--\r\n--zz--\r\n',
            {"Content-Type": "multipart/form-data; boundary=zz"},
            None,
        ),
    ],
    ids=["json", "truncated", "unnamed part", "no boundary", "nested"],
)
async def test_not_a_form_is_400(
    client: TestClient[Any, Any], data: bytes, headers: dict[str, str], param: str | None
) -> None:
    status, out = await post(client, data, headers=headers)
    assert status == 400 and out["error"]["param"] == param, out


async def test_long_text_part_and_too_many_parts(client: TestClient[Any, Any]) -> None:
    status, out = await post(client, form(("prompt", "x" * (MAX_TEXT_FIELD_BYTES + 1), None)))
    assert status == 400 and out["error"]["param"] == "prompt"
    many = form(*[(f"f{i}", "v", None) for i in range(MAX_PARTS + 1)])
    status, out = await post(client, many)
    assert status == 400 and "parts" in out["error"]["message"]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=st.binary(max_size=600), boundary=st.sampled_from(["zz", "----x", "a" * 70]))
async def test_random_bodies_never_5xx(
    client: TestClient[Any, Any], body: bytes, boundary: str
) -> None:
    prefix = f'--{boundary}\r\nContent-Disposition: form-data; name="image"\r\n'.encode()
    status, out = await post(
        client,
        prefix + body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert status in (200, 400, 413), out
