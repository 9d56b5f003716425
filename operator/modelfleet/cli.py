"""The `modelfleet` command: dev cluster, CRDs, operator and router."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

# Each subcommand lives in its own module and registers itself with
# `register(subparsers)`; the module is imported only when present so a
# base install (no router extras, say) still gets the other commands.
SUBCOMMAND_MODULES = (
    "modelfleet_dev.cli",
    "modelfleet.api.cli",
    "modelfleet.controllers.cli",
    "modelfleet.router.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelfleet",
        description="ModelFleet: fleets of image-generation models on Kubernetes.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            # The module or a package above it is absent (an image has no modelfleet_dev).
            if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
                continue
            raise
        register: Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]
        register = module.register
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
