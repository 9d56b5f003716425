"""Pre-flight replay, the I/O: read the golden prompts, render each (prompt, seed) on both
pools through the router with the pool pinned, hand the answers to the pure core
(modelfleet.canary.replay) as a ReplayRun.

A replay runs in a task of its own beside the canary's driver, so a long replay never
blocks the driver's ticks (an `abort` is still acted on at once); each tick asks poll()
for the run's state. The operator's credential for the pin is read from its file for
each replay and sent only to the router, in X-ModelFleet-Operator-Token; it is never
logged, and never part of a result, status, Event or error message.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiohttp

from modelfleet.api.canary import CanarySpec, CanaryStatus
from modelfleet.api.common import format_time
from modelfleet.api.replay import ReplayGolden, ReplaySpec
from modelfleet.canary.replay import (
    AttemptId,
    GoldenError,
    GoldenPrompt,
    RenderResult,
    ReplayCase,
    ReplayObservation,
    ReplayRun,
    ReplayRunning,
    attempt_id,
    golden_digest,
    parse_golden,
    plan,
    render_result,
    replay_due,
    replay_timeout,
)
from modelfleet.routing.pin import POOL_HEADER, TOKEN_HEADER, read_credential

log = logging.getLogger("modelfleet.replay")

POLICY_HEADER = "X-ModelFleet-Policy"
GENERATIONS = "/v1/images/generations"
RENDER_TIMEOUT_S = 120.0  # one render; the replay's own timeout bounds the whole run


class ConfigMaps(Protocol):
    """Reads one ConfigMap's data (None: it does not exist)."""

    async def get(self, namespace: str, name: str) -> dict[str, str] | None: ...


class KubeConfigMaps:
    """`get configmaps` on the API server (the operator's only verb on them)."""

    async def get(self, namespace: str, name: str) -> dict[str, str] | None:
        from kubernetes import client as k8s
        from kubernetes.client.rest import ApiException

        from modelfleet.controllers import kube

        def read() -> dict[str, str] | None:
            try:
                cm = k8s.CoreV1Api(kube.api_client()).read_namespaced_config_map(name, namespace)
            except ApiException as exc:
                if exc.status == 404:
                    return None
                raise RuntimeError(
                    f"reading ConfigMap {namespace}/{name}: {kube.api_message(exc)}"
                ) from None
            return dict(cm.data or {})

        return await asyncio.to_thread(read)


def credential_file(path: str | None) -> Callable[[], bytes | None]:
    """The operator's side of the pin credential: the mounted Secret key, read on use."""

    def read() -> bytes | None:
        if not path:
            return None
        try:
            return read_credential(Path(path).read_text())
        except (OSError, UnicodeDecodeError):
            return None

    return read


@dataclass(frozen=True)
class Target:
    namespace: str
    policy: str  # RoutingPolicy name: the router takes namespace and admission from it
    stable_pool: str
    candidate_pool: str


class Renderer:
    """Sends pinned renders to the routers: the first that answers serves each one."""

    def __init__(self, router_urls: Sequence[str], session: aiohttp.ClientSession) -> None:
        self.router_urls = tuple(u.rstrip("/") for u in router_urls)
        self.session = session

    async def render(
        self, target: Target, pool: str, body: dict[str, Any], credential: bytes
    ) -> RenderResult:
        headers = {
            "Content-Type": "application/json",
            POLICY_HEADER: f"{target.namespace}/{target.policy}",
            POOL_HEADER: pool,
            TOKEN_HEADER: credential.decode(),
        }
        data = json.dumps(body).encode()
        last = "no router URL configured (--router-url)"
        for url in self.router_urls:
            try:
                async with self.session.post(
                    url + GENERATIONS,
                    data=data,
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=RENDER_TIMEOUT_S),
                ) as resp:
                    raw = await resp.read()
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                last = f"router {url}: {type(exc).__name__}"
                continue
            try:
                doc = json.loads(raw)
            except ValueError:
                doc = None
            return render_result(status, doc)
        return render_result(0, None, last)


