"""Client keys, pure parts: a labelled Secret's annotations, the key ring, authorization,
the Bearer header and the per-address failure limiter (routing.clients)."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from modelfleet.router.access import outcome_of
from modelfleet.router.config import ConfigError, parse_static_config
from modelfleet.routing.clients import (
    Budget,
    ClientKey,
    FailureLimiter,
    KeyRefused,
    authorize,
    bearer,
    key_digest,
    key_from_secret,
    parse_budget,
    ring_from_secrets,
)

KEY = "mf-test-key-0123456789abcdef"


def secret(name: str = "team-a", key: str | None = KEY, **annotations: str) -> dict[str, Any]:
    ann = {f"modelfleet.io/{k.replace('_', '-')}": v for k, v in annotations.items()}
    data = {} if key is None else {"key": base64.b64encode(key.encode()).decode()}
    return {
        "metadata": {
            "name": name,
            "namespace": "mf",
            "labels": {"modelfleet.io/client-key": "true"},
            "annotations": ann,
        },
        "data": data,
    }


def test_a_secret_with_every_setting() -> None:
    got = key_from_secret(
        secret(
            key_id="team-a.prod",
            tiers="production, preview",
            models="sdxl,flux",
            routes="all",
            requests_per_minute="60",
            budget="25 USD/day",
            priority="10",
        )
    )
    assert got == ClientKey(
        id="team-a.prod",
        namespace="mf",
        digest=key_digest(KEY),
        tiers=frozenset({"production", "preview"}),
        models=frozenset({"sdxl", "flux"}),
        routes=frozenset({"all"}),
        requests_per_minute=60,
        budget=Budget(25.0, "day"),
        priority=10,
    )
    assert KEY not in repr(got)


def test_defaults_id_is_the_secret_name_and_nothing_is_restricted() -> None:
    got = key_from_secret(secret("ci-bot", key=KEY + "\n"))  # a file's trailing newline
    assert isinstance(got, ClientKey)
    assert (got.id, got.tiers, got.models, got.routes) == (
        "ci-bot",
        frozenset(),
        frozenset(),
        frozenset(),
    )
    assert (got.requests_per_minute, got.budget, got.priority) == (None, None, 0)
    assert got.digest == key_digest(KEY)


@pytest.mark.parametrize(
    ("obj", "field", "rule"),
    [
        (secret(key=None), "data.key", "is required"),
        ({**secret(), "data": {"key": "***not base64***"}}, "data.key", "UTF-8"),
        (secret(key="short"), "data.key", "at least 16 characters"),
        (secret(key="has a space in the middle"), "data.key", "without spaces"),
        (secret(key_id="Team_A"), "annotations[modelfleet.io/key-id]", "lowercase"),
        (secret(requests_per_minute="0"), "annotations[modelfleet.io/requests-per-minute]", "not in 1.."),
        (secret(requests_per_minute="many"), "annotations[modelfleet.io/requests-per-minute]", "not an integer"),
        (secret(budget="25 EUR/day"), "annotations[modelfleet.io/budget]", "'25 USD/day'"),
        (secret(budget="25 USD/week"), "annotations[modelfleet.io/budget]", "'25 USD/day'"),
        (secret(budget="0 USD/day"), "annotations[modelfleet.io/budget]", "above 0"),
        (secret(priority="5000"), "annotations[modelfleet.io/priority]", "not in -1000..1000"),
    ],
)  # fmt: skip
def test_bad_secrets_are_refused_naming_the_field_and_rule(
    obj: dict[str, Any], field: str, rule: str
) -> None:
    got = key_from_secret(obj)
    assert isinstance(got, KeyRefused), got
    assert (got.namespace, got.secret, got.field) == ("mf", "team-a", field)
    assert rule in got.rule
    msg = got.message()
    assert msg.startswith("client key Secret mf/team-a refused: " + field)
    assert KEY not in msg and base64.b64encode(KEY.encode()).decode() not in msg


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("25 USD/day", Budget(25.0, "day")),
        ("500 usd / month", Budget(500.0, "month")),
        ("0.5USD/day", Budget(0.5, "day")),
    ],
)
def test_budgets(text: str, want: Budget) -> None:
    assert parse_budget(text) == want


def test_ring_refuses_a_repeated_id_or_key_and_keeps_the_first_by_name() -> None:
    other = "mf-other-key-0123456789abcdef"
    ring = ring_from_secrets(
        [
            secret("b-dupe-id", key=other, key_id="shared"),
            secret("a-first", key_id="shared"),
            secret("c-same-key"),
            secret("d-broken", key=None),
        ]
    )
    assert {k.id for k in ring.keys.values()} == {"shared"}
    assert ring.find(KEY) is not None and ring.find(KEY).id == "shared"  # type: ignore[union-attr]
    assert ring.find(other) is None
    assert ring.find(" " + KEY + " ") is not None  # blanks around a pasted key
    assert [(r.secret, r.field) for r in ring.refused] == [
        ("b-dupe-id", "annotations[modelfleet.io/key-id]"),
        ("c-same-key", "data.key"),
        ("d-broken", "data.key"),
    ]
    assert "already Secret a-first's" in ring.refused[0].rule


LIMITED = ClientKey(
    "k1",
    "mf",
    b"",
    tiers=frozenset({"preview"}),
    models=frozenset({"sdxl"}),
    routes=frozenset({"cheap"}),
)


@pytest.mark.parametrize(
    ("key", "tier", "model", "route", "field"),
    [
        (ClientKey("open", "mf", b""), "production", "flux", "any", None),
        (LIMITED, "preview", "sdxl", "cheap", None),
        (LIMITED, "preview", None, "cheap", None),  # no model named: by intent
        (LIMITED, "production", "sdxl", "cheap", "tier"),
        (LIMITED, "preview", "flux", "cheap", "model"),
        (LIMITED, "preview", "sdxl", "premium", "route"),
    ],
)
def test_authorize(
    key: ClientKey, tier: str, model: str | None, route: str, field: str | None
) -> None:
    got = authorize(key, tier, model, route)
    assert (got and got.field) == field
    if got is not None:
        assert got.message(key.id).startswith(f"client key 'k1' may not use {field} ")


@pytest.mark.parametrize(
    ("header", "want"),
    [
        (None, None),
        ("", None),
        ("Bearer", None),
        ("Bearer   ", None),
        ("Basic dXNlcjpwYXNz", None),
        ("Bearer abc", "abc"),
        ("bearer  abc ", "abc"),
    ],
)
def test_bearer(header: str | None, want: str | None) -> None:
    assert bearer(header) == want


def test_limiter_allows_a_burst_then_one_try_per_refill() -> None:
    lim = FailureLimiter(per_minute=6, burst=3)  # one token every 10 s
    assert lim.retry_after("a", 0.0) is None
    for _ in range(3):
        lim.failed("a", 0.0)
    assert lim.retry_after("a", 0.0) == pytest.approx(10.0)
    assert lim.retry_after("b", 0.0) is None  # per address
    assert lim.retry_after("a", 4.0) == pytest.approx(6.0)
    assert lim.retry_after("a", 10.0) is None
    lim.failed("a", 10.0)  # the token that came back is spent at once
    assert lim.retry_after("a", 10.0) == pytest.approx(10.0)
    assert lim.retry_after("a", 40.0) is None  # refills up to the burst only
    for _ in range(3):
        lim.failed("a", 1000.0)
    assert lim.retry_after("a", 1000.0) is not None


def test_limiter_remembers_a_bounded_number_of_addresses() -> None:
    lim = FailureLimiter(per_minute=6, burst=2, max_addresses=3)
    for i, addr in enumerate(("a", "b", "c")):
        lim.failed(addr, float(i))
        lim.failed(addr, float(i))
    lim.failed("d", 2.0)  # full, none refilled: the oldest (a) goes
    assert len(lim) == 3 and lim.retry_after("a", 2.0) is None
    assert lim.retry_after("b", 2.0) is not None
    lim.failed("e", 100.0)  # every bucket refilled by now: they all go
    assert len(lim) == 1


@pytest.mark.parametrize(
    ("status", "want"),
    [(200, "ok"), (401, "unauthenticated"), (403, "forbidden"), (429, "rejected"),
     (400, "client_error"), (404, "client_error"), (502, "upstream_error"), (504, "upstream_error")],
)  # fmt: skip
def test_outcome_of(status: int, want: str) -> None:
    assert outcome_of(status) == want


POLICY = {
    "apiVersion": "modelfleet.io/v1alpha1",
    "kind": "RoutingPolicy",
    "metadata": {"name": "p"},
    "spec": {"routes": [{"name": "all", "pool": "a"}]},
}


def test_static_config_holds_digests_only() -> None:
    digest = key_digest(KEY).hex()
    snap = parse_static_config(
        {
            "policies": [POLICY],
            "clientKeys": [{"id": "ci", "sha256": digest, "budget": "5 USD/month", "tiers": ["preview"]}],
        }
    )  # fmt: skip
    key = snap.client_keys.find(KEY)
    assert key is not None and (key.id, key.budget, key.tiers) == (
        "ci",
        Budget(5.0, "month"),
        frozenset({"preview"}),
    )


@pytest.mark.parametrize(
    ("keys", "needle"),
    [
        ([{"id": "ci", "sha256": KEY}], "clientKeys[0].sha256"),
        ([{"id": "ci", "sha256": "0" * 64, "budget": "lots"}], "clientKeys[0].budget"),
        ([{"id": "ci", "sha256": "0" * 64}, {"id": "ci", "sha256": "1" * 64}], "clientKeys[1].id: 'ci' is not unique"),
        ([{"id": "a", "sha256": "0" * 64}, {"id": "b", "sha256": "0" * 64}], "clientKeys[1].sha256: the same key as 'a'"),
    ],
)  # fmt: skip
def test_static_config_refuses_bad_keys_naming_the_field(
    keys: list[dict[str, Any]], needle: str
) -> None:
    with pytest.raises(ConfigError) as err:
        parse_static_config({"policies": [POLICY], "clientKeys": keys})
    assert needle in str(err.value)
    assert KEY not in str(err.value)  # a key pasted where its digest belongs is not echoed


def test_kube_snapshot_carries_the_labelled_secrets_as_keys() -> None:
    from modelfleet.router.kube import build_snapshot

    policy = {**POLICY, "metadata": {"name": "p", "namespace": "mf"}}
    secrets = {("mf", "team-a"): secret(), ("mf", "bad"): secret("bad", budget="lots")}
    snap = build_snapshot({("mf", "p"): policy}, {}, None, secrets)
    key = snap.client_keys.find(KEY)
    assert key is not None and key.id == "team-a"
    assert [r.secret for r in snap.client_keys.refused] == ["bad"]
    assert build_snapshot({("mf", "p"): policy}, {}).client_keys.keys == {}
