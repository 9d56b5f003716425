"""e2e scenarios as Given / When / Then chains (the shape of Argo Rollouts' test/fixtures).

    given.policy("p", "stable").canary("p", "stable", "good")
        .when().load_runs("p").apply().wait_for_phase("p", "Succeeded", timeout=120)
        .load_stops()
        .then().passed_steps("p", [0, 1, 2]).route_pool("p", "good")

- Given collects manifests (pools, policies, canaries, example files) and applies nothing.
- When changes the world (apply, load, actions, kills, scaling) and waits for a state;
  every canary status a wait observes is kept, so Then judges what the wait saw.
- Then asserts; a check of something that settles later (an event, a scale-down) polls.

The world itself (world.py): each test module builds one Fleet with `start_fleet` and
hands each test a fresh chain with `scenario(fleet)`.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

from modelfleet.api.canary import TERMINAL_PHASES
from modelfleet_dev.story import Load, single_route_policy
from polling import wait_for
from world import IMAGE_BODY, PROBE_BODY, Fleet, G, PrometheusProcess, SplitClock, SplitTiming, V

# The canary spec the scenarios start from; each may override any field.
DEFAULT_CANARY: dict[str, Any] = {
    "route": "all",
    "steps": [20, 50, 100],
    "interval": "4s",
    "analysis": {
        "minRequests": 3,
        "failureLimit": 1,
        "inconclusiveLimit": 2,
        # p95's ratio must be judged in some window before 100% (at 50% here); a 4 s
        # window's split of a few dozen requests is within x3 but often not within x1.25.
        "loadMatchTolerance": 2.0,
        "metrics": [
            {"name": "errors", "builtin": "error-rate", "max": 0.1},
            {"name": "p95", "builtin": "latency-p95", "maxRatioToStable": 2.0},
        ],
    },
}


# ---- the chain ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One request for Then.routes: what is sent and where it must be served."""

    prompt: str
    route: str
    pool: str
    fallback: bool = False
    fields: dict[str, Any] = field(default_factory=dict)  # extra body fields: tier, tags
    headers: dict[str, str] = field(default_factory=dict)

    def body(self) -> bytes:
        doc = {"prompt": self.prompt, "size": "64x64", "steps": 2, **self.fields}
        return json.dumps(doc).encode()


@dataclass
class Scenario:
    """What one scenario has set up and seen; Given, When and Then share it."""

    fleet: Fleet
    pending: list[dict[str, Any]] = field(default_factory=list)
    loads: dict[str, Load] = field(default_factory=dict)
    stopped_loads: dict[str, Load] = field(default_factory=dict)
    last: dict[str, dict[str, Any]] = field(default_factory=dict)  # canary -> status seen
    seen: dict[str, set[str]] = field(default_factory=dict)  # canary -> phases seen
    prometheus: PrometheusProcess | None = None
    marks: dict[str, int] = field(default_factory=dict)
    split: SplitTiming | None = None

    def given(self) -> Given:
        return Given(self)

    def observe(self, canary: str) -> dict[str, Any]:
        status = self.fleet.status(canary)
        self.last[canary] = status
        self.seen.setdefault(canary, set()).add(status.get("phase", ""))
        return status

    def load(self, policy: str | None = None) -> Load:
        loads = {**self.stopped_loads, **self.loads}
        if policy is None:
            assert len(loads) == 1, f"name the load: {sorted(loads)}"
            return next(iter(loads.values()))
        return loads[policy]

    def close(self) -> None:
        """Stop what the scenario started, pass or fail."""
        for load in self.loads.values():
            load.__exit__(None, None, None)
        self.loads.clear()
        if self.prometheus is not None:
            self.prometheus.stop()


@contextmanager
def scenario(fleet: Fleet) -> Iterator[Given]:
    """A test's chain; what it started (loads, Prometheus) stops when the test ends."""
    s = Scenario(fleet)
    try:
        yield s.given()
    finally:
        s.close()