async def replay(
    spec: ReplaySpec,
    target: Target,
    attempt: AttemptId,
    configmaps: ConfigMaps,
    renderer: Renderer,
    credential: Callable[[], bytes | None],
    clock: Callable[[], dt.datetime],
) -> ReplayRun:
    """One replay: never raises for what the user can fix; it says so in `error`."""
    started = format_time(clock())

    def failed(error: str, golden: ReplayGolden | None = None) -> ReplayRun:
        return ReplayRun(attempt, started, golden=golden, error=error)

    where = f"ConfigMap {spec.config_map!r} key {spec.key!r}"
    try:
        data = await configmaps.get(target.namespace, spec.config_map)
    except Exception as exc:
        return failed(str(exc)[:300])
    if data is None:
        return failed(f"ConfigMap {spec.config_map!r} not found in namespace {target.namespace}")
    doc = data.get(spec.key)
    if doc is None:
        return failed(f"{where}: no such key (keys: {', '.join(sorted(data)) or 'none'})")
    try:
        golden = parse_golden(doc, where)
        cases = plan(golden, spec.seeds)
    except GoldenError as exc:
        return failed(str(exc))
    ref = ReplayGolden(
        config_map=spec.config_map, key=spec.key, digest=golden_digest(doc), prompts=len(golden)
    )
    secret = credential()
    if secret is None:
        return failed(
            "the operator has no router credential (--operator-token-file), so it cannot "
            "pin a pool",
            ref,
        )
    limits = {p: asyncio.Semaphore(spec.concurrency) for p in ("stable", "candidate")}
    results: dict[tuple[int, str], RenderResult] = {}

    async def one(i: int, g: GoldenPrompt, seed: int, role: str, pool: str) -> None:
        async with limits[role]:
            results[(i, role)] = await renderer.render(target, pool, g.body(seed), secret)

    jobs = [
        one(i, g, seed, role, pool)
        for i, (g, seed) in enumerate(cases)
        for role, pool in (("stable", target.stable_pool), ("candidate", target.candidate_pool))
    ]
    timed_out = False
    try:
        async with asyncio.timeout(replay_timeout(spec)):
            await asyncio.gather(*jobs)
    except TimeoutError:
        timed_out = True
    missing = RenderResult("unavailable", detail=f"not answered within {spec.timeout}")
    out = tuple(
        ReplayCase(
            g, seed, results.get((i, "stable"), missing), results.get((i, "candidate"), missing)
        )
        for i, (g, seed) in enumerate(cases)
    )
    return ReplayRun(attempt, started, out, ref, len(cases), timed_out=timed_out)


@dataclass
class _Job:
    ident: tuple[Any, ...]
    attempt: AttemptId
    started_at: str
    task: asyncio.Task[ReplayRun]


class ReplayRunner:
    """The replays of one leadership term, one task per Canary at most."""

    def __init__(
        self,
        router_urls: Sequence[str],
        credential: Callable[[], bytes | None],
        *,
        configmaps: ConfigMaps | None = None,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.router_urls = tuple(router_urls)
        self.credential = credential
        self.configmaps: ConfigMaps = configmaps or KubeConfigMaps()
        self.clock = clock
        self.jobs: dict[tuple[str, str], _Job] = {}
        self._session: aiohttp.ClientSession | None = None

    def _renderer(self) -> Renderer:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
        return Renderer(self.router_urls, self._session)

    def poll(
        self,
        key: tuple[str, str],
        spec: CanarySpec,
        status: CanaryStatus,
        pools_ready: bool,
        wake: Callable[[], None],
    ) -> ReplayObservation | None:
        """The replay's state for decide(): None when none is due (a task no longer due
        is cancelled), ReplayRunning while it runs, the ReplayRun once it is done."""
        now = self.clock()
        job = self.jobs.get(key)
        if spec.replay is None or not pools_ready or not replay_due(spec, status, now):
            if job is not None and (spec.replay is None or not replay_due(spec, status, now)):
                job.task.cancel()
                self.jobs.pop(key, None)
            return None
        attempt = attempt_id(status)
        target = Target(key[0], spec.routing_policy, spec.stable_pool, spec.candidate_pool)
        ident = (attempt, spec.replay.model_dump_json(), target)
        if job is None or job.ident != ident:
            if job is not None:
                job.task.cancel()
            task = asyncio.get_running_loop().create_task(
                replay(
                    spec.replay,
                    target,
                    attempt,
                    self.configmaps,
                    self._renderer(),
                    self.credential,
                    self.clock,
                )
            )
            task.add_done_callback(lambda _t: wake())
            job = self.jobs[key] = _Job(ident, attempt, format_time(now), task)
            log.info("canary %s/%s: pre-flight replay attempt %d started", *key, attempt[1])
        if not job.task.done():
            return ReplayRunning(job.attempt, job.started_at)
        if job.task.cancelled():
            self.jobs.pop(key, None)
            return None
        exc = job.task.exception()
        if exc is not None:  # a bug, not the user's doing: say so, and retry later
            log.error("canary %s/%s: replay failed: %r", *key, exc)
            return ReplayRun(job.attempt, job.started_at, error=f"internal error: {exc!r}"[:300])
        return job.task.result()

    def forget(self, key: tuple[str, str]) -> None:
        job = self.jobs.pop(key, None)
        if job is not None:
            job.task.cancel()

    async def close(self) -> None:
        for job in self.jobs.values():
            job.task.cancel()
        for job in list(self.jobs.values()):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await job.task
        self.jobs.clear()
        if self._session is not None:
            await self._session.close()
