"""OCR engines behind one small Protocol; each works offline from its package alone.

rapidocr: the `rapidocr_onnxruntime` wheel ships PP-OCRv4 ONNX detection and
recognition models and runs them on onnxruntime. tesseract: Debian's
`tesseract-ocr` + `tesseract-ocr-eng`, run as a subprocess. Which is the
default, and why, is measured in docs/verification.md.

One engine instance serves one thread, on one core (onnxruntime intra-op
threads = 1, tesseract OMP_THREAD_LIMIT=1): the pool size is the number of
cores verification may use.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from typing import Any, Protocol

ENGINES = ("rapidocr", "tesseract")
DEFAULT_ENGINE = "rapidocr"
# The image is scaled so its longer side is at most this before OCR: display
# lettering stays well above what the recogniser needs (48 px high crops), and
# a 1024x1024 render costs a third of full size, with fewer misreads of
# blurred or striped backgrounds (measured in docs/verification.md).
MAX_SIDE = 640


class OcrUnavailableError(RuntimeError):
    """The chosen engine is not installed; the message names what to install."""


class OcrEngine(Protocol):
    name: str

    def read(self, image: Any) -> list[str]:
        """Text lines found in a PIL image, in reading order; [] when none."""
        ...


class RapidOcr:
    name = "rapidocr"

    def __init__(self, max_side: int = MAX_SIDE) -> None:
        try:
            from rapidocr_onnxruntime import RapidOCR
        except ImportError as exc:
            raise OcrUnavailableError(
                "OCR engine rapidocr is not installed: pip install rapidocr_onnxruntime "
                f"(part of the worker extra: pip install 'modelfleet[worker]') ({exc})"
            ) from exc
        self._max_side = max_side
        self._ocr = RapidOCR(
            intra_op_num_threads=1,
            inter_op_num_threads=1,
            # "min" 32: never upscale (its own "max" mode ignores the limit given).
            det_limit_side_len=32,
            det_limit_type="min",
            use_cls=False,  # banners are upright; the angle classifier only costs time
        )

    def read(self, image: Any) -> list[str]:
        image = image.convert("RGB")
        w, h = image.size
        scale = self._max_side / max(w, h)
        if scale < 1:
            image = image.resize((max(1, round(w * scale)), max(1, round(h * scale))))
        result, _ = self._ocr(image, use_cls=False)
        return [str(r[1]) for r in result or [] if str(r[1]).strip()]


class Tesseract:
    name = "tesseract"

    def __init__(self, binary: str | None = None, timeout_s: float = 30.0) -> None:
        path = binary or shutil.which("tesseract")
        if path is None:
            raise OcrUnavailableError(
                "OCR engine tesseract is not installed: apt-get install tesseract-ocr "
                "tesseract-ocr-eng"
            )
        langs = subprocess.run(
            [path, "--list-langs"], capture_output=True, text=True, timeout=timeout_s, check=False
        ).stdout.split()
        if "eng" not in langs:
            raise OcrUnavailableError(
                "tesseract has no English data: apt-get install tesseract-ocr-eng"
            )
        self._path = path
        self._timeout_s = timeout_s
        self._env = {**os.environ, "OMP_THREAD_LIMIT": "1"}

    def read(self, image: Any) -> list[str]:
        buf = io.BytesIO()
        image.convert("RGB").save(buf, format="PNG", compress_level=1)
        # --psm 11: sparse text, as on a banner; no page layout to find.
        out = subprocess.run(
            [self._path, "stdin", "stdout", "-l", "eng", "--psm", "11"],
            input=buf.getvalue(),
            capture_output=True,
            timeout=self._timeout_s,
            env=self._env,
            check=True,
        )
        return [line for line in out.stdout.decode("utf-8", "replace").splitlines() if line.strip()]


def make_engine(name: str) -> OcrEngine:
    """Raises OcrUnavailableError naming the package to install."""
    if name == "rapidocr":
        return RapidOcr()
    if name == "tesseract":
        return Tesseract()
    raise ValueError(f"unknown OCR engine {name!r}; one of {', '.join(ENGINES)}")
