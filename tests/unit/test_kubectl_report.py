"""The report's side-by-side renders: verdicts, HTML, prompts, endpoints, answers (pure)."""

from __future__ import annotations

import base64
import html.parser
from typing import Any

import pytest

from modelfleet.canary.replay import GoldenPrompt
from modelfleet.kubectl import main, report
from modelfleet.kubectl.client import PluginError
from modelfleet.kubectl.renders import (
    MAX_GOLDEN_PAIRS,
    ReportPrompt,
    Target,
    golden_report_prompts,
    parse_response,
    ready_endpoint_url,
    request_body,
)
from modelfleet.kubectl.report_pairs import (
    PoolRender,
    RenderPair,
    TextVerdict,
    data_uri,
    expected_of,
    mean_accuracy,
    pairs_html,
    replay_html,
    text_verdict,
)

PASSED = {
    "verified": True,
    "status": "passed",
    "expected": ["SALE NOW"],
    "read": "SALE NOW",
    "word_accuracy": 1.0,
    "passed": True,
}
FAILED = {**PASSED, "status": "failed", "read": "SLAE NOW", "word_accuracy": 0.5, "passed": False}
UNREADABLE = {
    "verified": False,
    "status": "unreadable",
    "expected": ["X"],
    "reason": "no text found",
}


@pytest.mark.parametrize(
    ("render", "want"),
    [
        (PoolRender("s", b"png", PASSED), TextVerdict("passed", "SALE NOW", 1.0, True)),
        (PoolRender("s", b"png", FAILED), TextVerdict("failed", "SLAE NOW", 0.5, False)),
        (
            PoolRender("s", b"png", UNREADABLE),
            TextVerdict("unreadable", None, None, None, "no text found"),
        ),
        (
            PoolRender("s", b"png", None),
            TextVerdict("not verified", None, None, None, "no expected text, or verification off"),
        ),
        (PoolRender("s", error="boom"), TextVerdict("error", None, None, None, "boom")),
        (PoolRender("s"), TextVerdict("error", None, None, None, "no image")),
        # A block without status (an older worker): passed decides.
        (
            PoolRender("s", b"p", {"passed": False, "word_accuracy": 0}),
            TextVerdict("failed", None, 0.0, False),
        ),
        # Wrong types are not shown as values.
        (
            PoolRender(
                "s", b"p", {"status": "passed", "read": 3, "word_accuracy": "x", "passed": "y"}
            ),
            TextVerdict("passed", None, None, None),
        ),
    ],
)
def test_text_verdict(render: PoolRender, want: TextVerdict) -> None:
    assert text_verdict(render) == want


def _pair(stable: dict[str, Any] | None, candidate: dict[str, Any] | None, **kw: Any) -> RenderPair:
    return RenderPair(
        kw.get("prompt", 'a poster "SALE NOW"'),
        7,
        PoolRender("typography", b"\x89PNG-stable", stable),
        PoolRender("typography-v2", b"\x89PNG-candidate", candidate),
        expected=kw.get("expected", ()),
    )


def test_expected_of_prefers_given_then_either_block() -> None:
    assert expected_of(_pair(PASSED, FAILED, expected=("A B",))) == ("A B",)
    assert expected_of(_pair(None, FAILED)) == ("SALE NOW",)
    assert expected_of(_pair(None, None)) == ()


def test_mean_accuracy_counts_only_scored_renders() -> None:
    renders = [PoolRender("p", b"x", PASSED), PoolRender("p", b"x", FAILED), PoolRender("p", b"x")]
    assert mean_accuracy(renders) == 0.75
    assert mean_accuracy([PoolRender("p", error="e")]) is None


