"""`modelfleet-worker verify`: the worker's text scoring outside a server.

    modelfleet-worker verify --image banner.png --text "SALE NOW" [--text ...]
    modelfleet-worker verify --manifest set.jsonl

One JSON object per image on stdout. Exit 0 when every image passed, 1 when
one failed or had no readable text, 2 on unusable input (the message names
the argument, and the manifest line).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from modelfleet_common.expected_text import ExpectedTextError, parse_text_field

from .config import ENV_PREFIX, SETTINGS
from .ocr import ENGINES, OcrEngine, OcrUnavailableError, make_engine
from .verify import PASSED, verify_image

EXIT_PASSED, EXIT_FAILED, EXIT_UNUSABLE = 0, 1, 2


class UnusableInputError(Exception):
    pass


def _setting(name: str, env: dict[str, str] | None = None) -> Any:
    """The serve setting's env var when set (raises ValueError naming it), else its default."""
    s = next(s for s in SETTINGS if s.name == name)
    if env is None:
        return s.default
    try:
        return s.parse(env[s.env]) if s.env in env else s.default
    except (ValueError, argparse.ArgumentTypeError) as exc:
        raise ValueError(f"{s.env}={env[s.env]!r}: {exc}") from exc


def add_verify_arguments(p: argparse.ArgumentParser) -> None:
    from .config import _rate

    p.add_argument("--image", help="one image file to score")
    p.add_argument(
        "--text", action="append", default=None, help="text the image should show (repeatable)"
    )
    p.add_argument(
        "--manifest",
        help="JSON lines, each {'image': PATH, 'text': [..] or '..'}; "
        "paths are relative to the manifest's folder",
    )
    p.add_argument(
        "--min-word-accuracy",
        type=_rate,
        default=None,
        help=f"pass threshold [env {ENV_PREFIX}VERIFY_MIN_WORD_ACCURACY, default "
        f"{_setting('verify_min_word_accuracy')}]",
    )
    p.add_argument(
        "--engine",
        choices=ENGINES,
        default=None,
        help=f"OCR engine [env {ENV_PREFIX}VERIFY_ENGINE, default {_setting('verify_engine')}]",
    )


@dataclass(frozen=True)
class Item:
    image: Path
    text: tuple[str, ...]
    label: str  # how errors name where it came from


def _texts(value: object, where: str) -> tuple[str, ...]:
    try:
        text = parse_text_field(value)
    except ExpectedTextError as exc:
        raise UnusableInputError(f"{where}: {exc}") from exc
    if not text:
        raise UnusableInputError(f"{where}: at least one expected text is required")
    return text


def _manifest(path: str) -> list[Item]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UnusableInputError(f"--manifest: cannot read {path}: {exc}") from exc
    base = Path(path).parent
    items = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"--manifest {path} line {n}"
        try:
            entry = json.loads(line)
        except ValueError as exc:
            raise UnusableInputError(f"{where}: not JSON: {exc}") from exc
        if not isinstance(entry, dict) or not isinstance(entry.get("image"), str):
            raise UnusableInputError(f"{where}: needs an 'image' path (a string)")
        text = entry.get("text")
        text = [text] if isinstance(text, str) else text
        items.append(Item(base / entry["image"], _texts(text, f"{where}: text"), where))
    if not items:
        raise UnusableInputError(f"--manifest: {path} lists no images")
    return items


def _items(args: argparse.Namespace) -> list[Item]:
    if args.manifest and (args.image or args.text):
        raise UnusableInputError("--manifest: give either --manifest or --image/--text, not both")
    if args.manifest:
        return _manifest(args.manifest)
    if not args.image:
        raise UnusableInputError("--image: an image to score is required (or --manifest)")
    if not args.text:
        raise UnusableInputError("--text: the text the image should show is required")
    return [Item(Path(args.image), _texts(args.text, "--text"), "--image")]


def _open(item: Item) -> Any:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(item.image) as im:
            im.load()
            return im.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise UnusableInputError(f"{item.label}: cannot read image {item.image}: {exc}") from exc


def score_item(engine: OcrEngine, item: Item, min_word_accuracy: float) -> dict[str, Any]:
    """Raises UnusableInputError when the image cannot be opened."""
    v = verify_image(engine, _open(item), item.text, min_word_accuracy)
    s = v.score
    return {
        "image": str(item.image),
        "status": v.status,
        "expected": list(item.text),
        "read": s.read if s else "",
        "word_accuracy": round(s.word_accuracy, 4) if s else None,
        "ned": round(s.ned, 4) if s else None,
        "exact": s.exact if s else False,
        "passed": v.status == PASSED,
        "min_word_accuracy": min_word_accuracy,
        "engine": v.engine,
        "ocr_ms": round(v.ocr_s * 1000.0, 1),
        **({"reason": v.reason} if v.reason else {}),
    }


def run(args: argparse.Namespace, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    try:
        threshold = (
            args.min_word_accuracy
            if args.min_word_accuracy is not None
            else _setting("verify_min_word_accuracy", dict(os.environ))
        )
        engine_name = args.engine or _setting("verify_engine", dict(os.environ))
        items = _items(args)
    except (UnusableInputError, ValueError, argparse.ArgumentTypeError) as exc:
        print(f"modelfleet-worker verify: {exc}", file=err)
        return EXIT_UNUSABLE
    try:
        engine = make_engine(engine_name)
    except OcrUnavailableError as exc:
        print(f"modelfleet-worker verify: --engine: {exc}", file=err)
        return EXIT_UNUSABLE
    code = EXIT_PASSED
    for item in items:
        try:
            result = score_item(engine, item, threshold)
        except UnusableInputError as exc:
            if not args.manifest:
                print(f"modelfleet-worker verify: {exc}", file=err)
                return EXIT_UNUSABLE
            # One line per manifest entry, in order, even for the unusable ones.
            print(f"modelfleet-worker verify: {exc}", file=err)
            print(json.dumps({"image": str(item.image), "error": str(exc)}), file=out, flush=True)
            code = EXIT_UNUSABLE
            continue
        print(json.dumps(result), file=out, flush=True)
        if not result["passed"] and code == EXIT_PASSED:
            code = EXIT_FAILED
    return code


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="modelfleet-worker verify")
    add_verify_arguments(p)
    return run(p.parse_args(argv))
