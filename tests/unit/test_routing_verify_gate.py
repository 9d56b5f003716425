"""The text gate's pure decisions (routing.verify_gate) and the routing pieces that feed it:
the `text` request field, the compiled route's verify spec, MissingPool for onFail.pool."""

from __future__ import annotations

import json
from typing import Any

import pytest

from modelfleet.api.routingpolicy import RoutingPolicy, RoutingPolicySpec, VerifySpec
from modelfleet.routing.compile import compile_routes
from modelfleet.routing.form import replace_text_fields, scan_form
from modelfleet.routing.intent import RequestError, parse_request
from modelfleet.routing.table import compile_policy
from modelfleet.routing.verify_gate import (
    FAILED,
    PASSED,
    RESCUED,
    SEED_SPAN,
    UNREADABLE,
    UNVERIFIED,
    Check,
    Render,
    Rerender,
    Slot,
    Stop,
    annotate,
    exhausted_message,
    header_value,
    judge,
    next_step,
    offer,
    rerender_body,
    rerender_fields,
    verdict,
)
from modelfleet_worker.validation import Limits, form_to_body, validate_request
from modelfleet_worker.validation import RequestError as WorkerRequestError


def block(wa: float | None, status: str | None = None, **kw: Any) -> dict[str, Any]:
    if wa is None:
        return {"modelfleet": {"verified": False, "status": status or UNREADABLE, **kw}}
    b: dict[str, Any] = {"verified": True, "word_accuracy": wa, "ned": wa, **kw}
    if status:
        b["status"] = status
    return {"b64_json": "x", "seed": 1, "modelfleet": b}


def spec(**kw: Any) -> VerifySpec:
    return VerifySpec.model_validate({"minWordAccuracy": 0.9, **kw})


def slot(status: str, wa: float | None = None, pool: str = "a", **kw: Any) -> Slot:
    item = block(wa, status) if status != UNVERIFIED else {"b64_json": "x"}
    return Slot(Render(item, Check(status, wa, wa), pool), **kw)


# -- judge -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("item", "threshold", "want"),
    [
        (block(1.0), 0.9, Check(PASSED, 1.0, 1.0)),
        (block(0.9), 0.9, Check(PASSED, 0.9, 0.9)),  # at the threshold passes
        (block(0.5), 0.9, Check(FAILED, 0.5, 0.5)),
        (block(0.5), 0.5, Check(PASSED, 0.5, 0.5)),
        (block(0.0), 0.0, Check(PASSED, 0.0, 0.0)),
        # The worker applied this threshold: its unrounded verdict wins over the rounded score.
        (
            block(0.6667, passed=False, min_word_accuracy=0.6667),
            0.6667,
            Check(FAILED, 0.6667, 0.6667),
        ),
        # An older worker judged at its own default: the router judges the score itself.
        (block(0.95, passed=False, min_word_accuracy=1.0), 0.9, Check(PASSED, 0.95, 0.95)),
        (block(0.8, passed=True, min_word_accuracy=0.5), 0.9, Check(FAILED, 0.8, 0.8)),
        (block(None), 0.9, Check(UNREADABLE)),
        ({"b64_json": "x"}, 0.9, Check(UNVERIFIED)),  # no block: verification off
        ({"modelfleet": "junk"}, 0.9, Check(UNVERIFIED)),
        ({"modelfleet": {"word_accuracy": "1"}}, 0.9, Check(UNVERIFIED)),
        ({"modelfleet": {"word_accuracy": True}}, 0.9, Check(UNVERIFIED)),
        ({"modelfleet": {"word_accuracy": 2.0}}, 0.9, Check(UNVERIFIED)),
        ("not an object", 0.9, Check(UNVERIFIED)),
    ],
)
def test_judge(item: Any, threshold: float, want: Check) -> None:
    assert judge(item, threshold) == want


def test_rank_orders_passed_failed_unreadable_unverified() -> None:
    order = [
        Check(PASSED, 0.9, 0.5),
        Check(FAILED, 0.8, 0.2),
        Check(FAILED, 0.5, 0.9),
        Check(FAILED, 0.5, 0.8),
        Check(UNREADABLE),
        Check(UNVERIFIED),
    ]
    assert sorted(order, key=Check.rank, reverse=True) == order


