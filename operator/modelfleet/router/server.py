"""The router's HTTP shell: parse, pick, admit, forward along the ladder, record.
Decisions live in modelfleet.routing; this module does I/O and bookkeeping only."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable, Mapping

from aiohttp import web
from prometheus_client import generate_latest

from modelfleet.router.access import Access
from modelfleet.router.admission import (
    AdmissionGate,
    Limits,
    QueueTimeout,
    Refused,
    Rejected,
    TierCollector,
    admit,
)
from modelfleet.router.assets import AssetStore, AssetTicket, StickyAssets
from modelfleet.router.config import Snapshot
from modelfleet.router.metrics import LiveCollector, RouterMetrics
from modelfleet.router.responses import JSON, json_errors, rejected, relay
from modelfleet.router.responses import error as _error
from modelfleet.router.serving import Ladder, Settings
from modelfleet.router.spend import Spend
from modelfleet.router.textgate import GateRequest, Served, TextGate, Unserved
from modelfleet.router.upstream import EDITS_PATH, Payload
from modelfleet.routing.form import FormError, boundary_of, part_being_read, scan_form
from modelfleet.routing.hold import PolicyBounds, demand_rows
from modelfleet.routing.intent import ParsedRequest, RequestError, parse_edit_form, parse_request
from modelfleet.routing.ladder import Attempt, Outcome, exhausted
from modelfleet.routing.models import (
    ModelNotFound,
    available,
    model_object,
    models_list,
    route_for,
)
from modelfleet.routing.pin import PINNED_HEADER, POOL_HEADER, PinRefused, check_pin
from modelfleet.routing.stats import HORIZON_S, AttemptStats
from modelfleet.routing.sticky import model_pools
from modelfleet.routing.table import (
    PolicyTable,
    RouteEntry,
    pool_ladder,
    select_policy,
)
from modelfleet.routing.tiers import resolve_tier
from modelfleet_common.expected_text import expected_text

__all__ = ["Router", "Settings"]

MAX_BODY_BYTES = 1024 * 1024
POLICY_HEADER = "x-modelfleet-policy"


class Router:
    def __init__(
        self,
        settings: Settings | None = None,
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        operator_credential: Callable[[], bytes | None] = lambda: None,
        asset_store: AssetStore | None = None,
        access: Access | None = None,
    ) -> None:
        self.settings = settings or Settings()
        # Client keys (router.access); None: --client-auth off, every client is served.
        self.access = access
        # The operator's credential for pool pins (routing.pin); read per pinned request,
        # so a rotated Secret takes effect without a restart.
        self._credential = operator_credential
        self.metrics = RouterMetrics()
        if access is not None:
            self.metrics.registry.register(access.registry)
        self.stats = AttemptStats()
        self.spend = Spend(self.metrics, clock)  # per-key rpm, budgets (memory until .use)
        self.snapshot: Snapshot | None = None
        self._rnd = (rng or random.Random()).random
        self._clock = clock
        self._gates: dict[str, tuple[PolicyTable, AdmissionGate]] = {}
        self._upload_bytes = 0  # edit uploads held now (Settings.max_upload_bytes_in_flight)
        self.ladder = Ladder(
            self.settings, self.metrics, self.stats, self._rnd, clock, lambda: self.snapshot
        )
        # (namespace, pool) -> requests waiting for an admission slot, by the pool the
        # route's weights picked for them (GET /v1/demand).
        self._queued: dict[tuple[str, str], int] = {}
        # Sticky assets (router.assets); None: asset_id is accepted and ignored.
        self.assets = (
            None if asset_store is None else StickyAssets(asset_store, self.metrics.registry)
        )
        self.metrics.registry.register(TierCollector(self._gate_rows))
        self.metrics.registry.register(LiveCollector(self._gate_rows, lambda: self.snapshot))

    def _gate_rows(self) -> list[tuple[str, str, AdmissionGate]]:
        return [(p.namespace, p.name, g) for p, g in self._gates.values()]

    # -- configuration ---------------------------------------------------------------

    def apply(self, snapshot: Snapshot) -> None:
        """Swap in a new config. Gates persist across updates so in-flight counts carry."""
        gates: dict[str, tuple[PolicyTable, AdmissionGate]] = {}
        for p in snapshot.policies:
            a = p.admission
            limits = Limits(a.max_in_flight, a.max_queue, a.queue_timeout_ms / 1000.0)
            old = self._gates.get(p.key)
            if old is not None:
                old[1].update(limits)
                gates[p.key] = (p, old[1])
            else:
                gates[p.key] = (p, AdmissionGate(limits))
        # A removed policy's gate is dropped; its in-flight requests finish on their own ref.
        self._gates = gates
        self.ladder.keep_only(u for urls in snapshot.endpoints.values() for u in urls)
        self.snapshot = snapshot
        if self.access is not None:
            self.access.update(snapshot.client_keys)
        self.ladder.holds.wake(snapshot)  # requests held for pools that now have workers

    # -- app -------------------------------------------------------------------------

    def make_app(self) -> web.Application:
        counted = [] if self.access is None else [self.access.count]
        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[json_errors, *counted])
        app.router.add_post("/v1/images/generations", self.generations)
        app.router.add_post("/v1/images/edits", self.edits)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/v1/models/{model}", self.model)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.prometheus)
        app.router.add_get("/v1/stats", self.stats_handler)
        app.router.add_get("/v1/demand", self.demand)
        app.on_startup.append(self._on_startup)
        app.on_cleanup.append(self._on_cleanup)
        return app

    async def _on_startup(self, _app: web.Application) -> None:
        await self.ladder.start()

    async def _on_cleanup(self, _app: web.Application) -> None:
        await self.ladder.close()
        if self.assets is not None:
            await self.assets.close()
        await self.spend.close()

    async def healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, _request: web.Request) -> web.Response:
        if self.snapshot is None or not self.snapshot.policies:
            return _error(503, "not_ready", "no configuration (RoutingPolicy) loaded yet")
        return web.json_response({"status": "ready", "policies": len(self.snapshot.policies)})

    async def prometheus(self, _request: web.Request) -> web.Response:
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4"})

    async def stats_handler(self, request: web.Request) -> web.Response:
        raw = request.query.get("window", "60")
        try:
            window = int(raw)
        except ValueError:
            window = 0
        if not 1 <= window <= HORIZON_S:
            return _error(
                400, "invalid_request", f"window must be 1 to {HORIZON_S} seconds", "window"
            )
        # offset: the window ends that many seconds ago (a canary at 100% re-reads the
        # stable's service time from the previous step's window).
        raw_offset = request.query.get("offset", "0")
        try:
            offset = int(raw_offset)
        except ValueError:
            offset = -1
        if not 0 <= offset <= HORIZON_S - window:
            return _error(
                400,
                "invalid_request",
                f"offset must be 0 to {HORIZON_S} - window seconds",
                "offset",
            )
        pools = self.stats.window(window, self._clock() - offset)
        return web.json_response(
            {
                "window_seconds": window,
                "offset_seconds": offset,
                "pools": [p.wire(self.stats.bounds, self.stats.service_bounds) for p in pools],
                "clients": await self.spend.clients(),
            }
        )

    async def demand(self, _request: web.Request) -> web.Response:
        """Live demand per pool, summed by the operator's autoscaler over every router."""
        rows = demand_rows(self.ladder.pool_in_flight, self._queued, self.ladder.holds.held)
        return web.json_response({"time": time.time(), "pools": rows})

    # -- the data path ---------------------------------------------------------------

    async def generations(self, request: web.Request) -> web.Response:
        start = self._clock()
        snap = self.snapshot
        if snap is None or not snap.policies:
            return _error(503, "not_ready", "router has no RoutingPolicy yet")
        if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
            return _error(413, "body_too_large", f"body exceeds {MAX_BODY_BYTES} bytes")
        try:
            # Read the whole body before taking a slot: a slow client holds no capacity.
            async with asyncio.timeout(self.settings.body_timeout_s):
                raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _error(413, "body_too_large", f"body exceeds {MAX_BODY_BYTES} bytes")
        except TimeoutError:
            return _error(408, "body_timeout", "request body not received in time")
        return await self._route(request, snap, start, lambda h: parse_request(raw, h), None)

    async def edits(self, request: web.Request) -> web.Response:
        """Multipart, as the OpenAI SDK sends it. Routed like a generation; the body goes
        to the worker's /v1/images/edits byte for byte, with the client's Content-Type."""
        start = self._clock()
        snap = self.snapshot
        if snap is None or not snap.policies:
            return _error(503, "not_ready", "router has no RoutingPolicy yet")
        ctype = request.headers.get("Content-Type", "")
        try:
            boundary = boundary_of(ctype)
        except FormError as exc:
            return _error(400, "invalid_request", exc.message, exc.param)
        # Uploads are read before admission (a slow client holds no slot), so their memory
        # has its own budget: the most every edit being read or served may hold at once.
        limit = self.settings.max_upload_bytes
        length = request.content_length
        budget = self.settings.max_upload_bytes_in_flight
        # At most the whole budget: one upload alone always gets its turn.
        held = min(limit if length is None else min(length, limit + 1), budget)
        if self._upload_bytes + held > budget:
            return rejected(
                "overloaded",
                f"the router holds {budget} bytes of edit uploads at most; retry shortly",
                {},
            )
        self._upload_bytes += held
        try:
            got = await self._read_upload(request, boundary)
            if isinstance(got, web.Response):
                return got
            try:
                form = scan_form(got, boundary)
            except FormError as exc:
                return _error(400, "invalid_request", exc.message, exc.param)
            payload = Payload(got, EDITS_PATH, ctype)
            return await self._route(
                request,
                snap,
                start,
                lambda h: parse_edit_form(form.fields, form.files, h),
                payload,
            )
        finally:
            self._upload_bytes -= held

    async def _read_upload(self, request: web.Request, boundary: bytes) -> bytes | web.Response:
        """The whole body, once (retries and fallbacks resend it), before taking a slot;
        over the limit: 413 naming the part being read."""
        limit = self.settings.max_upload_bytes
        length = request.content_length
        try:
            async with asyncio.timeout(self.settings.body_timeout_s):
                if length is not None and length <= limit:
                    return await request.content.readexactly(length)
                chunks: list[bytes] = []
                total = 0
                async for chunk in request.content.iter_chunked(256 * 1024):
                    total += len(chunk)
                    chunks.append(chunk)
                    if total > limit:
                        # The part that crossed the limit (the last chunk may go past it).
                        part = part_being_read(b"".join(chunks)[: limit + 1], boundary)
                        where = f" while reading {part!r}" if part else ""
                        return _error(
                            413,
                            "body_too_large",
                            f"upload exceeds the router's limit of {limit} bytes{where}",
                            part,
                        )
                return b"".join(chunks)
        except asyncio.IncompleteReadError:
            return _error(400, "invalid_request", "request body shorter than its Content-Length")
        except TimeoutError:
            return _error(408, "body_timeout", "request body not received in time")

    async def _route(
        self,
        request: web.Request,
        snap: Snapshot,
        start: float,
        parse: Callable[[Mapping[str, str]], ParsedRequest],
        edit: Payload | None,
    ) -> web.Response:
        """Policy, pin, parse, route (by model or intent), admit, forward. `edit`: an
        edit's payload (forwarded as sent; the text gate re-renders it); None: a generation."""
        headers = {k.lower(): v for k, v in request.headers.items()}
        policy = select_policy(snap.policies, headers.get(POLICY_HEADER))
        if policy is None:
            return _error(
                400,
                "unknown_policy",
                f"no RoutingPolicy named {headers.get(POLICY_HEADER)!r}",
                "X-ModelFleet-Policy",
            )
        ns, pname = policy.namespace, policy.name
        pin = check_pin(headers, self._credential()) if POOL_HEADER.lower() in headers else None
        if isinstance(pin, PinRefused):
            self.metrics.pinned(ns, headers.get(POOL_HEADER.lower(), ""), "refused")
            return _error(pin.status, pin.code, pin.message, pin.param)
        client = None  # the request's ClientKey; None: anonymous or --client-auth off
        if pin is None and self.access is not None:
            who = self.access.authenticate(request, policy.anonymous)
            if isinstance(who, web.Response):
                return who
            client = who
        try:
            parsed = resolve_tier(parse(headers), policy.tiers, policy.key)
        except RequestError as exc:
            if pin is not None:
                self.metrics.pinned(ns, pin, Outcome.CLIENT_ERROR.value)
            else:
                self._finish(ns, pname, "", "", Outcome.CLIENT_ERROR, start)
            return web.json_response(exc.body(), status=exc.status)
        if pin is not None:
            return await self._pinned(snap, policy, pin, parsed, start, edit)
        route = route_for(policy, parsed.intent, parsed.model, snap.model_names)
        if isinstance(route, ModelNotFound):
            self._finish(ns, pname, "", "", Outcome.CLIENT_ERROR, start)
            return _error(404, "model_not_found", route.message, "model")
        if route is None:
            self._finish(ns, pname, "", "", Outcome.CLIENT_ERROR, start)
            return _error(
                400,
                "no_route",
                f"no route of RoutingPolicy {policy.key} matches this request "
                f"(tier {parsed.intent.tier}, tags {sorted(parsed.intent.tags)})",
            )
        if self.access is not None:
            denied = self.access.authorize(client, parsed.intent.tier, parsed.model, route.name)
            if denied is not None:
                self._finish(ns, pname, route.name, "", Outcome.CLIENT_ERROR, start)
                return denied
        if (limited := await self.spend.limit(client, (ns, pname, route.name), start)) is not None:
            return limited
        entry = self._gates.get(policy.key)
        if entry is None:  # config swapped between lines above; treat as the new one
            return _error(503, "not_ready", "configuration changed, retry")
        gate = entry[1]
        got = await admit(
            gate, policy, parsed, route, lambda p: _routed(route_for(policy, p.intent, p.model,
            snap.model_names)), client.priority if client else 0, self._rnd, self._queued,
        )  # fmt: skip
        if isinstance(got, Refused):
            self._finish(ns, pname, route.name, "", Outcome.REJECTED, start)
            return rejected(got.code, got.message, got.headers, got.retry_after_s)
        route, parsed, chosen, route_headers = got.route, got.parsed, got.chosen, got.headers
        admitted = self._clock()
        try:
            held = await self.spend.hold(client, parsed, route, policy, snap, start)
            if isinstance(held, web.Response):
                return held
            route, chosen, route_headers = held.routed(route, chosen, route_headers)
            text_gate: GateRequest | None = None
            verify = route.verify
            if verify is not None and not expected_text(
                parsed.intent.prompt, parsed.forward.get("text")
            ):
                verify = None  # nothing to verify: no gate
            if edit is not None:
                payload = edit
                if verify is not None:  # sent as is: the worker scores at its own bar
                    text_gate = GateRequest(verify, parsed.forward, edit)
            elif verify is not None:
                # The text gate: the worker scores at the route's threshold.
                fwd = {**parsed.forward, "min_word_accuracy": verify.min_word_accuracy}
                text_gate = GateRequest(verify, fwd)
                payload = Payload(json.dumps(fwd, separators=(",", ":")).encode())
            else:
                payload = Payload(_generation_body(parsed))
            if route.shadow is not None and self._rnd() * 100 < route.shadow.percent:
                self.ladder.shadow(snap, ns, route.shadow.pool, payload)
            # The ladder is built here so a preferred pool (sticky assets) can go first.
            ladder = pool_ladder(route, chosen)
            ticket = None
            if parsed.asset_id is not None and self.assets is not None:
                live = {p for n, p in snap.endpoints if n == ns}
                serving = model_pools(parsed.model, ns, snap.model_names)
                ticket = await self.assets.lookup(ns, parsed.asset_id, ladder, live, serving)
                ladder, chosen = ticket.ladder, ticket.choice.pool_first or chosen
            return await held.settled(self._forward(
                snap, ns, pname, route, chosen, ladder, payload, start, route_headers, text_gate,
                ticket, PolicyBounds(gate.limits.queue_timeout_s, gate.limits.max_in_flight),
            ))  # fmt: skip
        except asyncio.CancelledError:
            # The client went away; the attempt was cancelled with it.
            self._finish(ns, pname, route.name, "", Outcome.CLIENT_ERROR, start)
            raise
        finally:
            gate.release(route.name, self._clock() - admitted)

    async def models(self, request: web.Request) -> web.Response:
        """OpenAI's model list: the names the policy's routes serve now."""
        got = self._models_policy(request)
        if isinstance(got, web.Response):
            return got
        snap, policy = got
        return web.json_response(models_list(policy, snap.model_names))

    async def model(self, request: web.Request) -> web.Response:
        got = self._models_policy(request)
        if isinstance(got, web.Response):
            return got
        snap, policy = got
        name = request.match_info["model"]
        obj = model_object(policy, snap.model_names, name)
        if obj is None:
            missing = ModelNotFound(name, tuple(available(policy, snap.model_names)))
            return _error(404, "model_not_found", missing.message, "model")
        return web.json_response(obj)

    def _models_policy(self, request: web.Request) -> tuple[Snapshot, PolicyTable] | web.Response:
        snap = self.snapshot
        if snap is None or not snap.policies:
            return _error(503, "not_ready", "router has no RoutingPolicy yet")
        wanted = request.headers.get(POLICY_HEADER)
        policy = select_policy(snap.policies, wanted)
        if policy is None:
            return _error(
                400, "unknown_policy", f"no RoutingPolicy named {wanted!r}", "X-ModelFleet-Policy"
            )
        if self.access is not None:
            who = self.access.authenticate(request, policy.anonymous)
            if isinstance(who, web.Response):
                return who
        return snap, policy

    async def _pinned(
        self,
        snap: Snapshot,
        policy: PolicyTable,
        pool: str,
        parsed: ParsedRequest,
        start: float,
        edit: Payload | None = None,
    ) -> web.Response:
        """The operator's pinned render: that pool only (no route, weights, fallbacks,
        shadow or verify gate), inside the policy's admission limits. Left out of the
        canary's measurements (/v1/stats and the upstream series): counted on its own."""
        ns = policy.namespace
        entry = self._gates.get(policy.key)
        if entry is None:
            return _error(503, "not_ready", "configuration changed, retry")
        gate = entry[1]
        headers = {POOL_HEADER: pool, PINNED_HEADER: "true"}
        try:
            await gate.acquire((policy.tiers.priority(parsed.intent.tier), 0), parsed.intent.tier)
        except (Rejected, QueueTimeout):
            self.metrics.pinned(ns, pool, Outcome.REJECTED.value)
            return rejected("overloaded", f"RoutingPolicy {policy.key} is at capacity", headers)
        try:
            payload = edit or Payload(_generation_body(parsed))
            deadline = start + self.settings.request_timeout_s
            got = await self.ladder.serve(snap, ns, "", (pool,), payload, deadline, pinned=True)
        finally:
            gate.release()
        if isinstance(got, Unserved):
            f = exhausted(got.tried, got.ladder)
            status, code, message = f.status, f.code, f.message
            if got.deadline_hit:
                status, code = 504, "timeout"
                message = f"request deadline of {self.settings.request_timeout_s:g}s passed"
            self.metrics.pinned(ns, pool, code)
            return _error(status, code, message, headers=headers)
        self.metrics.pinned(ns, pool, got.res.outcome.value)
        return relay(got.res, {**headers, **dict(got.res.headers)})

    async def _forward(
        self,
        snap: Snapshot,
        ns: str,
        pname: str,
        route: RouteEntry,
        chosen: str | None,
        ladder: tuple[str, ...],
        payload: Payload,
        start: float,
        headers: dict[str, str],
        gate: GateRequest | None = None,
        ticket: AssetTicket | None = None,
        hold: PolicyBounds | None = None,
    ) -> web.Response:
        deadline = start + self.settings.request_timeout_s
        got = await self.ladder.serve(snap, ns, route.name, ladder, payload, deadline, hold=hold)
        if isinstance(got, Unserved):
            return self._fail(ns, pname, route, ladder, got, start, headers)
        pool, res = got.pool, got.res
        out_headers = {
            **headers,
            **dict(res.headers),  # the worker's provenance: model, revision, cost
            "X-ModelFleet-Pool": pool,
            "X-ModelFleet-Fallback": "true" if pool != chosen else "false",
        }
        ok = res.outcome is Attempt.OK
        if ok and ticket is not None and self.assets is not None:
            # Records a first render or a move; says where the asset lives either way.
            out_headers.update(await self.assets.recorded(ticket, pool, res.body, out_headers))
        if ok and gate is not None:
            return await self._gated(snap, ns, pname, route, gate, got, start, out_headers)
        self._finish(ns, pname, route.name, pool, Outcome.OK if ok else Outcome.CLIENT_ERROR, start)
        return relay(res, out_headers)

    async def _gated(
        self,
        snap: Snapshot,
        ns: str,
        pname: str,
        route: RouteEntry,
        gate: GateRequest,
        first: Served,
        start: float,
        headers: dict[str, str],
    ) -> web.Response:
        """A verify route's answer: re-renders run here, inside the request's admission
        slot and before its deadline, one pool each (no ladder: docs/router.md)."""
        deadline = start + self.settings.request_timeout_s

        async def render_on(pool: str, payload: Payload, until: float) -> Served | Unserved:
            got = await self.ladder.serve(snap, ns, route.name, (pool,), payload, until)
            if isinstance(got, Served) and got.res.outcome is Attempt.OK:  # for estimates
                await self.spend.learn(ns, pool, got.res.cost_usd, got.res.images)
            return got

        tg = TextGate(self.metrics, self._clock, (ns, pname, route.name))
        ans = await tg.run(gate, first, deadline, render_on, headers)
        self.metrics.finished(ns, pname, route.name, first.pool, ans.outcome, self._clock() - start)
        return web.Response(
            status=ans.status, body=ans.body, content_type=JSON, headers=ans.headers
        )

    def _fail(
        self,
        ns: str,
        pname: str,
        route: RouteEntry,
        ladder: tuple[str, ...],
        got: Unserved,
        start: float,
        headers: dict[str, str],
    ) -> web.Response:
        tried = got.tried
        out = {**headers, "X-ModelFleet-Fallback": "false"}
        if got.cold is not None and all(t.outcome is None for t in tried):
            # Only pools without workers, one of them scaling from zero: come back later.
            c = got.cold
            self._finish(ns, pname, route.name, "", Outcome.UPSTREAM_ERROR, start)
            return rejected(c.code, c.message, out, c.retry_after_s, status=c.status)
        f = exhausted(tried, ladder)
        if got.deadline_hit:
            status, code, outcome = 504, "timeout", Outcome.TIMEOUT
            message = (
                f"request deadline of {self.settings.request_timeout_s:g}s passed; {f.message}"
            )
        else:
            status, code, outcome, message = f.status, f.code, f.outcome, f.message
        self._finish(ns, pname, route.name, "", outcome, start)
        if status == 429:
            return rejected(code, message, out, f.retry_after_s)
        return _error(status, code, message, headers=out)

    def _finish(
        self, ns: str, pname: str, route: str, pool: str, outcome: Outcome, start: float
    ) -> None:
        self.metrics.finished(ns, pname, route, pool, outcome.value, self._clock() - start)


def _routed(route: RouteEntry | ModelNotFound | None) -> RouteEntry | None:
    return route if isinstance(route, RouteEntry) else None


def _generation_body(parsed: ParsedRequest) -> bytes:
    return parsed.forward_raw or json.dumps(parsed.forward, separators=(",", ":")).encode()
