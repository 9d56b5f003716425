"""Who may pin a pool: the operator's credential, compared in constant time; every
refusal names the header and never a value."""

from __future__ import annotations

import pytest

from modelfleet.routing.pin import PinRefused, check_pin, read_credential

CRED = b"operator-credential-123"
P, T = "x-modelfleet-pool", "x-modelfleet-operator-token"


@pytest.mark.parametrize(
    ("headers", "credential", "want"),
    [
        ({}, CRED, None),
        ({}, None, None),
        ({P: "cand", T: "operator-credential-123"}, CRED, "cand"),
        ({P: " cand ", T: " operator-credential-123 "}, CRED, "cand"),
        ({P: "cand"}, CRED, (403, "needs the operator credential in header")),
        ({P: "cand", T: "operator-credential-12"}, CRED, (403, "is not the operator's")),
        ({P: "cand", T: ""}, CRED, (403, "is not the operator's")),
        ({P: "cand", T: "operator-credential-123"}, None, (403, "no operator credential")),
        ({P: "cand", T: "operator-credential-123"}, b"", (403, "no operator credential")),
        ({P: "Cand_1", T: "operator-credential-123"}, CRED, (400, "must name a ModelPool")),
    ],
)
def test_check_pin(
    headers: dict[str, str], credential: bytes | None, want: str | tuple[int, str] | None
) -> None:
    got = check_pin(headers, credential)
    if want is None or isinstance(want, str):
        assert got == want
        return
    assert isinstance(got, PinRefused)
    assert got.status == want[0] and want[1] in got.message
    assert got.param == "X-ModelFleet-Pool" and "X-ModelFleet-Pool" in got.message
    assert "operator-credential" not in got.message


def test_read_credential() -> None:
    assert read_credential("  tok\n") == b"tok"
    assert read_credential(" \n") is None
