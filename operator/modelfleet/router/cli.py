"""`modelfleet router ...`: run the data plane."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from modelfleet.router.access import AUTH_MODES
from modelfleet.router.assets import (
    AssetConfigError,
    AssetStore,
    add_asset_args,
    asset_store_from_args,
    describe,
)
from modelfleet.router.config import ConfigError, Snapshot, load_static_config
from modelfleet.router.spendstore import (
    SpendConfigError,
    SpendStore,
    add_spend_args,
    spend_store_from_args,
)
from modelfleet.router.spendstore import describe as describe_spend
from modelfleet.routing.clients import CLIENT_KEY_LABEL
from modelfleet.routing.hold import HoldLimits
from modelfleet.routing.pin import read_credential

if TYPE_CHECKING:
    from modelfleet.router.server import Settings

log = logging.getLogger("modelfleet.router")

EXIT_CONFIG = 2
SA_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def _positive(text: str) -> float:
    v = float(text)
    if not v > 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return v


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "router",
        help="run the router (data plane)",
        description="Route image requests to ModelPool workers by intent, with weights, "
        "retries, fallbacks and admission control.",
    )
    p.add_argument("--host", default="0.0.0.0", help="listen address (default 0.0.0.0)")
    p.add_argument("--port", type=int, default=8080, help="listen port (default 8080)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", metavar="FILE", help="static YAML: policies + endpoints")
    src.add_argument("--kube", action="store_true", help="watch the Kubernetes API")
    p.add_argument("--namespace", help="with --kube: only this namespace (default: all)")
    p.add_argument(
        "--kubeconfig", help="with --kube: kubeconfig path (default: in-cluster or $KUBECONFIG)"
    )
    p.add_argument(
        "--request-timeout-s",
        type=_positive,
        default=120.0,
        help="deadline of a client request, queueing and retries included (default 120)",
    )
    p.add_argument(
        "--attempt-timeout-s",
        type=_positive,
        default=60.0,
        help="deadline of one upstream attempt (default 60)",
    )
    p.add_argument(
        "--connect-timeout-s", type=_positive, default=2.0, help="upstream connect (default 2)"
    )
    p.add_argument(
        "--body-timeout-s",
        type=_positive,
        default=10.0,
        help="a client must send its body within this (default 10)",
    )
    p.add_argument(
        "--max-upload-mb",
        type=_positive,
        default=25.0,
        help="largest edit upload (the whole multipart body) in MB; larger: 413 naming "
        "the part being read (default 25)",
    )
    p.add_argument(
        "--max-uploads-in-flight-mb",
        type=_positive,
        default=512.0,
        help="memory for edit uploads being read or served, all requests together; beyond "
        "it: 429 overloaded (default 512)",
    )
    p.add_argument(
        "--retries-per-pool",
        type=int,
        default=1,
        help="other endpoints of a pool tried before falling back (default 1)",
    )
    p.add_argument(
        "--operator-token-file",
        metavar="FILE",
        default=os.environ.get("MODELFLEET_OPERATOR_TOKEN_FILE") or None,
        help="the operator's credential (a mounted Secret key): requests carrying it in "
        "X-ModelFleet-Operator-Token may pin a pool with X-ModelFleet-Pool (the canary's "
        "pre-flight replay); re-read when the file changes. Without it no request may pin "
        "[env MODELFLEET_OPERATOR_TOKEN_FILE]",
    )
    p.add_argument(
        "--max-held-per-pool",
        type=int,
        default=256,
        help="requests held at once for one pool at zero replicas while it starts (its "
        "ModelPool has spec.autoscaling.minReplicas 0); beyond: not held, the ladder falls "
        "back or answers 503 with Retry-After; 0: never hold (default 256)",
    )
    p.add_argument(
        "--max-held-share",
        type=_positive,
        default=0.5,
        help="and at most this part of the policy's admission.maxInFlight slots, so requests "
        "held for one pool leave slots to the policy's other pools (default 0.5)",
    )
    p.add_argument(
        "--max-hold-s",
        type=_positive,
        default=300.0,
        help="longest a request is held for a pool at zero; the policy's "
        "admission.queueTimeoutMs and the request deadline bound it too (default 300)",
    )
    p.add_argument(
        "--client-auth",
        choices=AUTH_MODES,
        default="keys",
        help="keys (default): every request needs a client key (Authorization: Bearer KEY) "
        "unless its RoutingPolicy has spec.access.anonymous; the keys are Secrets labelled "
        "modelfleet.io/client-key=true (--kube) or the config's clientKeys (--config). off: "
        "no authentication, every client is served (local tests and benchmarks only)",
    )
    p.add_argument(
        "--client-keys-namespace",
        default=os.environ.get("POD_NAMESPACE") or None,
        help="with --kube: the namespace whose labelled Secrets are the client keys (the "
        "router's own; default $POD_NAMESPACE, else --namespace, else the in-cluster "
        "ServiceAccount's namespace)",
    )
    p.add_argument(
        "--auth-failures-per-minute",
        type=_positive,
        default=10.0,
        help="missing or wrong keys one client address may send a minute (a burst of as "
        "many at once); beyond: 429 too_many_auth_failures (default 10)",
    )
    add_asset_args(p)  # sticky assets: --asset-store, --asset-store-password-file, --asset-ttl
    add_spend_args(p)  # client keys' spend: --spend-store, --spend-store-password-file, ...
    p.add_argument("--access-log", action="store_true", help="log every request")
    p.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    p.set_defaults(handler=_run)


class CredentialFile:
    """A Secret key mounted as a file, re-read when it changes (the kubelet swaps the
    files of a mounted Secret in place). Its value is never logged."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: tuple[int, int] | None = None
        self._value: bytes | None = None

    def __call__(self) -> bytes | None:
        try:
            st = self.path.stat()
        except OSError:
            return None  # gone: nothing may pin until it is back
        stamp = (st.st_mtime_ns, st.st_ino)
        if stamp != self._seen:
            try:
                self._value = read_credential(self.path.read_text())
            except (OSError, UnicodeDecodeError):
                return None
            self._seen = stamp
        return self._value


