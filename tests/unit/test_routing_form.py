"""The router's scan of a multipart edit: text fields, file counts, errors naming the part."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelfleet.routing.form import (
    MAX_TEXT_PART_BYTES,
    FormError,
    boundary_of,
    part_being_read,
    scan_form,
)
from modelfleet.routing.intent import RequestError, parse_edit_form

B = b"XyZb0undary"


def _part(name: str, value: bytes, filename: str | None = None) -> bytes:
    disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    head = f"Content-Disposition: {disp}\r\n"
    if filename:
        head += "Content-Type: image/png\r\n"
    return b"--" + B + b"\r\n" + head.encode() + b"\r\n" + value + b"\r\n"


def _body(*parts: bytes) -> bytes:
    return b"".join(parts) + b"--" + B + b"--\r\n"


def test_fields_and_files() -> None:
    png = b"\x89PNG\r\n\x1a\n" + b"\r\n--not-the-boundary\r\n" * 50
    scan = scan_form(
        _body(
            _part("prompt", "a café at night".encode()),
            _part("tags[]", b"a"),
            _part("tags[]", b"b"),
            _part("image[]", png, "a.png"),
            _part("image[]", png, "b.png"),
            _part("mask", png, "m.png"),
            _part("n", b"2"),
        ),
        B,
    )
    assert scan.fields == {"prompt": ["a café at night"], "tags[]": ["a", "b"], "n": ["2"]}
    assert scan.files == {"image[]": 2, "mask": 1}
    assert scan.file_bytes == 3 * len(png)


def test_empty_form() -> None:
    assert scan_form(_body(), B).fields == {}


@pytest.mark.parametrize(
    ("body", "param", "message"),
    [
        (b"no boundary here", None, "boundary"),
        (_part("prompt", b"x"), "prompt", "truncated"),
        (b"--" + B + b"garbage", None, "CRLF"),
        (
            b"--" + B + b"\r\nContent-Disposition: form-data\r\n\r\nx\r\n--" + B + b"--",
            None,
            "name",
        ),
        (_body(_part("prompt", b"x" * (MAX_TEXT_PART_BYTES + 1))), "prompt", "over"),
        (_body(_part("prompt", b"\xff\xfe")), "prompt", "UTF-8"),
    ],
)
def test_malformed(body: bytes, param: str | None, message: str) -> None:
    with pytest.raises(FormError) as err:
        scan_form(body, B)
    assert err.value.param == param
    assert message in err.value.message


def test_boundary_of() -> None:
    assert boundary_of("multipart/form-data; boundary=abc123") == b"abc123"
    assert boundary_of('Multipart/Form-Data; boundary="a b"; charset=utf-8') == b"a b"
    with pytest.raises(FormError, match="multipart/form-data"):
        boundary_of("application/json")
    with pytest.raises(FormError, match="boundary"):
        boundary_of("multipart/form-data")


def test_part_being_read_names_the_upload_cut_short() -> None:
    head = _part("prompt", b"x") + _part("image", b"\x89PNG" + b"0" * 100, "a.png")[:-10]
    assert part_being_read(head, B) == "image"
    assert part_being_read(b"--" + B + b"\r\nContent-Disp", B) is None
    assert part_being_read(b"nothing", B) is None


_names = st.sampled_from(
    ["prompt", "n", "size", "model", "tier", "tags[]", "text[]", "strength", "seed", "stream",
     "quality", "image", "image[]", "mask", "svg[model]", "bogus", "asset_id", "user"]
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(_names, st.text(max_size=12), st.booleans()), max_size=8),
    st.binary(max_size=64),
)
def test_fuzz_scan_and_parse_only_their_errors(
    parts: list[tuple[str, str, bool]], junk: bytes
) -> None:
    """Any form (text or file parts of any name and value), and junk, gives a parsed
    request, a FormError or a 400 RequestError: never another exception."""
    body = _body(*(_part(n, v.encode(), "f.png" if is_file else None) for n, v, is_file in parts))
    for raw in (body, junk, body[: len(body) // 2]):
        try:
            scan = scan_form(raw, B)
        except FormError:
            continue
        try:
            p = parse_edit_form(scan.fields, scan.files, {})
        except RequestError as exc:
            assert exc.status == 400 and exc.param is not None
        else:
            assert p.intent.prompt.strip()
