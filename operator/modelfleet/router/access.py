"""Client keys at the router's edge: who sends a request (authenticate) and whether that
key may use the tier, model and route it asks for (authorize). The decisions are pure
(routing.clients); this module holds the live key ring, the failure limiter, the metrics
and the HTTP answers. A key is never logged, counted, echoed or kept: only its digest."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge

from modelfleet.router.responses import error, rejected
from modelfleet.routing.clients import (
    ANONYMOUS,
    ClientKey,
    FailureLimiter,
    KeyRefused,
    KeyRing,
    authorize,
    bearer,
)

log = logging.getLogger("modelfleet.router.access")

AUTH_MODES = ("keys", "off")
CLIENT = "modelfleet.client"  # request[CLIENT]: the ClientKey, or None when anonymous
PREFIX = "modelfleet_router_"
MISSING_KEY = (
    "You didn't provide an API key. Send your ModelFleet client key in an Authorization "
    "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY); see docs/clients.md."
)
WRONG_KEY = (
    "Incorrect API key provided. Ask your ModelFleet operator for a client key "
    "(docs/clients.md); a revoked key stops working within seconds."
)
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="modelfleet"'}


def outcome_of(status: int) -> str:
    """The outcome label of a request by its HTTP status (per-key counters)."""
    if status < 400:
        return "ok"
    if status == 401:
        return "unauthenticated"
    if status == 403:
        return "forbidden"
    if status == 429:
        return "rejected"
    if status < 500:
        return "client_error"
    return "upstream_error"


class Access:
    """The router's access layer (`--client-auth keys`). `update` swaps the key ring (each
    config snapshot carries one); the per-address failure limiter lives across swaps."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        failures_per_minute: float = 10.0,
        failure_burst: int = 10,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # Its own registry; the Router registers it into the router's (one /metrics).
        self.registry = registry or CollectorRegistry()
        registry = self.registry
        self.ring = KeyRing()
        self.limiter = FailureLimiter(failures_per_minute, failure_burst)
        self._clock = clock
        self._refused: tuple[KeyRefused, ...] = ()
        self.failures = Counter(
            PREFIX + "auth_failures_total",
            "Requests refused before routing for their credential, by reason: missing_key, "
            "invalid_key, rate_limited (too many failures from one address).",
            ["reason"],
            registry=registry,
        )
        self.key_requests = Counter(
            PREFIX + "client_requests_total",
            "Image requests by client key id (never the key; 'anonymous', namespace '', "
            "where a policy allows it) and outcome (ok, forbidden, rejected, client_error, "
            "upstream_error); namespace is the key's Secret's.",
            ["namespace", "key", "outcome"],
            registry=registry,
        )
        self.keys_loaded = Gauge(
            PREFIX + "client_keys",
            "Client keys the router accepts now.",
            registry=registry,
        )
        self.keys_refused = Gauge(
            PREFIX + "client_keys_refused",
            "Labelled Secrets refused as client keys (1 each), by Secret and the field at "
            "fault; the router log says which rule.",
            ["namespace", "secret", "field"],
            registry=registry,
        )

    def update(self, ring: KeyRing) -> None:
        """A new set of keys; refusals not seen before are logged once each."""
        for r in ring.refused:
            if r not in self._refused:
                log.error("%s", r.message())
        if ring.refused != self._refused:
            self.keys_refused.clear()
            for r in ring.refused:
                self.keys_refused.labels(r.namespace, r.secret, r.field).set(1)
        self._refused = ring.refused
        if len(ring.keys) != len(self.ring.keys):
            log.info("client keys: %d accepted, %d refused", len(ring.keys), len(ring.refused))
        self.ring = ring
        self.keys_loaded.set(len(ring.keys))

    def authenticate(
        self, request: web.Request, anonymous: bool
    ) -> ClientKey | web.Response | None:
        """The request's key; None: anonymous, which only a policy with
        spec.access.anonymous allows (there an unknown key is served anonymously too: the
        OpenAI SDK always sends one). Otherwise 401, or 429 for an address whose recent
        failures used up its allowance (checked first: a good guess gains nothing then)."""
        address = request.remote or ""
        now = self._clock()
        token = bearer(request.headers.get("Authorization"))
        key = None
        if not anonymous:
            wait = self.limiter.retry_after(address, now)
            if wait is not None:
                self.failures.labels("rate_limited").inc()
                return rejected(
                    "too_many_auth_failures",
                    "too many requests with a missing or wrong API key from this address; "
                    "retry later with a valid key",
                    CHALLENGE,
                    wait,
                )
        if token is not None:
            key = self.ring.find(token)
        if key is not None or anonymous:
            request[CLIENT] = key
            return key
        reason = "missing_key" if token is None else "invalid_key"
        self.limiter.failed(address, now)
        self.failures.labels(reason).inc()
        log.debug("401 %s from %s", reason, address)
        return error(
            401,
            "invalid_api_key",
            MISSING_KEY if token is None else WRONG_KEY,
            headers=CHALLENGE,
        )

    def authorize(
        self, key: ClientKey | None, tier: str, model: str | None, route: str
    ) -> web.Response | None:
        """403 naming the field (tier, model, route) the key may not use; None: allowed."""
        if key is None:
            return None
        denied = authorize(key, tier, model, route)
        if denied is None:
            return None
        return error(403, "permission_denied", denied.message(key.id), denied.field)

    @web.middleware
    async def count(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Counts every image request that authenticated (or was let in anonymously) by
        key id; the models list is not counted."""
        resp = await handler(request)
        if CLIENT in request and request.path.startswith("/v1/images/"):
            key: ClientKey | None = request[CLIENT]
            ns, kid = (key.namespace, key.id) if key else ("", ANONYMOUS)
            self.key_requests.labels(ns, kid, outcome_of(resp.status)).inc()
        return resp