def _own_ns() -> str | None:
    """The in-cluster ServiceAccount's namespace (mounted by the kubelet)."""
    try:
        return Path(SA_NAMESPACE).read_text().strip() or None
    except OSError:
        return None


def _run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from modelfleet.router.server import Settings

    if args.namespace and not args.kube:
        print("--namespace needs --kube", file=sys.stderr)
        return EXIT_CONFIG
    snapshot = None
    if args.config:
        try:
            snapshot = load_static_config(Path(args.config))
        except ConfigError as exc:
            print(f"invalid router config {args.config}:\n{exc}", file=sys.stderr)
            return EXIT_CONFIG
    settings = Settings(
        request_timeout_s=args.request_timeout_s,
        attempt_timeout_s=min(args.attempt_timeout_s, args.request_timeout_s),
        connect_timeout_s=args.connect_timeout_s,
        body_timeout_s=args.body_timeout_s,
        retries_per_pool=max(0, args.retries_per_pool),
        max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
        max_upload_bytes_in_flight=int(args.max_uploads_in_flight_mb * 1024 * 1024),
        hold=HoldLimits(
            max(0, args.max_held_per_pool), args.max_hold_s, min(1.0, args.max_held_share)
        ),
    )
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    credential = None
    if args.operator_token_file:
        credential = CredentialFile(Path(args.operator_token_file))
        if credential() is None:
            print(
                f"--operator-token-file {args.operator_token_file}: missing or empty",
                file=sys.stderr,
            )
            return EXIT_CONFIG
    try:
        store = asset_store_from_args(args)
        spend = spend_store_from_args(args, settings.request_timeout_s)
    except (AssetConfigError, SpendConfigError) as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    if args.client_auth == "keys" and args.kube:
        args.client_keys_namespace = args.client_keys_namespace or args.namespace or _own_ns()
        if not args.client_keys_namespace:
            print(
                "--client-auth keys with --kube needs --client-keys-namespace (or "
                "$POD_NAMESPACE): the namespace whose Secrets are the client keys",
                file=sys.stderr,
            )
            return EXIT_CONFIG
    try:
        return asyncio.run(_serve(args, settings, snapshot, credential, store, spend))
    except KeyboardInterrupt:
        return 0


async def _serve(
    args: argparse.Namespace,
    settings: Settings,
    snapshot: Snapshot | None,
    credential: CredentialFile | None = None,
    store: AssetStore | None = None,
    spend: SpendStore | None = None,
) -> int:
    from aiohttp import web

    from modelfleet.router.access import Access
    from modelfleet.router.server import Router

    access = None
    if args.client_auth == "keys":
        access = Access(
            failures_per_minute=args.auth_failures_per_minute,
            failure_burst=max(1, round(args.auth_failures_per_minute)),
        )
    router = Router(
        settings,
        operator_credential=credential or (lambda: None),
        asset_store=store,
        access=access,
    )
    if access is None:
        log.warning("client auth off: every client is served without a key")
    elif args.kube:
        log.info(
            "client keys: Secrets labelled %s=true in namespace %s",
            CLIENT_KEY_LABEL,
            args.client_keys_namespace,
        )
    else:
        log.info("client keys: clientKeys of %s", args.config)
    log.info("sticky asset store: %s", describe(store))
    if spend is not None:
        router.spend.use(spend)
        log.info("client key spend store: %s", describe_spend(spend))
    if credential is not None:
        log.info("pool pins allowed with the operator credential in %s", credential.path)
    loop = asyncio.get_running_loop()
    source = None
    if snapshot is not None:
        router.apply(snapshot)
        path = Path(args.config)

        def reload() -> None:
            # SIGHUP re-reads the file; an invalid file keeps the running config.
            try:
                router.apply(load_static_config(path))
                log.info("reloaded %s", path)
            except ConfigError as exc:
                log.error("reload of %s refused, keeping the running config:\n%s", path, exc)

        loop.add_signal_handler(signal.SIGHUP, reload)
    else:
        from modelfleet.router.kube import KubeSource

        try:
            source = KubeSource(
                router.apply,
                namespace=args.namespace,
                kubeconfig=args.kubeconfig,
                keys_namespace=args.client_keys_namespace if access is not None else None,
            )
        except Exception as exc:
            print(f"cannot reach Kubernetes: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        await source.start()

    runner = web.AppRunner(
        router.make_app(),
        access_log=log if args.access_log else None,
        # A client that hangs up cancels its request and frees its slot.
        handler_cancellation=True,
    )
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port, backlog=1024)
    await site.start()
    # Everything loaded so far lives as long as the process: keep it out of the GC's full
    # collections, whose pauses would otherwise land on request latency.
    gc.collect()
    gc.freeze()
    log.info("router listening on %s:%s", args.host, args.port)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("router stopping")
    if source is not None:
        await source.stop()
    with contextlib.suppress(Exception):
        await runner.cleanup()
    return 0
