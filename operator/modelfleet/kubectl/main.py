"""The `kubectl-modelfleet` entry point: arguments, connection, one-line errors.

Exit codes: 0 done, 1 an error printed as one `error:` line, 2 bad arguments
(argparse), 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from modelfleet.canary.manual import RULES, Request
from modelfleet.kubectl import PROG
from modelfleet.kubectl.actions import cmd_action
from modelfleet.kubectl.client import Kube, PluginError, connect
from modelfleet.kubectl.keys import add_parser as add_keys_parser
from modelfleet.kubectl.keys import show_keys
from modelfleet.kubectl.pause import cmd_pause, cmd_resume
from modelfleet.kubectl.pools import cmd_pools
from modelfleet.kubectl.report import add_parser as add_report_parser
from modelfleet.kubectl.status import cmd_status

Handler = Callable[[Kube, argparse.Namespace], int]


def _connection_flags(default: Any) -> argparse.ArgumentParser:
    flags = argparse.ArgumentParser(add_help=False)
    flags.add_argument(
        "--kubeconfig",
        default=default,
        help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config, else in-cluster)",
    )
    flags.add_argument("--context", default=default, help="kubeconfig context")
    flags.add_argument(
        "-n",
        "--namespace",
        default=default,
        help="namespace (default: the context's namespace, else 'default')",
    )
    return flags


def build_parser() -> argparse.ArgumentParser:
    # The flags work before and after the subcommand; the subcommand's copy must not
    # overwrite a value given before it with its default, hence SUPPRESS there.
    common = _connection_flags(argparse.SUPPRESS)
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Inspect and steer ModelFleet Canaries and ModelPools.",
        parents=[_connection_flags(None)],
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("status", parents=[common], help="show a canary's progress")
    p.add_argument("canary")
    p.add_argument("-w", "--watch", action="store_true", help="re-print on change until done")
    p.add_argument("-o", "--output", choices=["text", "json"], default="text")
    p.add_argument("--interval", type=float, default=1.0, help=argparse.SUPPRESS)
    p.set_defaults(handler=cmd_status)

    handlers: dict[Request, Handler] = {
        "promote": cmd_action,
        "abort": cmd_action,
        "retry": cmd_action,
        "resume": cmd_resume,
        "pause": cmd_pause,
    }
    for verb, handler in handlers.items():
        text = RULES[verb].help
        p = sub.add_parser(verb, parents=[common], help=text, description=text)
        p.add_argument("canary")
        p.set_defaults(handler=handler)

    p = sub.add_parser("pools", parents=[common], help="list ModelPools and GPUs requested")
    p.add_argument("-A", "--all-namespaces", action="store_true")
    p.set_defaults(handler=cmd_pools)

    add_report_parser(sub, common)
    add_keys_parser(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        if args.command == "keys" and args.router_url:  # routers named: no cluster needed
            return show_keys(args)
        return _run(handler, args)
    except PluginError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _run(handler: Handler, args: argparse.Namespace) -> int:
    import urllib3
    from kubernetes.client.rest import ApiException

    kube: Kube | None = None
    try:
        kube = connect(args.kubeconfig, args.context, args.namespace)
        return handler(kube, args)
    except ApiException as exc:
        from modelfleet.controllers.kube import api_message

        if exc.status in (401, 403):
            raise PluginError(f"not allowed: {api_message(exc)}") from exc
        raise PluginError(f"Kubernetes API error (HTTP {exc.status}): {api_message(exc)}") from exc
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        host = kube.host if kube else "(unknown)"
        raise PluginError(f"cannot reach the Kubernetes API server at {host}: {reason}") from exc
    except PluginError:
        raise
    except Exception as exc:
        if os.environ.get("MODELFLEET_DEBUG"):
            raise
        raise PluginError(
            f"unexpected {type(exc).__name__}: {exc} (set MODELFLEET_DEBUG=1 for the traceback)"
        ) from exc
    finally:
        if kube is not None:
            kube.api.close()


if __name__ == "__main__":
    sys.exit(main())
