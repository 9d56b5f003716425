"""What the router answers itself: errors in the OpenAI shape, 429s with a retry hint, and
the relay of a worker's answer."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web

from modelfleet.router.upstream import AttemptResult
from modelfleet.routing.ladder import Attempt, client_error_body
from modelfleet_common.errors import error_json

JSON = "application/json"


def error(
    status: int,
    code: str,
    message: str,
    param: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    return web.Response(
        status=status, body=error_json(code, message, param), content_type=JSON, headers=headers
    )


def relay(res: AttemptResult, headers: Mapping[str, str]) -> web.Response:
    """The worker's answer to the client: its body when it succeeded, its 4xx in the
    OpenAI error shape otherwise."""
    if res.outcome is Attempt.OK:
        return web.Response(status=200, body=res.body, content_type=JSON, headers=headers)
    return web.Response(
        status=res.status,
        body=client_error_body(res.status, res.body),
        content_type=JSON,
        headers=headers,
    )


def rejected(
    code: str,
    message: str,
    headers: Mapping[str, str],
    retry_after_s: float = 1.0,
    status: int = 429,
) -> web.Response:
    # Retry-After is whole seconds (RFC 9110), rounded up so a client never comes back
    # sooner than asked; retry-after-ms is the OpenAI-style hint (the SDK reads it first).
    hint = {
        "Retry-After": str(max(1, math.ceil(retry_after_s))),
        "retry-after-ms": str(max(0, round(retry_after_s * 1000))),
    }
    return error(status, code, message, headers={**headers, **hint})


@web.middleware
async def json_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """aiohttp's own 404/405/413 answers are text; clients get the error shape everywhere."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}.get(
            exc.status, "http_error"
        )
        return error(exc.status, code, exc.reason or str(exc), headers=None)