# -- offer -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "again", "best_pool", "best_status"),
    [
        ((FAILED, 0.5), (PASSED, 1.0), "b", PASSED),
        ((FAILED, 0.5), (FAILED, 0.75), "b", FAILED),
        ((FAILED, 0.5), (FAILED, 0.5), "a", FAILED),  # a tie keeps the earlier render
        ((FAILED, 0.5), (FAILED, 0.25), "a", FAILED),
        ((FAILED, 0.5), (UNREADABLE, None), "a", FAILED),  # readable text beats none
    ],
)
def test_offer_keeps_the_better_render(
    first: tuple[str, float], again: tuple[str, float | None], best_pool: str, best_status: str
) -> None:
    s = slot(first[0], first[1], "a")
    r = Render(block(again[1], again[0]), Check(again[0], again[1], again[1]), "b")
    out = offer(s, r, 0.9)
    assert (out.best.pool, out.best.check.status, out.attempts) == (best_pool, best_status, 2)
    assert out.rerender_reason == "word_accuracy 0.5 < 0.9 on pool a"
    # A second re-render keeps the first reason.
    assert offer(out, r, 0.9).rerender_reason == out.rerender_reason


# -- next_step ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("slots", "rounds", "kw", "remaining", "render_s", "want"),
    [
        ([slot(PASSED, 1.0)], 0, {}, 10, 1, Stop(None)),
        ([slot(UNREADABLE)], 0, {}, 10, 1, Stop(None)),  # OCR could not judge: not re-rendered
        ([slot(UNVERIFIED)], 0, {}, 10, 1, Stop(None)),
        ([slot(FAILED, 0.5)], 0, {}, 10, 1, Rerender((0,), "a")),
        ([slot(FAILED, 0.5)], 0, {"onFail": {"pool": "big"}}, 10, 1, Rerender((0,), "big")),
        ([slot(FAILED, 0.5)], 1, {}, 10, 1, Stop("maxRerenders 1 reached")),
        ([slot(FAILED, 0.5)], 1, {"maxRerenders": 3}, 10, 1, Rerender((0,), "a")),
        ([slot(FAILED, 0.5)], 3, {"maxRerenders": 3}, 10, 1, Stop("maxRerenders 3 reached")),
        ([slot(FAILED, 0.5)], 0, {"maxRerenders": 0}, 10, 1, Stop("maxRerenders is 0")),
        (
            [slot(FAILED, 0.5)],
            0,
            {},
            0.5,
            2.0,
            Stop("request deadline: 0.50s left, a render took 2.00s"),
        ),
        (
            [slot(FAILED, 0.5)],
            0,
            {},
            -1,
            2.0,
            Stop("request deadline: 0.00s left, a render took 2.00s"),
        ),
        # Per image: only the failed ones go again, together.
        (
            [slot(PASSED, 1.0), slot(FAILED, 0.5), slot(UNREADABLE), slot(FAILED, 0.0)],
            0,
            {},
            10,
            1,
            Rerender((1, 3), "a"),
        ),
    ],
)
def test_next_step(
    slots: list[Slot],
    rounds: int,
    kw: dict[str, Any],
    remaining: float,
    render_s: float,
    want: Rerender | Stop,
) -> None:
    assert next_step(slots, rounds, spec(**kw), "a", remaining, render_s) == want


# -- rerender_body -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("forward", "kw", "n", "round_no", "want"),
    [
        # No onFail settings, no seed: the same request for the failed images, new seeds.
        ({"prompt": "p", "n": 3}, {}, 2, 1, {"prompt": "p", "n": 2}),
        (
            {"prompt": "p"},
            {"onFail": {"guidanceScale": 12, "steps": 40}},
            1,
            1,
            {"prompt": "p", "n": 1, "guidance_scale": 12, "steps": 40},
        ),
        # Never weaker than what the client asked.
        (
            {"prompt": "p", "guidance_scale": 15, "steps": 20},
            {"onFail": {"guidanceScale": 12, "steps": 40}},
            1,
            1,
            {"prompt": "p", "n": 1, "guidance_scale": 15, "steps": 40},
        ),
        # A fixed seed is stepped past every seed the earlier renders used (seed+i, i < 8).
        ({"prompt": "p", "seed": 7}, {}, 1, 1, {"prompt": "p", "n": 1, "seed": 15}),
        ({"prompt": "p", "seed": 7}, {}, 1, 2, {"prompt": "p", "n": 1, "seed": 23}),
        ({"prompt": "p", "seed": SEED_SPAN - 1}, {}, 1, 1, {"prompt": "p", "n": 1, "seed": 7}),
        ({"prompt": "p", "seed": None}, {}, 1, 1, {"prompt": "p", "n": 1, "seed": None}),
        (
            {"prompt": "p", "text": ["SALE"], "size": "512x256"},
            {},
            1,
            1,
            {"prompt": "p", "n": 1, "text": ["SALE"], "size": "512x256"},
        ),
    ],
)
def test_rerender_body(
    forward: dict[str, Any], kw: dict[str, Any], n: int, round_no: int, want: dict[str, Any]
) -> None:
    got = rerender_body(forward, spec(**kw), n, round_no)
    assert got == {**want, "min_word_accuracy": 0.9}
    assert forward.get("min_word_accuracy") is None  # the caller's dict is not changed


