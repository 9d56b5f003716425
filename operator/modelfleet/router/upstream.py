"""HTTP client to workers: one attempt in, one classified result out."""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp
from yarl import URL

from modelfleet.routing.ladder import Attempt, busy_code, classify_response, parse_retry_after
from modelfleet.routing.stats import (
    BATCH_SIZE_HEADER,
    COST_HEADER,
    SERVICE_TIME_HEADER,
    TEXT_ACCURACY_SUM_HEADER,
    TEXT_PASSED_HEADER,
    TEXT_VERIFIED_HEADER,
    TextSummary,
    parse_cost,
    response_images,
)

GENERATIONS_PATH = "/v1/images/generations"
EDITS_PATH = "/v1/images/edits"
JSON_TYPE = "application/json"
# The worker's provenance headers (shared contract 1), relayed to the client as they came.
PROVENANCE_HEADERS = ("X-ModelFleet-Model", "X-ModelFleet-Revision", "X-ModelFleet-Cost-USD")


@dataclass(frozen=True)
class Payload:
    """What one attempt sends: a generation's JSON, or an edit's multipart body as the
    client sent it (same Content-Type, boundary included)."""

    body: bytes
    path: str = GENERATIONS_PATH
    content_type: str = JSON_TYPE


_JSON_HEADERS = {"Content-Type": JSON_TYPE}


@dataclass(frozen=True)
class AttemptResult:
    outcome: Attempt
    status: int  # 0 when no HTTP answer arrived
    body: bytes
    error: str = ""
    # The worker's own seconds per image and the batch it ran in (SERVICE_TIME_HEADER,
    # BATCH_SIZE_HEADER); service_s is None when not reported.
    service_s: float | None = None
    batch_size: int = 1
    # The worker's verification summary headers; None when it verified nothing.
    text: TextSummary | None = None
    # PROVENANCE_HEADERS the worker sent, for the client.
    headers: tuple[tuple[str, str], ...] = ()
    # What the worker said the answer cost (COST_HEADER, USD; None when not reported)
    # and the images an ok answer holds.
    cost_usd: float | None = None
    images: int = 0
    # A busy (429) worker's Retry-After, seconds, and its reason (ladder.busy_code).
    retry_after_s: float | None = None
    busy_code: str | None = None


def service_time(seconds: str | None, batch: str | None) -> tuple[float | None, int]:
    """The headers' values when they are sane; anything else is ignored (an old worker, a
    proxy in between): the attempt adds no service-time sample, or counts as batch 1."""
    if seconds is None:
        return None, 1
    try:
        v = float(seconds)
    except ValueError:
        return None, 1
    if not 0.0 <= v < 1e6:  # also rejects nan and inf
        return None, 1
    try:
        b = int(batch) if batch is not None else 1
    except ValueError:
        b = 1
    return v, b if b >= 1 else 1


class UpstreamClient:
    def __init__(self, connect_timeout_s: float = 2.0, max_connections: int = 1024) -> None:
        self._connect_timeout_s = connect_timeout_s
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        # Parsed once: URL parsing and timeout objects are a visible share of a request's CPU.
        self._urls: dict[tuple[str, str], URL] = {}
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self._max_connections,
            limit_per_host=0,
            # Pooled keep-alive connections to workers; the router resolves no names.
            use_dns_cache=False,
            keepalive_timeout=30,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            # The worker decides content types; we pass bodies through as bytes.
            auto_decompress=False,
            skip_auto_headers=("User-Agent",),
            # Workers set no cookies; the default jar filters every request and response.
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def generate(self, endpoint: str, body: bytes, timeout_s: float) -> AttemptResult:
        return await self.send(endpoint, Payload(body), timeout_s)

    async def send(self, endpoint: str, payload: Payload, timeout_s: float) -> AttemptResult:
        assert self._session is not None, "UpstreamClient.start() not called"
        key = (endpoint, payload.path)
        url = self._urls.get(key)
        if url is None:
            if len(self._urls) > 10000:  # endpoints churn over weeks of rollouts
                self._urls.clear()
            url = self._urls[key] = URL(endpoint + payload.path)
        timeout = self._timeouts.get(timeout_s)
        if timeout is None:
            if len(self._timeouts) > 1000:  # remaining-deadline values vary
                self._timeouts.clear()
            timeout = self._timeouts[timeout_s] = aiohttp.ClientTimeout(
                total=timeout_s, sock_connect=min(self._connect_timeout_s, timeout_s)
            )
        ctype = payload.content_type
        headers = _JSON_HEADERS if ctype == JSON_TYPE else {"Content-Type": ctype}
        try:
            async with self._session.post(
                url,
                data=payload.body,
                headers=headers,
                timeout=timeout,
            ) as resp:
                data = await resp.read()
                status = resp.status
                service = resp.headers.get(SERVICE_TIME_HEADER)
                batch = resp.headers.get(BATCH_SIZE_HEADER) if service is not None else None
                cost = resp.headers.get(COST_HEADER)
                verified = resp.headers.get(TEXT_VERIFIED_HEADER)
                text = (
                    TextSummary.parse(
                        verified,
                        resp.headers.get(TEXT_PASSED_HEADER),
                        resp.headers.get(TEXT_ACCURACY_SUM_HEADER),
                    )
                    if verified is not None
                    else None
                )
                rh = resp.headers
                relayed = tuple((h, rh[h]) for h in PROVENANCE_HEADERS if h in rh)
                retry_after = (
                    parse_retry_after(rh.get("Retry-After"), rh.get("retry-after-ms"))
                    if status == 429
                    else None
                )
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            # Nothing reached the worker: always safe to try another one.
            return AttemptResult(Attempt.CONNECT_ERROR, 0, b"", str(exc))
        except TimeoutError:
            return AttemptResult(Attempt.TIMEOUT, 0, b"", f"no answer within {timeout_s:g}s")
        except aiohttp.ClientError as exc:
            # Reset mid-request, malformed HTTP, truncated body...
            return AttemptResult(Attempt.UPSTREAM_ERROR, 0, b"", f"{type(exc).__name__}: {exc}")
        service_s, batch_size = service_time(service, batch)
        outcome = classify_response(status, data)
        images = response_images(data) if outcome is Attempt.OK else 0
        return AttemptResult(
            outcome,
            status,
            data,
            "",
            service_s,
            batch_size,
            text,
            headers=relayed,
            cost_usd=parse_cost(cost),
            images=images,
            retry_after_s=retry_after,
            busy_code=busy_code(data) if status == 429 else None,
        )
