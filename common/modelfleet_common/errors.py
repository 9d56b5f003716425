"""The error envelope every ModelFleet HTTP API answers with (OpenAI's shape)."""

from __future__ import annotations

import json
from typing import Any


def error_body(code: str, message: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "param": param}}


def error_json(code: str, message: str, param: str | None = None) -> bytes:
    return json.dumps(error_body(code, message, param)).encode()