class Given:
    def __init__(self, s: Scenario) -> None:
        self.s = s

    def manifest(self, doc: dict[str, Any]) -> Given:
        self.s.pending.append(doc)
        return self

    def manifests(self, docs: Iterable[dict[str, Any]]) -> Given:
        for d in docs:
            self.manifest(d)
        return self

    def policy(self, name: str, pool: str, fallbacks: list[str] | None = None) -> Given:
        """A RoutingPolicy with one catch-all route `all`."""
        return self.manifest(single_route_policy(name, pool, fallbacks))

    def canary(
        self, name: str, stable: str, candidate: str, policy: str | None = None, **spec: Any
    ) -> Given:
        body = {
            **DEFAULT_CANARY,
            "routingPolicy": policy or name,
            "stablePool": stable,
            "candidatePool": candidate,
            **spec,
        }
        return self.manifest(
            {"apiVersion": f"{G}/{V}", "kind": "Canary", "metadata": {"name": name}, "spec": body}
        )

    def prometheus(self, prometheus: PrometheusProcess) -> Given:
        """Started and stopped by When; stopped at the end in any case."""
        self.s.prometheus = prometheus
        return self

    def when(self) -> When:
        return When(self.s)


class When:
    def __init__(self, s: Scenario) -> None:
        self.s = s
        self.fleet = s.fleet

    # -- actions ----------------------------------------------------------------

    def apply(self) -> When:
        """Apply what was given, in the order given."""
        for doc in self.s.pending:
            self.fleet.apply(doc)
        self.s.pending.clear()
        return self

    def apply_and_time_split(
        self, policy: str, candidate: str, route: int = 0, timeout: float = 60
    ) -> When:
        """Apply what was given (a canary) and time how long after its weight lands in
        `policy`'s status the router first sends a request to `candidate`."""
        with SplitClock(self.fleet, policy, candidate, route) as clock:
            wait_for(
                lambda: clock.answers and clock.reads,
                timeout=10,
                what=f"probes through {policy} answered",
            )
            self.apply()
            self.s.split = wait_for(
                clock.timing,
                timeout=timeout,
                interval=0.05,
                what=f"{candidate} weighted and answering",
            )
        return self

    def load_runs(self, policy: str, clients: int = 3) -> When:
        self.s.loads[policy] = Load(self.fleet.router.url, policy, clients=clients).__enter__()
        return self

    def load_stops(self) -> When:
        for policy, load in list(self.s.loads.items()):
            load.__exit__(None, None, None)
            self.s.stopped_loads[policy] = self.s.loads.pop(policy)
        return self

    def action_requested(self, canary: str, action: str) -> When:
        self.fleet.custom.patch_namespaced_custom_object(
            G, V, self.fleet.namespace, "canaries", canary,
            {"metadata": {"annotations": {"modelfleet.io/action": action}}},
        )  # fmt: skip
        return self

    def operator_killed(self) -> When:
        """SIGKILL mid-flight, then a fresh operator: state must live in status."""
        self.fleet.operator.main.kill(signal.SIGKILL)
        self.fleet.operator.ensure_running()
        return self

    def pool_scaled(self, pool: str, replicas: int) -> When:
        self.fleet.custom.patch_namespaced_custom_object(
            G, V, self.fleet.namespace, "modelpools", pool, {"spec": {"replicas": replicas}}
        )
        return self

    def pod_deleted(self, pool: str) -> When:
        """A worker dies at once; its endpoint lingers until the slice catches up."""
        core = self.fleet.core
        ns = self.fleet.namespace
        victim = core.list_namespaced_pod(ns, label_selector=f"modelfleet.io/pool={pool}").items[0]
        core.delete_namespaced_pod(victim.metadata.name, ns, grace_period_seconds=0)
        return self

    def prometheus_starts(self) -> When:
        assert self.s.prometheus is not None, "given().prometheus(...) first"
        self.s.prometheus.start()
        return self

    def prometheus_stops(self) -> When:
        assert self.s.prometheus is not None, "given().prometheus(...) first"
        self.s.prometheus.stop()
        return self

    # -- waits ------------------------------------------------------------------

    def wait_for_status(
        self,
        canary: str,
        until: Callable[[dict[str, Any]], object],
        what: str,
        timeout: float = 60,
        interval: float = 0.1,
    ) -> When:
        """Poll the canary until `until(status)`; fail at once if it ends (Succeeded,
        RolledBack, Failed) without meeting it, since an ended canary stays where it is.
        The phase it is in when the wait starts does not count: a retry waits on a
        RolledBack canary for it to progress again."""
        first = self.s.observe(canary).get("phase")
        what = f"canary {canary}: {what}"

        def check() -> dict[str, Any]:
            status = self.s.observe(canary)
            phase = status.get("phase")
            if phase in TERMINAL_PHASES and phase != first and not until(status):
                raise AssertionError(f"{what}: it ended {phase} instead: {status}")
            return status

        wait_for(check, until=until, timeout=timeout, interval=interval, what=what)
        return self

    def wait_for_phase(
        self,
        canary: str,
        phase: str,
        timeout: float = 60,
        interval: float = 0.1,
        what: str | None = None,
    ) -> When:
        return self.wait_for_status(
            canary, lambda s: s.get("phase") == phase, what or phase, timeout, interval
        )

    def wait_for_step(
        self, canary: str, step: int, timeout: float = 60, interval: float = 0.1
    ) -> When:
        return self.wait_for_status(
            canary, lambda s: s.get("currentStep") == step, f"step {step}", timeout, interval
        )

    def wait_for_traffic(self, more: int, policy: str | None = None, timeout: float = 60) -> When:
        """`more` successful requests since mark_traffic() (or since the load started)."""
        load = self.s.load(policy)
        base = self.s.marks.get(f"traffic:{policy}", 0)
        wait_for(
            lambda: load.ok >= base + more,
            timeout=timeout,
            what=f"{more} answers since {base}",
        )
        return self

    def mark_traffic(self, policy: str | None = None) -> When:
        self.s.marks[f"traffic:{policy}"] = self.s.load(policy).ok
        return self

    def wait_for_pool(
        self, pool: str, ready_replicas: int | None = None, timeout: float = 120
    ) -> When:
        def ok() -> bool:
            st = self.fleet.pool(pool).get("status") or {}
            if ready_replicas is not None:
                return bool(st.get("readyReplicas") == ready_replicas)
            return bool(st.get("phase") == "Ready")

        what = f"pool {pool} " + (
            f"at {ready_replicas} ready replicas" if ready_replicas is not None else "Ready"
        )
        wait_for(ok, timeout=timeout, interval=0.5, what=what)
        if ready_replicas is not None:
            # Ready in the pool's status is not yet in the router's endpoints.
            self.wait_for_router_endpoints(pool, ready_replicas)
        return self

    def wait_for_no_ready_endpoints(self, pool: str, timeout: float = 60) -> When:
        discovery = k8s.DiscoveryV1Api(self.fleet.cluster.api)

        def none_ready() -> bool:
            slices = discovery.list_namespaced_endpoint_slice(
                self.fleet.namespace, label_selector=f"kubernetes.io/service-name={pool}"
            ).items
            return not any(ep.conditions.ready for s in slices for ep in (s.endpoints or []))

        wait_for(none_ready, timeout=timeout, what=f"{pool} pool has no ready endpoints")
        return self.wait_for_router_endpoints(pool, 0, timeout)

    def wait_for_router_endpoints(self, pool: str, n: int, timeout: float = 30) -> When:
        """The router's own view, which trails the EndpointSlice by one watch event: a
        request sent before it catches up still goes by the old endpoints."""
        wait_for(
            lambda: (
                self.fleet.router_counter(
                    "modelfleet_router_endpoints", namespace=self.fleet.namespace, pool=pool
                )
                == n
            ),
            timeout=timeout,
            what=f"router sends pool {pool} to {n} endpoints",
        )
        return self

    def pools_serving(self, *pools: str, replicas: int = 1, timeout: float = 180) -> When:
        """These pools at `replicas` ready workers (scaled back if a step took them down)."""
        for pool in pools:
            self.pool_scaled(pool, replicas)
        for pool in pools:
            self.wait_for_pool(pool, ready_replicas=replicas, timeout=timeout)
        return self

    def wait_for_policy_ready(self, policy: str, timeout: float = 60) -> When:
        def ready() -> dict[str, Any] | None:
            status: dict[str, Any] = self.fleet.policy(policy).get("status") or {}
            conditions = status.get("conditions", [])
            ok = any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
            return status if ok else None

        wait_for(ready, timeout=timeout, what=f"RoutingPolicy {policy} Ready")
        return self

    def canary_patched(self, canary: str, spec: dict[str, Any]) -> When:
        self.fleet.custom.patch_namespaced_custom_object(
            G, V, self.fleet.namespace, "canaries", canary, {"spec": spec}
        )
        return self

    def deleted(self, plural: str, name: str) -> When:
        """Gone for good (a no-op when it never existed)."""
        self.fleet.delete(plural, name)

        def gone() -> bool:
            try:
                self.fleet.get(plural, name)
            except ApiException as exc:
                if exc.status == 404:
                    return True
                raise
            return False

        wait_for(gone, timeout=30, what=f"{plural}/{name} deleted")
        return self

    def wait_for_router_knows(self, policy: str, timeout: float = 10) -> When:
        wait_for(
            lambda: self.fleet.send(policy).status == 200,
            timeout=timeout,
            what=f"router knows {policy}",
        )
        return self

    def given(self) -> Given:
        return Given(self.s)

    def then(self) -> Then:
        return Then(self.s)


