"""The ``ptystream`` command."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from ptystream.config import ProfileError, load_profile

__all__ = ["main"]


def _demo(args: argparse.Namespace) -> int:
    from ptystream.demo import _print_report, run_demo

    profile = load_profile(args.profile)
    report = run_demo(profile, args.out, keep_serving=args.keep_serving)
    if not args.keep_serving:
        _print_report(report, print)
        print("(the server has stopped; run with --keep-serving to browse the results in Tiled)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ptystream", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo", help="run a simulated scan reconstructed live into an embedded Tiled server"
    )
    demo.add_argument("--profile", default="demo", help="profile name or YAML path")
    demo.add_argument("--out", default="demo-output", help="directory for Tiled data and the PNG")
    demo.add_argument(
        "--keep-serving", action="store_true", help="keep the Tiled server up until Ctrl-C"
    )
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # TensorFlow's C++ start-up chatter (oneDNN, XLA banners) drowns the demo's output.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s: %(message)s",
    )
    try:
        return args.func(args)
    except ProfileError as exc:
        print(f"ptystream: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
