"""`modelfleet crds ...`: generate and check the CRDs from the pydantic models."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from modelfleet.api import crdgen, docgen


def _generate(args: argparse.Namespace) -> int:
    for path in crdgen.write(Path(args.out)):
        print(f"wrote {path}")
    return 0


def _docs(args: argparse.Namespace) -> int:
    print(f"wrote {docgen.write(Path(args.out))}")
    return 0


def _check(args: argparse.Namespace) -> int:
    rc = 0
    stale = crdgen.stale_files(Path(args.out))
    if stale:
        print(
            f"stale CRDs in {args.out}: {', '.join(stale)}; run `modelfleet crds generate`",
            file=sys.stderr,
        )
        rc = 1
    else:
        print(f"CRDs in {args.out} are up to date")
    if args.docs:
        if docgen.is_stale(Path(args.docs)):
            print(
                f"stale API reference {args.docs}; run `modelfleet crds docs --out {args.docs}`",
                file=sys.stderr,
            )
            rc = 1
        else:
            print(f"API reference {args.docs} is up to date")
    return rc


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    crds = sub.add_parser("crds", help="generate or check the CustomResourceDefinitions")
    crds_sub = crds.add_subparsers(dest="crds_command", required=True, metavar="ACTION")
    gen = crds_sub.add_parser("generate", help="write crds/*.yaml from the pydantic models")
    gen.add_argument("--out", default="crds", help="output directory (default: crds)")
    gen.set_defaults(handler=_generate)
    check = crds_sub.add_parser("check", help="exit 1 when crds/ differs from the models")
    check.add_argument("--out", default="crds", help="directory to check (default: crds)")
    check.add_argument(
        "--docs",
        default=str(docgen.DEFAULT_PATH),
        help=f"API reference to check too ('' to skip; default: {docgen.DEFAULT_PATH})",
    )
    check.set_defaults(handler=_check)
    docs = crds_sub.add_parser("docs", help="write the Markdown API reference from the models")
    docs.add_argument(
        "--out",
        default=str(docgen.DEFAULT_PATH),
        help=f"output file (default: {docgen.DEFAULT_PATH})",
    )
    docs.set_defaults(handler=_docs)