class Then:
    def __init__(self, s: Scenario) -> None:
        self.s = s
        self.fleet = s.fleet

    def _status(self, canary: str) -> dict[str, Any]:
        """The status the last wait saw (what the scenario is about), else a fresh read."""
        return self.s.last.get(canary) or self.s.observe(canary)

    # -- the canary -------------------------------------------------------------

    def phase(self, canary: str, phase: str) -> Then:
        got = self._status(canary).get("phase")
        assert got == phase, f"{canary}: phase {got}, expected {phase}"
        return self

    def weight(self, canary: str, weight: int, why: str = "") -> Then:
        got = self._status(canary).get("canaryWeight")
        assert got == weight, f"{canary}: weight {got}, expected {weight}. {why}"
        return self

    def step(self, canary: str, step: int, why: str = "") -> Then:
        got = self._status(canary).get("currentStep")
        assert got == step, f"{canary}: at step {got}, expected {step}. {why}"
        return self

    def message_contains(self, canary: str, *any_of: str) -> Then:
        msg = self._status(canary).get("message", "")
        assert any(part in msg for part in any_of), (
            f"{canary}: message {msg!r} has none of {any_of}"
        )
        return self

    def last_action(self, canary: str, action: str) -> Then:
        got = self._status(canary).get("lastAction")
        assert got == action, f"{canary}: lastAction {got!r}, expected {action!r}"
        return self

    def never_saw(self, canary: str, phases: set[str]) -> Then:
        seen = self.s.seen.get(canary, set())
        assert not seen & phases, f"{canary}: went through {seen & phases}"
        return self

    def passed_steps(self, canary: str, steps: list[int]) -> Then:
        history = self._status(canary)["history"]
        passed = [h["step"] for h in history if h["result"] == "pass"]
        assert passed == steps, f"{canary}: each step judged exactly once: {history}"
        return self

    def history_weights(self, canary: str, weights: list[int]) -> Then:
        """The weights the passed analyses were judged at, in order."""
        history = self._status(canary)["history"]
        got = [h["weight"] for h in history if h["result"] == "pass"]
        assert got == weights, f"{canary}: judged at {got}, expected {weights}: {history}"
        return self

    def status(self, canary: str) -> dict[str, Any]:
        """The observed status, for checks no method above makes."""
        return self._status(canary)

    def metric(self, canary: str, name: str) -> dict[str, Any]:
        found: dict[str, Any] = next(
            m for m in self._status(canary)["metrics"] if m["name"] == name
        )
        return found

    def metric_result(self, canary: str, name: str, result: str) -> Then:
        got = self.metric(canary, name)
        assert got["result"] == result, f"{canary}: check {name}: {got}"
        return self

    def metric_result_is_not(self, canary: str, name: str, result: str, why: str = "") -> Then:
        got = self.metric(canary, name)
        assert got["result"] != result, f"{canary}: check {name}: {got}. {why}"
        return self

    def metric_above_stable(self, canary: str, name: str, ratio: float) -> Then:
        m = self.metric(canary, name)
        assert m["value"] > ratio * m["stableValue"], f"{canary}: {name} {m}"
        return self

    def event_seen(
        self, kind: str, name: str, reason: str, type_: str | None = None, timeout: float = 10
    ) -> Then:
        wait_for(
            lambda: any(
                e.reason == reason and (type_ is None or e.type == type_)
                for e in self.fleet.events(kind, name)
            ),
            timeout=timeout,
            what=f"{type_ or ''} event {reason} on {kind} {name}",
        )
        return self

    def distinct_event_reasons(self, kind: str, name: str, at_least: int) -> Then:
        reasons = {e.reason for e in self.fleet.events(kind, name)}
        assert len(reasons) >= at_least, reasons
        return self

    # -- routing and pools --------------------------------------------------------

    def route_pool(self, policy: str, pool: str, route: int = 0) -> Then:
        got = self.fleet.policy(policy)["spec"]["routes"][route]["pool"]
        assert got == pool, f"{policy}: route {route} serves {got}, expected {pool}"
        return self

    def compiled_pools(self, policy: str, pools: list[dict[str, Any]], route: int = 0) -> Then:
        got = self.fleet.policy(policy)["status"]["routes"][route]["pools"]
        assert got == pools, f"{policy}: compiled {got}, expected {pools}"
        return self

    def pool_replicas_become(self, pool: str, replicas: int, timeout: float = 30) -> Then:
        wait_for(
            lambda: self.fleet.pool(pool)["spec"]["replicas"] == replicas,
            timeout=timeout,
            what=f"pool {pool} scaled to {replicas}",
        )
        return self

    def answers(self, policy: str, n: int, expected: set[tuple[int, str, str]]) -> Then:
        """n sequential requests; the set of (status, pool, fallback) they got."""
        got = {(a.status, a.pool, a.fallback) for a in (self.fleet.send(policy) for _ in range(n))}
        assert got == expected, f"{policy}: answers {got}, expected {expected}"
        return self

    def router_split_within(self, seconds: float) -> Then:
        t = self.s.split
        assert t is not None, "when().apply_and_time_split(...) first"
        print(
            f"router split <= {t.delay * 1000:.0f} ms after the status change "
            f"({(t.router_first - t.status_seen) * 1000:.0f} ms after it was first read; "
            f"write bracketed to {(t.status_seen - t.status_before) * 1000:.0f} ms)"
        )
        assert t.early_candidate_answers == 0, (
            f"{t.early_candidate_answers} candidate answers before the weight was written"
        )
        assert t.delay <= seconds, (
            f"router split at most {t.delay:.3f}s after the status change "
            f"({t.router_first - t.status_seen:.3f}s after it was first read), bound {seconds}s"
        )
        return self

    def candidate_share(
        self,
        policy: str,
        candidate: str,
        n: int,
        low: float,
        high: float,
        body: bytes = IMAGE_BODY,
        status: int = 200,
    ) -> Then:
        """n sequential requests all get `status`; the candidate's share lies in [low, high]."""
        answers = [self.fleet.send(policy, body) for _ in range(n)]
        codes = sorted({a.status for a in answers})
        assert codes == [status], f"{policy}: status codes {codes}"
        share = sum(1 for a in answers if a.pool == candidate) / n
        assert low <= share <= high, f"candidate share {share:.2f}, expected [{low}, {high}]"
        return self

    def routes(self, policy: str, cases: Iterable[Case]) -> Then:
        """Each case is one request and what it must get: 200 from route/pool/fallback."""
        for c in cases:
            a = self.fleet.send(policy, c.body(), c.headers)
            got = (a.status, a.route, a.pool, a.fallback)
            want = (200, c.route, c.pool, "true" if c.fallback else "false")
            assert got == want, f"{policy}: {c}: got (status, route, pool, fallback) {got}"
        return self

    def shadowed(self, policy: str, pool: str, n: int, low: int, high: int) -> Then:
        """n requests to `policy` mirror between low and high copies to `pool` (the mirror
        is fire and forget: its count is polled until it reaches `low`)."""
        before = self.fleet.router_counter("modelfleet_router_shadow_requests_total", pool=pool)
        for _ in range(n):
            self.fleet.send(policy, PROBE_BODY)
        got = wait_for(
            lambda: (
                self.fleet.router_counter("modelfleet_router_shadow_requests_total", pool=pool)
                - before
            ),
            until=lambda d: d >= low,
            timeout=10,
            what=f"at least {low} of {n} requests mirrored to {pool}",
        )
        assert got <= high, f"{got} of {n} requests mirrored to {pool}, expected at most {high}"
        return self

    # -- the load -----------------------------------------------------------------

    def load_served(self, policy: str | None = None) -> Then:
        assert self.s.load(policy).ok > 0, "no request succeeded"
        return self

    def no_server_errors(self, policy: str | None = None, why: str = "") -> Then:
        bad = [c for c in self.s.load(policy).failed if c >= 500]
        assert not bad, f"clients saw {len(bad)} server errors {bad[:10]}. {why}"
        return self

    def no_failed_requests(self, policy: str | None = None) -> Then:
        failed = self.s.load(policy).failed
        assert failed == [], f"client saw errors: {failed[:10]}"
        return self

    def when(self) -> When:
        return When(self.s)

    def given(self) -> Given:
        return Given(self.s)
