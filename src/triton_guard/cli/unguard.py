"""`triton-guard unguard`: restore what `triton-guard guard` changed for a model, byte for byte."""

from __future__ import annotations

import argparse
from pathlib import Path

from triton_guard.cli.arguments import add_url
from triton_guard.cli.exit_codes import EXIT_OK, refused


def add_parser(subparsers) -> None:
    unguard = subparsers.add_parser(
        "unguard",
        help="restore what `guard` changed for MODEL, byte for byte (exit 0 restored, 1 refused: nothing written)",
        description=(
            "Works for every placement (guard model, renamed, in-process, and MODEL's rows of guard --all). "
            "Refuses in one line, writing nothing, when a file guard wrote was changed by hand since."
        ),
    )
    unguard.add_argument("model", metavar="MODEL", help="the model whose guard to remove")
    unguard.add_argument("--model-repository", required=True, metavar="DIR", help="the repository MODEL is in")
    add_url(unguard, "gRPC HOST:PORT of the server, for the load commands printed")
    unguard.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from triton_guard.guard_writer import GuardRefused, unguard
    from triton_guard.guard_writer.commands import server_lines

    try:
        written = unguard(Path(args.model_repository), args.model)
    except GuardRefused as exc:
        return refused("triton-guard unguard", exc)
    print("\n".join(written.lines()))
    print("\n".join(server_lines(written.server_steps, args.url)))
    return EXIT_OK