class _Collect(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.imgs: list[dict[str, str | None]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.imgs.append(dict(attrs))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_pairs_html_side_by_side_with_read_texts() -> None:
    page = pairs_html([_pair(PASSED, FAILED)], "typography", "typography-v2", "direct")
    parsed = _Collect()
    parsed.feed(page)
    srcs = [i["src"] for i in parsed.imgs]
    assert srcs == [data_uri(b"\x89PNG-stable"), data_uri(b"\x89PNG-candidate")]
    text = " ".join(parsed.text)
    assert "SALE NOW" in text and "SLAE NOW" in text
    assert "word accuracy 1" in text and "word accuracy 0.5" in text
    assert "passed: yes" in text and "passed: no" in text
    assert "stable 1, candidate 0.5" in text  # the means over the pairs
    # stable's cell comes before the candidate's, and each read sits in its own cell
    assert page.index("SALE NOW</q></div>") < page.index("SLAE NOW")


def test_pairs_html_escapes_everything() -> None:
    evil = {**FAILED, "read": "<script>x</script>", "expected": ["<b>"]}
    page = pairs_html(
        [_pair(evil, {**UNREADABLE, "reason": "<i>"}, prompt="<img src=x>")], "<s>", "c&", "<src>"
    )
    assert "<script" not in page and "<b>" not in page and "<i>" not in page
    assert "<img src=x>" not in page and "<s>" not in page and "<src>" not in page
    assert "&lt;script&gt;x&lt;/script&gt;" in page
    assert "c&amp;" in page


def test_pairs_html_shows_errors_and_unverified() -> None:
    pair = RenderPair("p", 1, PoolRender("a", error="HTTP 503: <busy>"), PoolRender("b", b"x"))
    page = pairs_html([pair], "a", "b", "direct")
    assert "HTTP 503: &lt;busy&gt;" in page
    assert "not verified" in page
    assert page.count("<img") == 1
    assert "Mean word accuracy" not in page


def test_render_report_with_pairs_is_self_contained() -> None:
    canary = {
        "metadata": {"name": "typo", "namespace": "ns"},
        "spec": {"stablePool": "typography", "candidatePool": "typography-v2", "steps": [50]},
        "status": {"phase": "RolledBack", "message": "text-accuracy: 0.7 < 0.9 x stable 1"},
    }
    page = report.render_report(canary, pairs=[_pair(PASSED, FAILED)], generated_at="T")
    assert page.startswith("<!DOCTYPE html>")
    assert "candidate (typography-v2)" in page and "stable (typography)" in page
    assert page.count("data:image/png;base64,") == 2
    assert "<script" not in page
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")


@pytest.mark.parametrize(
    ("prompts", "seeds", "want"),
    [
        ([], [], [ReportPrompt(p, s) for p, s in report.REPORT_PROMPTS]),
        (["a", "b"], [], [ReportPrompt("a", 1), ReportPrompt("b", 2)]),
        (["a"], [7, 8], [ReportPrompt("a", 7), ReportPrompt("a", 8)]),
        ([], [9], [ReportPrompt(p, 9) for p, _ in report.REPORT_PROMPTS]),
    ],
)
def test_report_prompts(prompts: list[str], seeds: list[int], want: list[ReportPrompt]) -> None:
    assert report.report_prompts(prompts, seeds) == want


def test_fixed_prompts_include_one_with_expected_text() -> None:
    from modelfleet_common.expected_text import expected_text

    assert [p for p, _ in report.REPORT_PROMPTS if expected_text(p, None)]


@pytest.mark.parametrize(
    ("prompt", "size", "steps", "want"),
    [
        (ReportPrompt("p", 3), "64x64", 2, {"size": "64x64", "steps": 2}),
        (ReportPrompt("p", 3), None, None, {}),
        (ReportPrompt("p", 3, ("SALE",)), None, 4, {"steps": 4, "text": ["SALE"]}),
        # A golden prompt's own size wins over the report's.
        (ReportPrompt("p", 3, size="512x256"), "64x64", None, {"size": "512x256"}),
    ],
)
def test_request_body(
    prompt: ReportPrompt, size: str | None, steps: int | None, want: dict[str, Any]
) -> None:
    base = {"prompt": "p", "seed": 3, "response_format": "b64_json"}
    assert request_body(prompt, size, steps) == {**base, **want}


PNG = base64.b64encode(b"\x89PNG").decode()


@pytest.mark.parametrize(
    ("data", "image", "block", "error"),
    [
        ({"data": [{"b64_json": PNG, "modelfleet": PASSED}]}, b"\x89PNG", PASSED, None),
        ({"data": [{"b64_json": PNG}]}, b"\x89PNG", None, None),
        ({"data": [{"b64_json": PNG, "modelfleet": "x"}]}, b"\x89PNG", None, None),
        ({"data": []}, None, None, "IndexError"),
        ({"data": [{"b64_json": "not base64!"}]}, None, None, "Error"),
        ([], None, None, "TypeError"),
    ],
)
def test_parse_response(data: Any, image: bytes | None, block: Any, error: str | None) -> None:
    got = parse_response("pool", "http://w/v1/images/generations", data)
    assert (got.image, got.verification) == (image, block)
    if error is None:
        assert got.error is None
    else:
        assert got.error is not None and error in got.error and "http://w" in got.error


def _slice(port: int | None, *endpoints: tuple[str, bool | None]) -> dict[str, Any]:
    return {
        "ports": [{"name": "http", "port": port}],
        "endpoints": [
            {"addresses": [a], "conditions": {} if r is None else {"ready": r}}
            for a, r in endpoints
        ],
    }


@pytest.mark.parametrize(
    ("slices", "want"),
    [
        ([], None),
        ([_slice(8080, ("10.250.0.9", True), ("10.250.0.3", True))], "http://10.250.0.3:8080"),
        ([_slice(8080, ("10.250.0.3", False), ("10.250.0.9", None))], None),
        ([_slice(None, ("10.250.0.3", True))], None),
        ([_slice(8080, ("fd00::1", True))], "http://[fd00::1]:8080"),
        (
            [_slice(8080, ("10.0.0.2", False)), _slice(9000, ("10.0.0.5", True))],
            "http://10.0.0.5:9000",
        ),
    ],
)
def test_ready_endpoint_url(slices: list[dict[str, Any]], want: str | None) -> None:
    assert ready_endpoint_url(slices) == want


def test_pair_line_names_both_reads() -> None:
    line = report.pair_line(_pair(PASSED, FAILED))
    assert "stable read 'SALE NOW' word accuracy 1 passed" in line
    assert "candidate read 'SLAE NOW' word accuracy 0.5 failed" in line
    assert "stable not verified" in report.pair_line(_pair(None, None))


def test_report_flags() -> None:
    a = main.build_parser().parse_args(
        ["report", "c", "--html", "o.html", "--from-pools", "--prompt", "x", "--seed", "3"]
    )
    assert (a.out, a.from_pools, a.prompt, a.seed, a.size) == ("o.html", True, ["x"], [3], None)


G1 = GoldenPrompt(1, 'a banner "A B"', ("A B",), "512x256")
G3 = GoldenPrompt(3, "shop", ("C D",))


@pytest.mark.parametrize(
    ("recorded", "want"),
    [
        # Nothing recorded yet: every prompt with every seed, in ConfigMap order.
        (
            [],
            [
                ReportPrompt(G1.prompt, 1, ("A B",), "512x256", 1),
                ReportPrompt(G1.prompt, 2, ("A B",), "512x256", 1),
                ReportPrompt("shop", 1, ("C D",), None, 3),
                ReportPrompt("shop", 2, ("C D",), None, 3),
            ],
        ),
        # The replay's recorded pairs (its worst), by line; unknown lines are skipped.
        (
            [{"line": 3, "seed": 2}, {"line": 9, "seed": 1}, {"line": "1", "seed": 1}],
            [ReportPrompt("shop", 2, ("C D",), None, 3)],
        ),
    ],
)
def test_golden_report_prompts(recorded: list[dict[str, Any]], want: list[ReportPrompt]) -> None:
    assert golden_report_prompts([G1, G3], [1, 2], recorded) == want


def test_golden_report_prompts_are_capped() -> None:
    many = [GoldenPrompt(n, f"p{n}", ("X",)) for n in range(1, 20)]
    assert len(golden_report_prompts(many, [1, 2], [])) == MAX_GOLDEN_PAIRS


def test_pinned_target_headers() -> None:
    t = Target.pinned("typography-v2", "http://router", "ns/images", "tok")
    assert dict(t.headers) == {
        "X-ModelFleet-Policy": "ns/images",
        "X-ModelFleet-Pool": "typography-v2",
        "X-ModelFleet-Operator-Token": "tok",
    }


REPLAY: dict[str, Any] = {
    "result": "fail",
    "message": "candidate <0.5> < 0.9 x stable 1",
    "stable": {"pool": "typography", "renders": 2, "verified": 2, "meanWordAccuracy": 1.0},
    "candidate": {"pool": "typography-v2", "renders": 2, "verified": 2, "meanWordAccuracy": 0.5},
    "renders": [
        {
            "line": 1,
            "seed": 7,
            "prompt": "p",
            "stable": {"status": "passed", "wordAccuracy": 1.0, "read": "SALE NOW"},
            "candidate": {"status": "failed", "wordAccuracy": 0.5, "read": "SL<AE> NOW"},
        }
    ],
}


def test_replay_section_and_recorded_reads_under_each_render() -> None:
    section = replay_html(REPLAY)
    assert "fail" in section and "candidate &lt;0.5&gt;" in section
    assert "typography-v2" in section and "0.5" in section
    assert replay_html(None) == ""
    pair = RenderPair("p", 7, PoolRender("s", b"1", PASSED), PoolRender("c", b"2", FAILED), line=1)
    page = pairs_html([pair], "s", "c", "pinned", REPLAY["renders"])
    assert "replay recorded: passed, read “SALE NOW”, word accuracy 1" in page
    assert "replay recorded: failed, read “SL&lt;AE&gt; NOW”, word accuracy 0.5" in page
    # Another seed of the same line has no record.
    other = RenderPair("p", 8, pair.stable, pair.candidate, line=1)
    assert "replay recorded" not in pairs_html([other], "s", "c", "x", REPLAY["renders"])


def test_render_report_shows_the_replay() -> None:
    canary = {"metadata": {"name": "c"}, "spec": {}, "status": {"replay": REPLAY}}
    assert "Pre-flight replay" in report.render_report(canary, generated_at="T")


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        ([], None),
        (["--from-pools"], None),
        (["--router-url", "u", "--operator-token-file", "f"], None),
        (["--stable-url", "a"], "--stable-url and --candidate-url go together"),
        (["--router-url", "u"], "--router-url and --operator-token-file go together"),
        (["--from-pools", "--stable-url", "a", "--candidate-url", "b"], "choose one"),
        (["--from-pools", "--router-url", "u", "--operator-token-file", "f"], "choose one"),
    ],
)
def test_check_sources(argv: list[str], error: str | None) -> None:
    args = main.build_parser().parse_args(["report", "c", "--out", "o", *argv])
    if error is None:
        report.check_sources(args)
    else:
        with pytest.raises(PluginError, match=error):
            report.check_sources(args)