# -- an edit's re-render: the client's form with rerender_body's fields replaced ------------

B = b"b0undary"
PNG = b"\x89PNG\r\n\x1a\n\x00\r\n--b0undar" + bytes(range(256))  # binary, boundary-like


def form(*parts: tuple[str, bytes, str | None]) -> bytes:
    out = b""
    for name, value, filename in parts:
        fn = f'; filename="{filename}"' if filename else ""
        ctype = "\r\nContent-Type: image/png" if filename else ""
        head = f'--b0undary\r\nContent-Disposition: form-data; name="{name}"{fn}{ctype}\r\n\r\n'
        out += head.encode() + value + b"\r\n"
    return out + b"--b0undary--\r\n"


def test_an_edits_rerender_replaces_only_the_gates_fields() -> None:
    client = form(
        ("image", PNG, "in.png"),
        ("prompt", b'a sign "SALE NOW"', None),
        ("seed", b"7", None),
        ("text[]", b"SALE NOW", None),
        ("steps", b"20", None),
        ("mask", PNG[::-1], "mask.png"),
    )
    forward = {"prompt": 'a sign "SALE NOW"', "seed": 7, "text": ["SALE NOW"], "steps": 20}
    body = rerender_body(forward, spec(onFail={"guidanceScale": 12, "steps": 40}), 1, 1)
    fields = rerender_fields(body)
    assert fields == {"n": "1", "seed": "15", "steps": "40", "guidance_scale": "12.0",
                      "min_word_accuracy": "0.9"}  # fmt: skip
    out = replace_text_fields(client, B, fields)
    scan = scan_form(out, B)
    assert scan.files == {"image": 1, "mask": 1}
    assert scan.file_bytes == len(PNG) * 2
    assert PNG in out and PNG[::-1] in out  # files byte for byte
    assert scan.fields == {
        "prompt": ['a sign "SALE NOW"'],
        "text[]": ["SALE NOW"],  # kept: not a field the gate changes
        **{k: [v] for k, v in fields.items()},
    }
    # As the worker reads the form: the numbers it would have got in a JSON body.
    got = form_to_body(scan.fields)
    assert {k: got[k] for k in fields} == {k: body[k] for k in fields}
    # A seedless request stays seedless; a field sent as name[] is replaced too.
    out = replace_text_fields(form(("image", PNG, "a.png"), ("n[]", b"3", None)), B, {"n": "1"})
    assert scan_form(out, B).fields == {"n": ["1"]}
    assert "seed" not in rerender_fields(rerender_body({"prompt": "p"}, spec(), 1, 1))


# -- verdict, annotate, messages ------------------------------------------------------------


@pytest.mark.parametrize(
    ("slots", "want"),
    [
        ([slot(PASSED, 1.0)], PASSED),
        ([slot(PASSED, 1.0, attempts=2)], RESCUED),
        ([slot(PASSED, 1.0), slot(PASSED, 1.0, attempts=3)], RESCUED),
        ([slot(PASSED, 1.0, attempts=2), slot(FAILED, 0.5, attempts=2)], FAILED),
        ([slot(FAILED, 0.5)], FAILED),
        ([slot(UNREADABLE), slot(PASSED, 1.0)], PASSED),
        ([slot(UNREADABLE), slot(UNVERIFIED)], UNVERIFIED),
    ],
)
def test_verdict(slots: list[Slot], want: str) -> None:
    assert verdict(slots) == want


def test_annotate_states_the_routes_judgement_and_the_history() -> None:
    s = Slot(
        Render(
            block(0.95, "failed", passed=False, min_word_accuracy=1.0),
            Check(PASSED, 0.95, 0.95),
            "big",
        ),
        attempts=2,
        rerender_reason="word_accuracy 0.5 < 0.9 on pool a",
    )
    b = annotate(s, 0.9, None)["modelfleet"]
    assert (b["status"], b["passed"], b["min_word_accuracy"]) == (PASSED, True, 0.9)
    assert (b["rerendered"], b["attempts"], b["pool"]) == (True, 2, "big")
    assert b["rerender_reason"] == "word_accuracy 0.5 < 0.9 on pool a"
    assert "exhausted_reason" not in b

    failed = annotate(slot(FAILED, 0.5), 0.9, "maxRerenders is 0")["modelfleet"]
    assert (failed["passed"], failed["rerendered"], failed["attempts"]) == (False, False, 1)
    assert failed["rerender_reason"] is None
    assert failed["exhausted_reason"] == "maxRerenders is 0"

    unreadable = annotate(slot(UNREADABLE), 0.9, "x")["modelfleet"]
    assert unreadable["status"] == UNREADABLE and "passed" not in unreadable
    assert annotate(slot(UNVERIFIED), 0.9, None) == {"b64_json": "x"}  # no block stays none


