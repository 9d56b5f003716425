"""`modelfleet-worker serve | fetch | tiny-model | verify`."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from . import __version__
from .config import ENV_PREFIX, add_serve_arguments, default_cache_dir, resolve_config


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="modelfleet-worker",
        description="ModelFleet worker: serves one diffusers model over HTTP.",
    )
    p.add_argument("--version", action="version", version=__version__)
    sub = p.add_subparsers(dest="command", required=True)

    serve = sub.add_parser(
        "serve",
        help="load the model and serve /v1/images/generations",
        description=f"Every flag can also be set with its {ENV_PREFIX}* env var; "
        "a flag given on the command line wins.",
    )
    add_serve_arguments(serve)
    from .hosted.config import add_hosted_arguments

    add_hosted_arguments(serve)  # --backend TYPE --provider-model NAME: adapter mode

    fetch = sub.add_parser("fetch", help="download a model into the cache (init step)")
    fetch.add_argument("--model", default=os.environ.get(ENV_PREFIX + "MODEL", ""))
    fetch.add_argument(
        "--cache-dir", default=os.environ.get(ENV_PREFIX + "CACHE_DIR") or default_cache_dir()
    )
    fetch.add_argument("--revision", default=os.environ.get(ENV_PREFIX + "REVISION", ""))

    from .verifycli import add_verify_arguments

    verify = sub.add_parser(
        "verify",
        help="OCR-score images against the text they should show (JSON out)",
        description="Exit 0 when every image passed, 1 when one failed, 2 on unusable input.",
    )
    add_verify_arguments(verify)

    tiny = sub.add_parser("tiny-model", help="write a tiny random SD pipeline (tests, benches)")
    tiny.add_argument("--out", required=True)
    tiny.add_argument("--family", default="sd15", choices=["sd15", "sdxl", "sd3", "flux"])
    tiny.add_argument(
        "--size",
        default="tiny",
        choices=["tiny", "real"],
        help="sdxl/sd3/flux: real architecture dimensions, random weights (7-34 GB; never CI)",
    )
    tiny.add_argument("--vae-family", default=None, choices=["sdxl", "sd3", "flux"])
    tiny.add_argument("--latent-channels", type=int, default=4)
    tiny.add_argument(
        "--vae-latent-channels", type=int, default=None, help="write a mismatched VAE"
    )
    tiny.add_argument("--channels", type=int, default=32, help="base UNet channel count")
    tiny.add_argument("--sample-size", type=int, default=32, help="latent side (image = 2x)")
    tiny.add_argument("--seed", type=int, default=0)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        try:
            cfg = resolve_config(args, os.environ)
            from .hosted.config import DIFFUSERS, resolve_hosted

            hosted = resolve_hosted(args, os.environ, vars(cfg))
        except ValueError as exc:
            print(f"modelfleet-worker: {exc}", file=sys.stderr)
            return 2
        if hosted.backend != DIFFUSERS:
            from .hosted.server import serve_hosted

            return serve_hosted(hosted)
        from .lifecycle import serve

        return serve(cfg)
    if args.command == "verify":
        from .verifycli import run

        return run(args)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "fetch":
        from .fetch import FetchError, fetch

        try:
            path = fetch(args.model, args.cache_dir, args.revision)
        except FetchError as exc:
            print(f"modelfleet-worker fetch: {exc}", file=sys.stderr)
            return 2
        print(path)
        return 0
    from .tiny import TinySpec, write_tiny_pipeline

    out = write_tiny_pipeline(
        args.out,
        TinySpec(
            family=args.family,
            latent_channels=args.latent_channels,
            vae_latent_channels=args.vae_latent_channels,
            channels=args.channels,
            sample_size=args.sample_size,
            seed=args.seed,
            size=args.size,
            vae_family=args.vae_family,
        ),
    )
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
