"""`modelfleet-worker verify`: one JSON object per image, exit 0/1/2, manifests in order."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from modelfleet_dev.textrender import draw_text, random_style


def run(*args: str) -> tuple[int, list[dict[str, Any]], str]:
    p = subprocess.run(
        [sys.executable, "-m", "modelfleet_worker.cli", "verify", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return p.returncode, [json.loads(line) for line in p.stdout.splitlines()], p.stderr


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("banners")
    for name, lines in {"sale": ["SALE NOW"], "slae": ["SLAE NOW"], "blank": []}.items():
        rng = random.Random(7)
        draw_text(lines, 768, 384, random_style(rng), rng).save(d / f"{name}.png")
    (d / "junk.png").write_bytes(b"not a png")
    return d


def test_passed_prints_the_score_and_exits_0(images: Path) -> None:
    code, out, _ = run("--image", str(images / "sale.png"), "--text", "SALE NOW")
    assert code == 0 and len(out) == 1
    r = out[0]
    assert {"word_accuracy", "ned", "read", "passed"} <= set(r)
    assert (r["passed"], r["word_accuracy"], r["status"]) == (True, 1.0, "passed")
    assert "SALE NOW" in r["read"]


def test_failed_exits_1(images: Path) -> None:
    code, out, _ = run("--image", str(images / "slae.png"), "--text", "SALE", "--text", "NOW")
    assert code == 1
    assert out[0]["passed"] is False and out[0]["word_accuracy"] == 0.5
    assert out[0]["expected"] == ["SALE", "NOW"]


def test_threshold_flag(images: Path) -> None:
    code, out, _ = run(
        "--image", str(images / "slae.png"), "--text", "SALE NOW", "--min-word-accuracy", "0.5"
    )
    assert code == 0 and out[0]["passed"] and out[0]["min_word_accuracy"] == 0.5


def test_no_text_in_image_is_unreadable_and_fails(images: Path) -> None:
    code, out, _ = run("--image", str(images / "blank.png"), "--text", "SALE NOW")
    assert code == 1
    assert (out[0]["status"], out[0]["passed"], out[0]["word_accuracy"]) == (
        "unreadable",
        False,
        None,
    )


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["--image", "{d}/missing.png", "--text", "A"], "--image"),
        (["--image", "{d}/junk.png", "--text", "A"], "--image"),
        (["--image", "{d}/sale.png"], "--text"),
        (["--image", "{d}/sale.png", "--text", "  "], "--text"),
        (["--text", "A"], "--image"),
        (
            ["--image", "{d}/sale.png", "--text", "A", "--min-word-accuracy", "2"],
            "--min-word-accuracy",
        ),
        (["--manifest", "{d}/none.jsonl"], "--manifest"),
        (["--manifest", "{d}/m.jsonl", "--image", "{d}/sale.png"], "--manifest"),
    ],
)
def test_unusable_input_exits_2_naming_the_argument(
    images: Path, args: list[str], names: str
) -> None:
    (images / "m.jsonl").write_text('{"image": "sale.png", "text": "SALE NOW"}\n')
    code, out, err = run(*(a.format(d=images) for a in args))
    assert code == 2 and out == []
    assert names in err, err


def test_manifest_scores_in_order_in_one_process(images: Path) -> None:
    m = images / "set.jsonl"
    m.write_text(
        "\n".join(
            json.dumps(e)
            for e in [
                {"image": "sale.png", "text": "SALE NOW"},
                {"image": "slae.png", "text": ["SALE NOW"]},
                {"image": str(images / "sale.png"), "text": ["SALE", "NOW"]},
            ]
        )
        + "\n\n"
    )
    code, out, _ = run("--manifest", str(m))
    assert code == 1  # one failed
    assert [Path(r["image"]).name for r in out] == ["sale.png", "slae.png", "sale.png"]
    assert [r["passed"] for r in out] == [True, False, True]


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("not json", "not JSON"),
        ('{"text": "A"}', "'image'"),
        ('{"image": "sale.png"}', "at least one expected text"),
        ('{"image": "sale.png", "text": [5]}', "text[0] must be a string"),
    ],
)
def test_bad_manifest_line_exits_2_naming_the_line(images: Path, line: str, why: str) -> None:
    m = images / "bad.jsonl"
    m.write_text('{"image": "sale.png", "text": "SALE NOW"}\n' + line + "\n")
    code, out, err = run("--manifest", str(m))
    assert code == 2 and out == []
    assert f"{m} line 2" in err and why in err, err


def test_manifest_unreadable_image_keeps_its_line_and_exits_2(images: Path) -> None:
    m = images / "junk.jsonl"
    m.write_text('{"image": "junk.png", "text": "A"}\n{"image": "sale.png", "text": "SALE NOW"}\n')
    code, out, err = run("--manifest", str(m))
    assert code == 2 and "cannot read image" in err
    assert "error" in out[0] and "line 1" in out[0]["error"]
    assert out[1]["passed"] is True
