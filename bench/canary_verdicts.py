"""Canary verdicts on the local cluster: does an identical candidate pass, a slower one fail?

N canaries whose candidate is the stable's model and settings (every RolledBack is a false
rollback) and N whose candidate is a genuinely slower model (a wider tiny UNet, about 1.5x
the time per image; no injected sleep), judged with the analysis of examples/canary.yaml
(metrics, failureLimit) at a bench interval. Each canary has its own stable and candidate
pool, one replica each, and its own closed-loop clients through one router; `--slots`
canaries run at once to save time (on a 2-core machine, 3 slots starve the 10% step of
samples: the real analysis pauses for lack of data; 2 do not).

    flock /tmp/modelfleet-cluster.lock .venv/bin/python bench/canary_verdicts.py --runs 2

The operator judges every canary with the example's own analysis (its service-time rank
test, error rate and absolute p95), so the rates are the operator's real verdicts. Prints
the false-rollback rate, the detection rate, the analyses each verdict took and, per run,
the time from the candidate's first traffic to its verdict (Succeeded, or weight 0 again
on a rollback). `--errors N` adds N candidates whose every request fails (the
MODELFLEET_WORKER_FAULT_ERROR_RATE drill): their first traffic to weight 0 is the
error-rate detection time.

Shadow verdicts: after every analysis the bench reads the routers' service time per image
by batch size over that analysis' window (`/v1/stats?window=W&offset=S`) and judges it
with modelfleet.canary.statistics (Mann-Whitney U within batch-size strata, the example's
latency maxRatioToStable as the effect limit, alpha 0.01), also pooled over batch sizes
for comparison; at 100% against the stable's previous window. failureLimit consecutive
shadow failures make a shadow rollback. `--shadow` lets the real analysis judge only the
example's error-rate checks, so every canary runs all its steps and the shadow verdicts
cover them all (an inconclusive shadow result does not hold the real step).
Goals (issue 11): 0 of 20 identical rolled back; at least 19 of 20 slower rolled back, each
within two intervals of getting traffic.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from canary_verdicts_shadow import (
    Shadow,
    Strata,
    Window,
    report_shadow,
    service_strata,
    shadow_judge,
)
from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

from modelfleet.canary.statistics import Comparison
from modelfleet_dev import bootstrap, story
from modelfleet_dev.cluster import Cluster
from modelfleet_dev.routerproc import free_port

NS = "bench-verdicts"
REPO = Path(__file__).resolve().parents[1]


KINDS = ("identical", "slower", "erroring")
CANDIDATE_PREFIX = {"identical": "same", "slower": "slow", "erroring": "errs"}


@dataclass
class Run:
    kind: str  # one of KINDS
    index: int
    slot: int
    outcome: story.Outcome | None = None
    error: str = ""
    windows: list[Window] = field(default_factory=list)
    shadow: dict[str, Shadow] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)  # status.history at the end

    @property
    def analyses(self) -> int:
        return len(self.history)

    def failed_checks(self) -> list[dict[str, Any]]:
        """The checks of the final analysis that failed (why it was rolled back)."""
        last = self.history[-1]["metrics"] if self.history else []
        return [m for m in last if m.get("result") == "fail"]

    @property
    def name(self) -> str:
        return f"{self.kind[:4]}-{self.index}"

    @property
    def to_verdict(self) -> float | None:
        """First traffic -> weight 0 for a rollback; creation -> end otherwise (the pools
        are Ready before the canary is created, so first traffic follows at once)."""
        o = self.outcome
        if o is None:
            return None
        if o.phase == "RolledBack":
            return o.weight_zero_after
        return o.seconds


def tiny_model(root: Path, channels: int) -> Path:
    """A tiny pipeline with a UNet of base width `channels` (32 is the demo's model)."""
    if channels == 32:
        return story.ensure_tiny_model(root)
    out = root / f"verdict-model-c{channels}"
    if not (out / "model_index.json").exists():
        worker = Path(sys.executable).parent / "modelfleet-worker"
        cmd = [str(worker), "tiny-model", "--out", str(out), "--channels", str(channels)]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return out


def analysis_of(example: Path, min_requests: int, shadow: bool) -> dict[str, Any]:
    """spec.analysis of the example, with the bench's minRequests and the router provider;
    in shadow mode only its error-rate checks."""
    doc = yaml.safe_load(example.read_text())
    analysis = dict(doc["spec"]["analysis"])
    analysis.pop("provider", None)
    analysis["minRequests"] = min_requests
    if shadow:
        analysis["metrics"] = [m for m in analysis["metrics"] if m.get("builtin") == "error-rate"]
    return analysis


def latency_ratio(example: Path) -> float:
    """The example's relative latency limit: the effect limit of the shadow verdicts."""
    doc = yaml.safe_load(example.read_text())
    relative = [m for m in doc["spec"]["analysis"]["metrics"] if m.get("maxRatioToStable")]
    for builtin in ("service-time", "latency-p95", "latency-p99"):
        for m in relative:
            if m.get("builtin") == builtin:
                return float(m["maxRatioToStable"])
    return 1.2


def canary(run: Run, args: argparse.Namespace, analysis: dict[str, Any]) -> dict[str, Any]:
    candidate = candidate_of(run)
    spec: dict[str, Any] = {
        "routingPolicy": run.name,
        "route": "all",
        "stablePool": f"stable-{run.slot}",
        "candidatePool": candidate,
        "steps": [int(s) for s in args.steps.split(",")],
        "interval": args.interval,
        "analysis": analysis,
        "scaleDownDelay": "1h",  # the stable serves the slot's next run
    }
    if args.capacity != "surge":
        spec["capacity"] = args.capacity
    return {
        "apiVersion": f"{story.G}/{story.V}",
        "kind": "Canary",
        "metadata": {"name": run.name},
        "spec": spec,
    }


def drive(
    api: k8s.ApiClient,
    url: str,
    run: Run,
    args: argparse.Namespace,
    analysis: dict[str, Any],
) -> None:
    """One canary: its own policy on the slot's stable pool, clients, the canary, watched."""
    custom = k8s.CustomObjectsApi(api)
    story.create_or_update(
        api, NS, "routingpolicies", story.single_route_policy(run.name, f"stable-{run.slot}")
    )
    story.wait_until(
        lambda: story.router_serves(url, run.name), 60, f"router knows policy {run.name}"
    )
    if args.warmup:
        # The stable serves its own light traffic before the canary (as in production):
        # its reference then holds images run alone, as the candidate runs them at 10%.
        # Under all the clients the stable only batches, so a 10% step compared within
        # batch sizes would share no stratum with it.
        with story.Load(url, run.name, clients=1) as warm:
            story.wait_until(lambda: warm.ok >= args.warmup, 120, f"{run.name}: warm-up requests")
    stop = threading.Event()
    collector = threading.Thread(
        target=collect_windows,
        args=(api, url, run, interval_s(args), args.lookback, stop),
        daemon=True,
    )
    try:
        with story.Load(url, run.name, clients=args.clients):
            story.create_or_update(api, NS, "canaries", canary(run, args, analysis))
            collector.start()
            say = (lambda m: print(f"  [{run.name}] {m}", flush=True)) if args.verbose else None
            run.outcome = story.watch_canary(api, NS, run.name, say=say, timeout=600)
            obj = custom.get_namespaced_custom_object(story.G, story.V, NS, "canaries", run.name)
            run.history = list((obj.get("status") or {}).get("history") or [])
    finally:
        stop.set()
        if collector.is_alive():
            collector.join(10)
        for plural in ("canaries", "routingpolicies"):
            try:
                custom.delete_namespaced_custom_object(story.G, story.V, NS, plural, run.name)
            except ApiException as exc:
                if exc.status != 404:
                    raise


def interval_s(args: argparse.Namespace) -> float:
    return float(str(args.interval).rstrip("s"))


def collect_windows(
    api: k8s.ApiClient,
    url: str,
    run: Run,
    window_s: float,
    lookback_s: float,
    stop: threading.Event,
) -> None:
    """After each new analysis in status.history, read that window's service time."""
    custom = k8s.CustomObjectsApi(api)
    seen = 0
    while not stop.is_set():
        try:
            obj = custom.get_namespaced_custom_object(story.G, story.V, NS, "canaries", run.name)
        except ApiException:
            time.sleep(0.2)
            continue
        status = obj.get("status") or {}
        history = status.get("history") or []
        for rec in history[seen:]:
            judged = _time(rec["time"])
            ago = max(0, round((datetime.now(UTC) - judged).total_seconds()))
            doc = _stats(url, round(window_s), ago)
            since = (judged - _time(status.get("startedAt") or rec["time"])).total_seconds()
            ref_window = min(3600 - ago, max(1, round(since + lookback_s)))
            ref = _stats(url, ref_window, ago)
            stable = f"stable-{run.slot}"
            run.windows.append(
                Window(
                    rec["step"],
                    rec["weight"],
                    rec["result"],
                    service_strata(doc, NS, candidate_of(run)),
                    service_strata(doc, NS, stable),
                    service_strata(ref, NS, stable),
                )
            )
        seen = len(history)
        if (obj.get("status") or {}).get("phase") in story.STOPPED:
            return
        time.sleep(0.2)  # poll interval


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _stats(url: str, window: int, offset: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}/v1/stats?window={window}&offset={offset}", timeout=10) as r:
        doc: dict[str, Any] = json.loads(r.read())
        return doc


def candidate_of(run: Run) -> str:
    return f"{CANDIDATE_PREFIX[run.kind]}-{run.slot}"


def _dumped(r: Run) -> dict[str, Any]:
    def totals(st: Strata) -> dict[str, float]:
        return {k: h.total for k, h in st.items()}

    return {
        "name": r.name,
        "kind": r.kind,
        "phase": r.outcome.phase if r.outcome else "error",
        "windows": [
            {
                "weight": w.weight,
                "candidate": totals(w.candidate),
                "stable": totals(w.stable),
                "reference": totals(w.reference),
                "median_candidate": {k: h.quantile(0.5) for k, h in w.candidate.items()},
                "median_stable": {k: h.quantile(0.5) for k, h in w.stable.items()},
                "median_reference": {k: h.quantile(0.5) for k, h in w.reference.items()},
            }
            for w in r.windows
        ],
        "shadow": {
            k: [{"result": v.result, "message": v.message} for v in sh.verdicts]
            for k, sh in r.shadow.items()
        },
    }


def _verdict_text(r: Run) -> str:
    """Why it ended: the failed checks' verdicts (method, ratio, p) or the message."""
    failed = r.failed_checks()
    if not failed:
        return r.outcome.message if r.outcome else r.error
    parts = []
    for m in failed:
        facts = [m["name"]]
        if m.get("method") and m["method"] != "value":
            facts.append(str(m["method"]))
        if m.get("ratio") is not None:
            facts.append(f"ratio {m['ratio']:.3g}")
        if m.get("pValue") is not None:
            facts.append(f"p {m['pValue']:.2g}")
        if m.get("value") is not None and m.get("ratio") is None:
            facts.append(f"value {m['value']:.3g}")
        parts.append(" ".join(facts))
    return "; ".join(parts)


def report(runs: list[Run], interval_s: float) -> None:
    print("\n| run | candidate | phase | analyses | to verdict | why |")
    print("|---|---|---|---:|---:|---|")
    for r in runs:
        o = r.outcome
        t = r.to_verdict
        shown = f"{t:.1f} s" if t is not None else "-"
        text = _verdict_text(r).replace("|", "/")
        phase = o.phase if o else "error"
        print(f"| {r.name} | {r.kind} | {phase} | {r.analyses} | {shown} | {text} |")
    print(
        "\n| candidate | runs | rolled back | succeeded | other | analyses to verdict "
        "| to verdict median / max |"
    )
    print("|---|---:|---:|---:|---:|---|---:|")
    for kind in KINDS:
        rs = [r for r in runs if r.kind == kind]
        if not rs:
            continue
        phases = [r.outcome.phase if r.outcome else "error" for r in rs]
        times = [t for r in rs if (t := r.to_verdict) is not None]
        rb, ok = phases.count("RolledBack"), phases.count("Succeeded")
        span = f"{statistics.median(times):.1f} / {max(times):.1f} s" if times else "-"
        counts = statistics.median([r.analyses for r in rs]) if rs else 0
        spread = f"median {counts:g} ({min(r.analyses for r in rs)}-{max(r.analyses for r in rs)})"
        print(f"| {kind} | {len(rs)} | {rb} | {ok} | {len(rs) - rb - ok} | {spread} | {span} |")
    same = [r for r in runs if r.kind == "identical"]
    slow = [r for r in runs if r.kind == "slower"]
    errs = [r for r in runs if r.kind == "erroring"]
    false_rb = sum(1 for r in same if r.outcome and r.outcome.phase == "RolledBack")
    caught = [r for r in slow if r.outcome and r.outcome.phase == "RolledBack"]
    on_service = sum(1 for r in caught if "service-time" in {m["name"] for m in r.failed_checks()})
    in_two = sum(1 for r in caught if (t := r.to_verdict) is not None and t <= 2 * interval_s + 2)
    print(
        f"\nfalse rollback rate: {false_rb}/{len(same)} (goal 0 of 20); "
        f"detection rate: {len(caught)}/{len(slow)} (goal >= 19 of 20), {on_service} on "
        f"service-time, {in_two} within two intervals (+2 s) of first traffic; analyses to "
        f"rollback: {sorted(r.analyses for r in caught)}"
    )
    if errs:
        zero = sorted(t for r in errs if r.outcome and (t := r.outcome.weight_zero_after))
        rolled = sum(1 for r in errs if r.outcome and r.outcome.phase == "RolledBack")
        shown = ", ".join(f"{t:.1f}" for t in zero)
        print(
            f"error-rate: {rolled}/{len(errs)} erroring candidates rolled back; first traffic "
            f"to weight 0: {shown} s"
            + (f" (median {statistics.median(zero):.1f} s)" if zero else "")
        )
    report_shadow(runs, interval_s)


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--runs", type=int, default=20, help="canaries of each kind")
    p.add_argument(
        "--errors", type=int, default=5, help="erroring candidates (error-rate detection time)"
    )
    p.add_argument("--slots", type=int, default=2, help="canaries at once (3 pools each)")
    p.add_argument("--interval", default="10s")
    p.add_argument("--steps", default="10,30,60,100")
    p.add_argument("--min-requests", type=int, default=8)
    p.add_argument("--clients", type=int, default=6, help="closed-loop clients per canary")
    p.add_argument(
        "--warmup",
        type=int,
        default=30,
        help="requests one client sends to the stable alone just before each canary (0: none)",
    )
    p.add_argument(
        "--slow-channels", type=int, default=44, help="UNet width of the slower model (32: same)"
    )
    p.add_argument("--capacity", choices=["surge", "shift"], default="surge")
    p.add_argument("--example", type=Path, default=REPO / "examples" / "canary.yaml")
    p.add_argument("--verbose", action="store_true", help="narrate every canary")
    p.add_argument(
        "--shadow", action="store_true", help="real analysis on error rate only (see above)"
    )
    p.add_argument("--alpha", type=float, default=0.01, help="shadow verdicts' alpha")
    p.add_argument(
        "--lookback", type=float, default=60, help="seconds before the canary in the reference"
    )
    p.add_argument("--dump", type=Path, default=Path("/tmp/bench-verdicts-windows.json"))
    p.add_argument(
        "--service-clock", choices=["cpu", "wall"], default="cpu", help="workers' service clock"
    )
    p.add_argument(
        "--min-samples", default="8,20", help="shadow verdicts' minSamples (comma-separated)"
    )
    args = p.parse_args()
    window_s = interval_s(args)
    analysis = analysis_of(args.example, args.min_requests, args.shadow)
    ratio = latency_ratio(args.example)
    print(f"analysis from {args.example}: {analysis}", flush=True)

    cluster = Cluster()
    cluster.up()
    api = bootstrap.api_client(cluster.paths.kubeconfig)
    core = k8s.CoreV1Api(api)
    custom = k8s.CustomObjectsApi(api)
    try:
        core.delete_namespace(NS)
        story.wait_until(lambda: story.namespace_gone(core, NS), 180, "old namespace gone")
    except ApiException as exc:
        if exc.status != 404:
            raise
    core.create_namespace({"metadata": {"name": NS}})
    bootstrap.wait_default_service_account(api, NS)

    base = tiny_model(cluster.paths.root, 32)
    wide = tiny_model(cluster.paths.root, args.slow_channels)
    pools: dict[str, Path] = {}
    for s in range(args.slots):
        pools |= {f"stable-{s}": base, f"same-{s}": base, f"slow-{s}": wide}
        if args.errors:
            pools[f"errs-{s}"] = base
    # Every worker here shares this machine's cores: wall time would measure neighbours.
    clock = {"MODELFLEET_WORKER_SERVICE_CLOCK": args.service_clock}
    for name, model in pools.items():
        env = dict(clock)
        if name.startswith("errs-"):
            env["MODELFLEET_WORKER_FAULT_ERROR_RATE"] = "1.0"
        manifest = story.pool_manifest(name, str(model), env)
        story.create_or_update(api, NS, "modelpools", manifest)

    env = {**os.environ, "KUBECONFIG": str(cluster.paths.kubeconfig)}
    port = free_port()
    router_cmd = [
        sys.executable,
        "-m",
        "modelfleet.cli",
        "router",
        "--kube",
        "--client-auth",
        "off",
    ]
    router_cmd += ["--namespace", NS, "--host", "127.0.0.1", "--port", str(port)]
    router = subprocess.Popen(
        router_cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    cluster.stop_extra("operator")  # one operator, reading this router's stats
    url = f"http://127.0.0.1:{port}"
    op_cmd = [sys.executable, "-m", "modelfleet.cli", "operator", "--router-url", url]
    op_cmd += ["--namespace", NS, "--lease-namespace", NS]
    with open("/tmp/bench-verdicts-operator.log", "wb") as op_log:
        operator = subprocess.Popen(op_cmd, env=env, stdout=op_log, stderr=subprocess.STDOUT)
    started = time.monotonic()
    runs: list[Run] = []
    try:

        def ready() -> bool:
            items = custom.list_namespaced_custom_object(story.G, story.V, NS, "modelpools")
            return len(items["items"]) == len(pools) and all(
                (x.get("status") or {}).get("phase") == "Ready" for x in items["items"]
            )

        story.wait_until(ready, 600, "pools Ready")
        print(f"{len(pools)} pools Ready after {time.monotonic() - started:.0f} s", flush=True)
        # Alternate the kinds so both see the same machine conditions.
        todo: queue.Queue[tuple[str, int]] = queue.Queue()
        for i in range(max(args.runs, args.errors)):
            if i < args.runs:
                todo.put(("identical", i))
                todo.put(("slower", i))
            if i < args.errors:
                todo.put(("erroring", i))

        def slot_worker(slot: int) -> None:
            while True:
                try:
                    kind, i = todo.get_nowait()
                except queue.Empty:
                    return
                run = Run(kind, i, slot)
                runs.append(run)
                try:
                    drive(api, url, run, args, analysis)
                except Exception as exc:  # one broken run must not stop the others
                    run.error = f"{type(exc).__name__}: {exc}"
                o = run.outcome
                print(
                    f"{run.name} ({kind}, slot {slot}): "
                    + (f"{o.phase} - {o.message}" if o else f"error {run.error}"),
                    flush=True,
                )

        threads = [threading.Thread(target=slot_worker, args=(s,)) for s in range(args.slots)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        operator.terminate()
        router.terminate()
        operator.wait(30)
        router.wait(30)
        core.delete_namespace(NS)
    limit = int(analysis.get("failureLimit", 1))
    for r in runs:
        for n in (int(x) for x in args.min_samples.split(",")):
            c = Comparison(max_ratio=ratio, alpha=args.alpha, min_samples=n)
            r.shadow[f"pooled n>={n}"] = shadow_judge(r.windows, c, limit, True, False)
            r.shadow[f"strata n>={n}"] = shadow_judge(r.windows, c, limit, False, False)
            r.shadow[f"strata+ref n>={n}"] = shadow_judge(r.windows, c, limit, False, True)
    if args.dump:
        args.dump.write_text(json.dumps([_dumped(r) for r in runs], indent=1))
        print(f"windows and shadow verdicts written to {args.dump}")
    runs.sort(key=lambda r: (r.kind, r.index))
    report(runs, window_s)
    print(f"\ntotal bench time {time.monotonic() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