def test_exhausted_message_names_each_failed_image() -> None:
    slots = [slot(PASSED, 1.0), slot(FAILED, 0.5, attempts=2), slot(FAILED, 0.25)]
    msg = exhausted_message(slots, 0.9, "maxRerenders 1 reached")
    assert msg == (
        "2 of 3 image(s) failed text verification at minWordAccuracy 0.9 "
        "(image 1: best word_accuracy 0.5 after 2 renders, "
        "image 2: best word_accuracy 0.25 after 1 render); maxRerenders 1 reached"
    )


def test_header_value_is_one_bounded_ascii_line() -> None:
    assert header_value("a\r\nb  c\u00e9") == "a b c?"
    assert len(header_value("x" * 1000)) == 300


# -- the request field, the route table, compile ----------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("SALE", "not a string"),
        ({"a": 1}, "list of strings"),
        ([1], "text[0] must be a string"),
        (["ok", " "], "text[1] must not be empty"),
        (["x"] * 17, "at most 16"),
        (["x" * 501], "longer than 500"),
    ],
)
def test_text_field_rejected_naming_it(text: Any, message: str) -> None:
    with pytest.raises(RequestError) as err:
        parse_request(json.dumps({"prompt": "p", "text": text}).encode(), {})
    assert (err.value.status, err.value.param) == (400, "text")
    assert message in err.value.message


@pytest.mark.parametrize("text", [["SALE NOW"], [], None])
def test_text_field_forwarded_byte_for_byte(text: Any) -> None:
    raw = json.dumps({"prompt": "p", "text": text}).encode()
    p = parse_request(raw, {})
    assert p.forward_raw == raw and p.forward["text"] == text


def test_router_threshold_field_is_not_the_clients() -> None:
    with pytest.raises(RequestError) as err:
        parse_request(b'{"prompt": "p", "min_word_accuracy": 0}', {})
    assert err.value.param == "min_word_accuracy"


ROUTES = [
    {
        "name": "typo",
        "pool": "a",
        "fallbacks": ["b"],
        "verify": {"minWordAccuracy": 0.8, "onFail": {"pool": "big"}},
    },
    {"name": "rest", "pool": "a", "verify": {"minWordAccuracy": 1, "onFail": {"pool": "a"}}},
]


def test_route_table_carries_the_verify_spec() -> None:
    policy = RoutingPolicy.model_validate(
        {"kind": "RoutingPolicy", "metadata": {"name": "p"}, "spec": {"routes": ROUTES}}
    )
    typo, rest = compile_policy(policy).routes
    assert typo.verify is not None and typo.verify.min_word_accuracy == 0.8
    assert (typo.verify.max_rerenders, typo.verify.on_exhausted) == (1, "returnBest")
    assert typo.verify.on_fail.pool == "big"
    assert rest.verify is not None and rest.verify.on_fail.pool == "a"


@pytest.mark.parametrize(
    ("pools", "messages"),
    [
        ({"a", "b", "big"}, []),
        ({"a", "b"}, ["spec.routes[0] (typo) references ModelPool 'big'"]),
        # A pool named twice (pool and onFail.pool) is reported once.
        ({"b", "big"}, ["spec.routes[0] (typo) references ModelPool 'a'",
                        "spec.routes[1] (rest) references ModelPool 'a'"]),
    ],
)  # fmt: skip
def test_unknown_onfail_pool_is_a_missing_pool(pools: set[str], messages: list[str]) -> None:
    _, problems = compile_routes(RoutingPolicySpec.model_validate({"routes": ROUTES}), pools, [])
    assert {p.reason for p in problems} <= {"MissingPool"}
    assert len(problems) == len(messages)
    for p, m in zip(problems, messages, strict=True):
        assert p.message.startswith(m)


# -- the worker's per-request threshold --------------------------------------------------------

LIMITS = Limits(max_resolution=1024, max_steps=50, size_multiple=8, default_width=512,
                default_height=512)  # fmt: skip


@pytest.mark.parametrize(("value", "want"), [(None, None), (0, 0.0), (0.9, 0.9), (1, 1.0)])
def test_worker_takes_a_threshold_per_request(value: Any, want: float | None) -> None:
    body: dict[str, Any] = {"prompt": "a sign 'OPEN'"}
    if value is not None:
        body["min_word_accuracy"] = value
    assert validate_request(body, LIMITS).min_word_accuracy == want


@pytest.mark.parametrize("value", [1.5, -0.1, "0.9", True, [0.9]])
def test_worker_rejects_a_bad_threshold_naming_it(value: Any) -> None:
    with pytest.raises(WorkerRequestError) as err:
        validate_request({"prompt": "p", "min_word_accuracy": value}, LIMITS)
    assert (err.value.status, err.value.param) == (400, "min_word_accuracy")
