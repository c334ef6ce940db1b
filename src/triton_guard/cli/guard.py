"""`triton-guard guard`: add a guard for a model to a model repository."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from triton_guard.cli.exit_codes import EXIT_FAILED, EXIT_OK


def add_parser(subparsers) -> None:
    guard = subparsers.add_parser(
        "guard",
        help="add a guard for MODEL to a model repository (exit 0 written, 1 refused: nothing written)",
    )
    guard.add_argument("model", metavar="MODEL", help="the model to guard (a folder of the repository)")
    guard.add_argument("--model-repository", required=True, metavar="DIR", help="the repository MODEL is in")
    guard.add_argument(
        "--param", action="append", default=[], metavar="KEY=VALUE",
        help="a guard parameter (docs/reference/parameters.md), e.g. timeout_ms=2000; repeat for more",
    )
    guard.add_argument(
        "--ensemble", metavar="NAME", help="also reroute the steps of ensemble NAME that call MODEL through the guard"
    )
    guard.add_argument(
        "--in-process", action="store_true",
        help="guard a Python MODEL inside its own process: its config becomes backend \"guard\" (no second model)",
    )
    guard.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from triton_guard.guard_writer import GuardRefused, parse_params, write_guard, write_in_process

    try:
        params = parse_params(args.param)
        if args.in_process:
            if args.ensemble:
                raise GuardRefused("--ensemble with --in-process: clients keep calling the model itself, nothing to reroute")
            written = write_in_process(Path(args.model_repository), args.model, params)
        else:
            written = write_guard(Path(args.model_repository), args.model, params, ensemble=args.ensemble)
    except GuardRefused as exc:
        print(f"triton-guard guard: refused: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print("\n".join(written.lines()))
    return EXIT_OK
