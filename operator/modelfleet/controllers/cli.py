"""`modelfleet operator`: run the kopf operator behind Lease leader election."""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import ctypes
import ctypes.util
import logging
import os
import socket
import sys
import uuid
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import kopf

DEFAULT_IMAGE = "ghcr.io/modelfleet/worker:0.1.0"
M_ARENA_MAX = -8  # glibc's mallopt parameter number (malloc.h)


def _configure(settings: Any, args: argparse.Namespace) -> None:
    import kopf

    # Our status schemas are strict (unknown fields are pruned), so kopf keeps
    # its bookkeeping in annotations rather than in status.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix="kopf.modelfleet.io"
    )
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="kopf.modelfleet.io", key="last-handled-configuration"
    )
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 300
    settings.watching.reconnect_backoff = 1.0
    settings.networking.request_timeout = 30
    # One kopf worker per object, alive until idle_timeout: a cap on workers plus a
    # long idle time throttles a burst of new pools to cap/idle per second.
    settings.batching.worker_limit = None
    settings.batching.idle_timeout = 2.0
    settings.batching.batch_window = 0.05


def _framework(registry: kopf.OperatorRegistry, args: argparse.Namespace) -> None:
    """kopf's own settings and login, registered in each term's registry."""
    import kopf

    @kopf.on.startup(registry=registry)
    async def _startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        _configure(settings, args)

    @kopf.on.login(registry=registry)
    def _login(**kwargs: Any) -> Any:
        return (
            kopf.login_with_kubeconfig(**kwargs)
            if not os.environ.get("KUBERNETES_SERVICE_HOST")
            else kopf.login_with_service_account(**kwargs)
        )


async def _run_operator(args: argparse.Namespace) -> int:
    import kopf

    from modelfleet.builders.modelpool import BuildSettings
    from modelfleet.controllers import leader
    from modelfleet.controllers.term import Term

    if args.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(args.metrics_port, addr=args.metrics_host)

    identity = args.id or f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}"
    elector = leader.LeaderElector(
        namespace=args.lease_namespace,
        name=args.lease_name,
        identity=identity,
        duration_s=args.lease_seconds,
        renew_s=max(0.5, args.lease_seconds / 5),
    )
    settings = BuildSettings(
        default_image=args.default_worker_image,
        local_run=args.local_run_pods,
        worker_network_policy=args.worker_network_policy,
        router_namespace=args.router_namespace,
    )
    namespaces = args.namespace or []

    # Handlers block on the synchronous Kubernetes client in threads; the default
    # executor (cores + 4 threads) would serialise hundreds of pools behind six calls.
    asyncio.get_running_loop().set_default_executor(
        concurrent.futures.ThreadPoolExecutor(
            max_workers=args.api_threads, thread_name_prefix="kube"
        )
    )
    while True:
        await elector.acquire()
        # Everything the controllers remember belongs to this term alone.
        term = Term.new(settings, args.router_url or [], namespaces, args.operator_token_file)
        registry = term.registry()
        _framework(registry, args)
        await term.prime()
        stop = asyncio.Event()
        op = asyncio.create_task(
            kopf.operator(
                registry=registry,
                standalone=True,
                clusterwide=not namespaces,
                namespaces=namespaces,
                stop_flag=stop,
                liveness_endpoint=args.liveness,
            )
        )
        resync = asyncio.create_task(term.pools.resync_forever())
        hold = asyncio.create_task(elector.hold())
        done, _ = await asyncio.wait({op, hold}, return_when=asyncio.FIRST_COMPLETED)
        resync.cancel()
        term.stand_down()
        stop.set()
        if op in done:
            hold.cancel()
            await term.close()
            return 0 if op.exception() is None else 1
        # Leadership lost: stop acting at once, then stand by again.
        with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(op, timeout=10)
        await term.close()


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """glibc gives each thread that allocates its own malloc arena; with dozens of
    API threads the half-empty arenas hold tens of MB. Same as MALLOC_ARENA_MAX."""
    if os.environ.get("MALLOC_ARENA_MAX") or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_ARENA_MAX, arenas))
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False


def _handler(args: argparse.Namespace) -> int:
    limit_malloc_arenas()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    try:
        return asyncio.run(_run_operator(args))
    except KeyboardInterrupt:
        return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    op = sub.add_parser("operator", help="run the ModelFleet operator (kopf)")
    op.add_argument(
        "--namespace",
        action="append",
        metavar="NS",
        help="watch only this namespace (repeatable); default: all namespaces",
    )
    op.add_argument(
        "--default-worker-image",
        default=os.environ.get("MODELFLEET_WORKER_IMAGE", DEFAULT_IMAGE),
        help="worker image for pools without spec.image",
    )
    op.add_argument(
        "--local-run-pods",
        action="store_true",
        default=os.environ.get("MODELFLEET_LOCAL_RUN_PODS") == "true",
        help="dev only: mark worker pods for the local pod runner",
    )
    op.add_argument(
        "--worker-network-policy",
        action="store_true",
        help="give every pool a NetworkPolicy: only router pods reach its workers",
    )
    op.add_argument(
        "--router-namespace",
        default=None,
        metavar="NS",
        help="with --worker-network-policy: the routers' namespace (default: the pool's own)",
    )
    op.add_argument(
        "--lease-namespace",
        default=os.environ.get("POD_NAMESPACE", "default"),
        help="namespace of the leader-election Lease",
    )
    op.add_argument("--lease-name", default="modelfleet-operator", help="name of the Lease")
    op.add_argument("--lease-seconds", type=int, default=10, help="lease duration (takeover time)")
    op.add_argument("--id", default=None, help="identity in the Lease (default: host + random)")
    op.add_argument(
        "--liveness",
        default=None,
        metavar="URL",
        help="serve kopf's liveness probe, e.g. http://0.0.0.0:8080/healthz",
    )
    op.add_argument(
        "--router-url",
        action="append",
        metavar="URL",
        default=[u for u in os.environ.get("MODELFLEET_ROUTER_URLS", "").split(",") if u],
        help="router base URL the canary `router` metrics provider reads /v1/stats from "
        "(repeatable; default: $MODELFLEET_ROUTER_URLS, comma-separated)",
    )
    op.add_argument(
        "--operator-token-file",
        metavar="FILE",
        default=os.environ.get("MODELFLEET_OPERATOR_TOKEN_FILE") or None,
        help="the credential the routers accept for pool pins (a mounted Secret key; the "
        "canary's pre-flight replay renders on a chosen pool with it), read on each replay "
        "[env MODELFLEET_OPERATOR_TOKEN_FILE]",
    )
    op.add_argument(
        "--metrics-port", type=int, default=0, help="serve operator metrics on this port (0: off)"
    )
    op.add_argument("--api-threads", type=int, default=32, help="concurrent Kubernetes API calls")
    op.add_argument("--metrics-host", default="0.0.0.0", help="address for --metrics-port")
    op.set_defaults(handler=_handler)
